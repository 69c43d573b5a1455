"""Word splitting that follows spaCy's English tokenizer rules (what datatrove's Gopher, C4 and
FineWeb filters count words with), without spaCy: whitespace chunks, then prefixes and suffixes
peeled off (punctuation, quotes, currency, units after numbers, "'s"), then infixes split
(hyphens, commas and slashes between letters, ellipses). Abbreviations ("Mr.", "U.S.", "p.m."),
URLs and e-mail addresses stay whole; "don't" is "do" + "n't".
"""
from __future__ import annotations

import re

_PUNCT = r",:;!?¿؟¡()\[\]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = r"'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_CURRENCY = r"$£€¥฿₽﷼₴₠-₿"
_UNITS = ("km|km²|km³|m|m²|m³|dm|cm|mm|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|m/s|km/h|kmh|mph|hPa|Pa|mbar|mb|MB|kb|"
          "KB|gb|GB|tb|TB|T|G|M|K|%")
# spaCy's "icons" (symbols such as © ® ° ■ ☭ and emoji), a selection of its ranges
_ICONS = "\u00a6\u00a9\u00ae\u00b0\ufffd\u2100-\u214f\u2190-\u21ff\u2300-\u23ff\u2500-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff"
_PREFIX = re.compile(rf"''|’’|\.\.+|…|US\$|C\$|A\$|\+(?![0-9])|[§%=—–{_PUNCT}{_QUOTES}{_CURRENCY}{_ICONS}]")
_SUFFIX = re.compile(
    rf"(?:''|’’|\.\.+|…|['’][sS]|[—–{_PUNCT}{_QUOTES}{_ICONS}]|(?<=[0-9])(?:\+|[{_CURRENCY}]|{_UNITS}))$")
_INFIX = re.compile(
    rf"\.\.+|…|[{_ICONS}]|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[a-zß-öø-ÿа-яёα-ω'\"”“`‘´’])\.(?=[A-ZÀ-ÖØ-ÞА-ЯЁΑ-Ω'\"”“`‘´’])"
    r"|(?<=[^\W\d_]),(?=[^\W\d_])"
    r"|(?<=[^\W_])(?:---|--|——|-|–|—|~)(?=[^\W\d_])|(?<=[^\W_])[:<>=/](?=[^\W\d_])")
_URL = re.compile(
    r"(?:[\w+.-]{2,}://)?(?:\S+(?::\S*)?@)?(?:[^\W_][\w-]{0,62}\.)+[a-z\u00a1-\uffff]{2,63}\.?(?::\d{2,5})?(?:[/?#]\S*)?")
_CONTRACTION = re.compile(r"(.+?)(n['’]t|['’](?:re|ll|ve|d|m|RE|LL|VE|D|M))")
# spaCy's English tokenizer exceptions (MIT licence): contractions written without an apostrophe,
# emoticons, and the words whose 'd/'ll/'re/'ve/'m clitics are split off.
_SPLIT_WORDS = (
    'Aint=Ai|nt Arent=Are|nt Cannot=Can|not Cant=Ca|nt Cantve=Ca|nt|ve Couldnt=Could|nt Couldntve=Could|nt|ve Couldve=Could|ve Darent=Dare|nt Didnt=Did|nt Didntve=Did|nt|ve Doesnt=Does|nt Doesntve=Does|nt|ve Dont=Do|nt Dontve=Do|nt|ve Gonna=Gon|na Gotta=Got|ta Hadnt=Had|nt Hadntve=Had|nt|ve Hasnt=Has|nt Havent=Have|nt Hed=He|d Hedve=He|d|ve Hellve=He|ll|ve Hes=He|s Howd=How|d Howdve=How|d|ve Howll=How|ll Howllve=How|ll|ve Howre=How|re Hows=How|s Howve=How|ve Id=I|d Idve=I|d|ve Illve=I|ll|ve Im=I|m Ima=I|m|a Isnt=Is|nt Itd=It|d Itdve=It|d|ve Itll=It|ll Itllve=It|ll|ve Ive=I|ve Maynt=May|nt Mayntve=May|nt|ve Mightnt=Might|nt Mightntve=Might|nt|ve Mightve=Might|ve Mustnt=Must|nt Mustntve=Must|nt|ve Mustve=Must|ve Neednt=Need|nt Needntve=Need|nt|ve Notve=Not|ve Oughtnt=Ought|nt Oughtntve=Ought|nt|ve Shant=Sha|nt Shantve=Sha|nt|ve Shedve=She|d|ve Shellve=She|ll|ve Shes=She|s Shouldnt=Should|nt Shouldntve=Should|nt|ve Shouldve=Should|ve Thatd=That|d Thatdve=That|d|ve Thatll=That|ll Thatllve=That|ll|ve Thats=That|s Thered=There|d Theredve=There|d|ve Therell=There|ll Therellve=There|ll|ve Therere=There|re Theres=There|s Thereve=There|ve Thesed=These|d Thesedve=These|d|ve Thesell=These|ll Thesellve=These|ll|ve Thesere=These|re Theseve=These|ve Theyd=They|d Theydve=They|d|ve Theyll=They|ll Theyllve=They|ll|ve Theyre=They|re Theyve=They|ve Thisd=This|d Thisdve=This|d|ve Thisll=This|ll Thisllve=This|ll|ve Thiss=This|s Thosed=Those|d Thosedve=Those|d|ve Thosell=Those|ll Thosellve=Those|ll|ve Thosere=Those|re Thoseve=Those|ve Wasnt=Was|nt Wed=We|d Wedve=We|d|ve Wellve=We|ll|ve Werent=Were|nt Weve=We|ve Whatd=What|d Whatdve=What|d|ve Whatll=What|ll Whatllve=What|ll|ve Whatre=What|re Whats=What|s Whatve=What|ve Whend=When|d Whendve=When|d|ve Whenll=When|ll Whenllve=When|ll|ve Whenre=When|re Whens=When|s Whenve=When|ve Whered=Where|d Wheredve=Where|d|ve Wherell=Where|ll Wherellve=Where|ll|ve Wherere=Where|re Wheres=Where|s Whereve=Where|ve Whod=Who|d Whodve=Who|d|ve Wholl=Who|ll Whollve=Who|ll|ve Whos=Who|s Whove=Who|ve Whyd=Why|d Whydve=Why|d|ve Whyll=Why|ll Whyllve=Why|ll|ve Whyre=Why|re Whys=Why|s Whyve=Why|ve Wont=Wo|nt Wontve=Wo|nt|ve Wouldnt=Would|nt Wouldntve=Would|nt|ve Wouldve=Would|ve Youd=You|d Youdve=You|d|ve Youll=You|ll Youllve=You|ll|ve Youre=You|re Youve=You|ve aint=ai|nt arent=are|nt cannot=can|not cant=ca|nt cantve=ca|nt|ve couldnt=could|nt couldntve=could|nt|ve couldve=could|ve darent=dare|nt didnt=did|nt didntve=did|nt|ve doesnt=does|nt doesntve=does|nt|ve dont=do|nt dontve=do|nt|ve gonna=gon|na gotta=got|ta hadnt=had|nt hadntve=had|nt|ve hasnt=has|nt havent=have|nt hed=he|d hedve=he|d|ve hellve=he|ll|ve hes=he|s howd=how|d howdve=how|d|ve howll=how|ll howllve=how|ll|ve howre=how|re hows=how|s howve=how|ve id=i|d idve=i|d|ve illve=i|ll|ve im=i|m ima=i|m|a isnt=is|nt itd=it|d itdve=it|d|ve itll=it|ll itllve=it|ll|ve ive=i|ve maynt=may|nt mayntve=may|nt|ve mightnt=might|nt mightntve=might|nt|ve mightve=might|ve mustnt=must|nt mustntve=must|nt|ve mustve=must|ve neednt=need|nt needntve=need|nt|ve notve=not|ve oughtnt=ought|nt oughtntve=ought|nt|ve shant=sha|nt shantve=sha|nt|ve shedve=she|d|ve shellve=she|ll|ve shes=she|s shouldnt=should|nt shouldntve=should|nt|ve shouldve=should|ve thatd=that|d thatdve=that|d|ve thatll=that|ll thatllve=that|ll|ve thats=that|s thered=there|d theredve=there|d|ve therell=there|ll therellve=there|ll|ve therere=there|re theres=there|s thereve=there|ve thesed=these|d thesedve=these|d|ve thesell=these|ll thesellve=these|ll|ve thesere=these|re theseve=these|ve theyd=they|d theydve=they|d|ve theyll=they|ll theyllve=they|ll|ve theyre=they|re theyve=they|ve thisd=this|d thisdve=this|d|ve thisll=this|ll thisllve=this|ll|ve thiss=this|s thosed=those|d thosedve=those|d|ve thosell=those|ll thosellve=those|ll|ve thosere=those|re thoseve=those|ve wasnt=was|nt wed=we|d wedve=we|d|ve wellve=we|ll|ve werent=were|nt weve=we|ve whatd=what|d whatdve=what|d|ve whatll=what|ll whatllve=what|ll|ve whatre=what|re whats=what|s whatve=what|ve whend=when|d whendve=when|d|ve whenll=when|ll whenllve=when|ll|ve whenre=when|re whens=when|s whenve=when|ve whered=where|d wheredve=where|d|ve wherell=where|ll wherellve=where|ll|ve wherere=where|re wheres=where|s whereve=where|ve whod=who|d whodve=who|d|ve wholl=who|ll whollve=who|ll|ve whos=who|s whove=who|ve whyd=why|d whydve=why|d|ve whyll=why|ll whyllve=why|ll|ve whyre=why|re whys=why|s whyve=why|ve wont=wo|nt wontve=wo|nt|ve wouldnt=would|nt wouldntve=would|nt|ve wouldve=would|ve yall=y|all youd=you|d youdve=you|d|ve youll=you|ll youllve=you|ll|ve youre=you|re youve=you|ve'
)
_EMOTICONS = '\'\' (*_*) (-: (-; (-_-) (._.) (: (; (= (>_<) (^_^) (¬_¬) (╯°□°）╯︵┻━┻ )-: ): -_- -__- ._. :\'( :\') :\'-( :\'-) :( :(( :((( :() :) :)) :))) :* :-( :-(( :-((( :-) :-)) :-))) :-* :-/ :-> :-] :-| :-} :/ :> :] :| :} :’( :’) :’-( :’-) ;) ;-) ;_; <.< =( =) =/ =[ =] =| >.< >.> >:( ><(((*> @_@ [-: [: [= \\") ]= ^_^ ^__^ ^___^ ’’'
_CLITIC_BASES = 'could he how i it let might must not she should that there these they this those we what when where who why would you'

_ABBREVIATIONS = frozenset((
    "Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. Corp. D.C. Dec. Del. Dr. E.G. E.g. Feb. Fla. "
    "Ga. Gen. Gov. I.E. I.e. Ia. Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. "
    "Messrs. Mich. Minn. Miss. Mo. Mont. Mr. Mrs. Ms. Mt. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. "
    "Okla. Ore. Pa. Ph.D. Prof. Rep. Rev. S.C. Sen. Sep. Sept. St. Tenn. Va. Wash. Wis. a.m. co. e.g. i.e. p.m. "
    "v.s. vs. ä. ö. ü."
).split()) | {f"{c}." for c in "abcdefghijklmnopqrstuvwxyz"}
_SPECIAL = {k: v.split("|") for k, v in (item.split("=") for item in _SPLIT_WORDS.split())}
_SPECIAL.update({e: [e] for e in _EMOTICONS.split()})
_SPECIAL["and/or"] = ["and/or"]
_CLITICS = frozenset(_CLITIC_BASES.split())
_TIME = re.compile(r"(1[0-2]|[1-9])(a\.m\.|p\.m\.|am|pm)")


_MAX_SPECIAL = max(map(len, (*_SPECIAL, *_ABBREVIATIONS)))
_CONTRACTION_ENDS: dict[str, list[str]] = {}  # by last character
for _end in [a + e for a in "'’" for e in ("re", "ll", "ve", "d", "m", "RE", "LL", "VE", "D", "M")] + ["n't", "n’t"]:
    _CONTRACTION_ENDS.setdefault(_end[-1], []).append(_end)
_URL_NO_USER = re.compile(_URL.pattern.replace(r"(?:\S+(?::\S*)?@)?", "", 1))
_URL_HOST = re.compile(_URL.pattern.split(r"(?:\S+(?::\S*)?@)?", 1)[1])


class _Chunk:
    """One whitespace-free chunk being peeled, as indices [i, j) into it. Every check here costs
    O(1) or is paid once per chunk, so a chunk of n characters costs O(n), not O(n²) as slicing
    and re-scanning the remainder after each peeled character would (a run of 20,000 "§" took 19 s)."""

    def __init__(self, s: str):
        self.s, self.i, self.j = s, 0, len(s)
        self._nonalpha = -1  # the first position >= some earlier i that is not a letter (memo)

    def letters(self, i: int, j: int) -> bool:
        """s[i:j].isalpha(), amortised O(1): the first non-letter is remembered as i only grows."""
        if i >= j:
            return False
        if self._nonalpha < i:
            k, s = i, self.s
            while k < len(s) and s[k].isalpha():
                k += 1
            self._nonalpha = k
        return self._nonalpha >= j

    def special(self, i: int, j: int) -> list[str] | None:
        s, n = self.s, j - i
        if n <= _MAX_SPECIAL:
            w = s[i:j]
            if w in _ABBREVIATIONS:
                return [w]
            if w in _SPECIAL:
                return _SPECIAL[w]
        for end in _CONTRACTION_ENDS.get(s[j - 1], ()) if n else ():
            if s.endswith(end, i, j):
                k = j - len(end)  # the lazy "(.+?)" of the contraction pattern leaves the one ending that fits
                if (end[0] == "n" or (k - i <= 6 and s[i:k].lower() in _CLITICS)) and self.letters(i, k):
                    return [s[i:k], s[k:j]]
                return None
        if 0 < n <= 6 and s[i].isdigit():
            m = _TIME.fullmatch(s, i, j)
            if m:
                return [m.group(1), m.group(2)]
        return None

    def suffix_len(self, i: int, j: int) -> int:
        s = self.s
        # Every suffix but a run of dots is at most 5 characters: search the last 6, then extend a run of dots.
        m = _SUFFIX.search(s, max(i, j - 6), j)
        if m:
            start = m.start()
            if s[start] == ".":
                while start > i and s[start - 1] == ".":
                    start -= 1
            return j - start
        if j - i > 1 and s[j - 1] == ".":  # a final period, unless it ends an abbreviation like "U.S." or "W."
            c = s[j - 2]
            if c.isdigit() or (c.isalpha() and not c.isupper()) or c in "%²-+" or c in _PUNCT or c in _QUOTES or (
                    j - i > 2 and c.isupper() and s[j - 3].isupper()):
                return 1
        return 0


def _is_url(s: str) -> bool:
    if _URL_NO_USER.fullmatch(s):
        return True
    # With "user:password@": any text, an "@", then the host part to the end. Each "@" is tried once
    # (the host part cannot cross an "@" before its path): the pattern's own "\S+(?::\S*)?@" backtracks
    # quadratically on runs such as "a:a@a:a@...".
    at = s.find("@", 1)
    while at != -1:
        if _URL_HOST.fullmatch(s, at + 1):
            return True
        at = s.find("@", at + 1)
    return False


def _split_chunk(s: str, out: list[str]) -> None:
    c = _Chunk(s)
    special = c.special(0, len(s))
    if special:
        out.extend(special)
        return
    prefixes: list[str] = []
    suffixes: list[str] = []
    i, j, last = 0, len(s), -1
    while i < j and j - i != last:
        if c.special(i, j) is not None:
            break
        last = j - i
        m = _PREFIX.match(s, i, j)
        pre = m.end() - i if m else 0
        if pre and c.special(i + pre, j) is not None:
            prefixes.append(s[i:i + pre])
            i += pre
            break
        suf = c.suffix_len(i + pre, j)
        if suf and c.special(i, j - suf) is not None:
            suffixes.append(s[j - suf:j])
            j -= suf
            break
        if pre and suf and pre + suf <= j - i:
            prefixes.append(s[i:i + pre])
            suffixes.append(s[j - suf:j])
            i, j = i + pre, j - suf
        elif pre:
            prefixes.append(s[i:i + pre])
            i += pre
        elif suf:
            suffixes.append(s[j - suf:j])
            j -= suf
    out.extend(prefixes)
    if i < j:
        special = c.special(i, j)
        s = s[i:j]
        if special:
            out.extend(special)
        elif _is_url(s):
            out.append(s)
        else:
            start = 0
            for m in _INFIX.finditer(s):
                if m.start() > start:
                    out.append(s[start:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                start = m.end()
            if start < len(s):
                out.append(s[start:])
    out.extend(reversed(suffixes))


def split_words(text: str) -> list[str]:
    out: list[str] = []
    for chunk in text.split():
        if chunk.isalpha() or chunk.isdigit():
            if chunk in _SPECIAL:
                out.extend(_SPECIAL[chunk])
            else:
                out.append(chunk)
        elif chunk[:-1].isalpha() and chunk[:-1] not in _SPECIAL and (
                chunk[-1] in ",;:!?)" or (chunk[-1] == "." and not chunk[-2].isupper() and chunk not in _ABBREVIATIONS)):
            out += (chunk[:-1], chunk[-1])  # the common "word," / "word." cases, as the rules below split them
        else:
            _split_chunk(chunk, out)
    return out
