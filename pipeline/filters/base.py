"""What every filter step shares: the document being filtered, the step protocol, word splitting.

A step is a small callable object: `step(doc)` returns None to keep the document (possibly after
changing `doc.text`) or a stable reason code (`<step>.<rule>`) to drop it. A step counts what it did
(lines removed, redactions, languages) in its own `stats` Counter; the stage sums them per part.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .languages import splitter
from .words import split_words  # noqa: F401 (re-exported for the tests)

# Unicode sentence-final marks (the list spaCy's sentencizer and datatrove use).
SENTENCE_END = frozenset(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼⹓⹔꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡。"
    "។៕៖៙៚𐩖𐩗𐽕𐽖𐽗𐽘𐽙𐾆𐾇𐾈𐾉𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑥄𑥆𑩂𑩃𑪛𑪜𑱁𑱂𑻷𑻸𑽃𑽄𖩮𖩯𖫵𖬷𖬸𖭄𖺘𛲟𝪈"
)
# FineWeb's "line ends in terminal punctuation" (quotes and the ellipsis character do not count).
TERMINAL_PUNCTUATION = tuple(SENTENCE_END)
_PUNCT = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, (*range(0, 9), *range(11, 32), *range(127, 160))))
) | SENTENCE_END


def is_symbol(word: str) -> bool:
    """A token made only of punctuation marks."""
    return _PUNCT.issuperset(word)


def count_sentences(words: list[str]) -> int:
    """Sentences the way a rule-based sentencizer counts them: a new one starts at the first
    non-punctuation token after a sentence-final mark."""
    if not words:
        return 0
    n, seen_end = 1, False
    for w in words:
        if w in SENTENCE_END:
            seen_end = True
        elif seen_end and not is_symbol(w):
            n, seen_end = n + 1, False
    return n


@dataclass
class Doc:
    """One document as the steps see it. `words` is computed once per text version."""

    id: str
    text: str
    url: str | None = None
    lang: str | None = None
    lang_score: float | None = None
    _words: list[str] | None = field(default=None, repr=False)
    _words_of: tuple[str, str | None] | None = field(default=None, repr=False)

    @property
    def words(self) -> list[str]:
        """Words by the rules of the document's language (languages.splitter)."""
        if self._words is None or self._words_of != (self.text, self.lang):
            self._words, self._words_of = splitter(self.lang)(self.text), (self.text, self.lang)
        return self._words


class Step:
    """A pipeline step: `__call__(doc) -> reason or None`; counts in `self.stats`."""

    name = "step"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def __call__(self, doc: Doc) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def reason(self, rule: str) -> str:
        return f"{self.name}.{rule}"
