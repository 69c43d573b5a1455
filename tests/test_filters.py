import pytest

from tokenmill.pipeline import storage
from tokenmill.pipeline.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    NormalizeConfig,
    PIIConfig,
    QualityConfig,
    URLFilterConfig,
)
from tokenmill.pipeline.contracts import docs_table
from tokenmill.pipeline.filters import apply_chain, build_chain, filter_part
from tokenmill.pipeline.filters.base import Doc, count_sentences, split_words
from tokenmill.pipeline.filters.c4 import C4
from tokenmill.pipeline.filters.fineweb import FineWeb
from tokenmill.pipeline.filters.formatters import Normalize
from tokenmill.pipeline.filters.gopher import (
    GopherQuality,
    GopherRepetition,
    NGrams,
    duplicate_ngram_chars,
    top_ngram_chars,
)
from tokenmill.pipeline.filters.language import Language
from tokenmill.pipeline.filters.pii import PII
from tokenmill.pipeline.filters.url import URLFilter

quality = GopherQuality(GopherQualityConfig())
repetition = GopherRepetition(GopherRepetitionConfig())
c4 = C4(C4Config())
fineweb = FineWeb(FineWebConfig())

PROSE = (
    "The city council met on Tuesday evening to discuss the new budget for the public library. "
    "Several residents spoke in favour of extending the opening hours, and the librarian explained "
    "that the building would need two more staff members to do that.\n"
    "After a long debate, the council agreed to fund one additional position for a trial period of six months. "
    "The mayor said that the decision would be reviewed in the spring, once the first figures were available.\n"
    "Local schools have already asked to use the reading rooms in the afternoon. Teachers hope that the "
    "longer hours will help students who have no quiet place to study at home."
)
GERMAN = (
    "Der Gemeinderat hat am Dienstagabend über den neuen Haushalt der Stadtbibliothek beraten. Mehrere "
    "Bürgerinnen und Bürger sprachen sich für längere Öffnungszeiten aus, und die Leiterin erklärte, dass "
    "dafür zwei zusätzliche Stellen nötig wären. Nach langer Diskussion wurde eine Stelle für sechs Monate bewilligt."
)


def doc(text, url=None):
    return Doc("d", text, url)


def test_words_split_the_way_spacys_english_tokenizer_does():
    # expected lists are spaCy's output for these sentences (what datatrove's filters count)
    assert split_words("Don't stop, it's 3.14 at www.example.com/a?b... U.S. rules!") == [
        "Do", "n't", "stop", ",", "it", "'s", "3.14", "at", "www.example.com/a?b", "...", "U.S.", "rules", "!"]
    assert split_words("Mr. O'Neil paid $1,000 for a well-known (used) car at 5pm; e-mail him@example.com or "
                       "call him: he's 2x faster.") == [
        "Mr.", "O'Neil", "paid", "$", "1,000", "for", "a", "well", "-", "known", "(", "used", ")", "car", "at", "5",
        "pm", ";", "e", "-", "mail", "him@example.com", "or", "call", "him", ":", "he", "'s", "2x", "faster", "."]
    assert count_sentences(split_words("One here. Two there! Three? Yes.")) == 4
    assert count_sentences(split_words("No end mark")) == 1


def test_real_prose_passes_every_rule(real_docs):
    for text in (PROSE, real_docs[0]["text"]):
        for step in (repetition, quality, c4, fineweb):
            assert step(doc(text)) is None, step.name


def test_gopher_word_count_and_mean_length():
    assert quality(doc("just a few words here")) == "gopher.min_words"
    assert quality(doc("the and of " * 40_000)) == "gopher.max_words"
    assert quality(doc(" ".join(["a", "to", "of", "the"] * 20))) == "gopher.min_mean_word_length"
    long_words = " ".join(["internationalization", "the", "and", "electroencephalography"] * 20)
    assert quality(doc(long_words)) == "gopher.max_mean_word_length"


def test_gopher_symbols_bullets_ellipses_alpha_and_stop_words():
    assert quality(doc(PROSE + " #tag" * 60)) == "gopher.hash_word_ratio"
    assert quality(doc(PROSE + " and so on..." * 40)) == "gopher.ellipsis_word_ratio"
    bullets = "\n".join(f"• item number {i} of the list with the words that matter" for i in range(30))
    assert quality(doc(bullets)) == "gopher.bullet_lines_ratio"
    trailing = "\n".join(f"the story goes on and on for line {i} and then" + "…" for i in range(10))
    assert quality(doc(trailing)) == "gopher.ellipsis_lines_ratio"
    numbers = " ".join(str(1000 + i) for i in range(100)) + " the and of with"
    assert quality(doc(numbers)) == "gopher.alpha_words_ratio"
    assert quality(doc(GERMAN * 2)) == "gopher.stop_words"


def test_gopher_alpha_ratio_counts_words_not_punctuation_unless_asked():
    # prose dense in numbers and punctuation: 72% of tokens, 87% of words have a letter
    text = ("On May 6-16, 2018, more than 1,500 students (grades 4-12) played at 25 venues; "
            "tickets cost $5, or $3 for seniors.\n") * 2 + PROSE
    assert quality(doc(text)) is None
    strict = GopherQuality(GopherQualityConfig(alpha_ratio_counts_punctuation=True))
    assert strict(doc(text)) == "gopher.alpha_words_ratio"


def test_gopher_repetition_rules():
    assert repetition(doc("\n".join(["Home", "About us", "Contact"] * 10))) == "gopher.duplicate_line_fraction"
    paragraphs = "\n\n".join(["Subscribe to our newsletter for weekly updates."] * 4 + [PROSE])
    assert repetition(doc(paragraphs)) == "gopher.duplicate_paragraph_fraction"
    spam = PROSE + " " + "buy cheap watches " * 60
    assert repetition(doc(spam)) == "gopher.top_2gram_char_fraction"


def test_gopher_rules_reject_a_document_with_nothing_to_measure():
    # min_words 0 used to divide by zero on an empty or blank document; repetition used to keep one
    lenient = GopherQuality(GopherQualityConfig(min_words=0, min_stop_words=0))
    for text in ("", "  \n\t ", "!!! ... ???"):  # no words, or only punctuation tokens
        assert lenient(doc(text)) == "gopher.empty", repr(text)
        assert quality(doc(text)) == "gopher.min_words"
    assert lenient(doc("the cat and the hat")) is None
    for text in ("", " \n\n \n", "\u3000\t"):
        assert repetition(doc(text)) == "gopher.empty", repr(text)


def test_ngram_char_counts():
    grams = NGrams("a b c a b c a b".split())
    assert top_ngram_chars(grams, 2) == 3 * 3  # "a b" three times
    assert top_ngram_chars(NGrams("to be or not to be".split()), 2) == 5 * 2  # "to be" twice
    assert duplicate_ngram_chars(grams, 3) == 3  # "a b c" again at 3, then skip past it
    assert duplicate_ngram_chars(grams, 2) == 4  # "a b" at 3, skip to 5: "c a" seen, skip to 7: end
    assert duplicate_ngram_chars(NGrams("x y z".split()), 5) == 0


def test_c4_cleans_lines_and_drops_documents():
    page = (
        "Home Contact\n"
        + PROSE + "\n"
        + "Please enable JavaScript to view the comments powered by Disqus.\n"
        + "This website uses cookies to improve your experience. Read our privacy policy.\n"
        + "Tags: news"
    )
    d = doc(page)
    step = C4(C4Config())
    assert step(d) is None
    assert d.text == PROSE
    assert step.stats == {"c4.lines.min_words_per_line": 1 + 1, "c4.lines.javascript": 1, "c4.lines.policy": 1}
    assert c4(doc(PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")) == "c4.lorem_ipsum"
    assert c4(doc(PROSE + "\nfunction init() { window.dataLayer = []; }")) == "c4.curly_brace"
    assert c4(doc("A short note. Nothing more to say here.")) == "c4.min_sentences"
    strict = C4(C4Config(terminal_punctuation=True))
    d = doc("Latest news from the council\n" + PROSE)
    assert strict(d) is None and d.text == PROSE
    only_count = C4(C4Config(clean_lines=False))
    d = doc(page)
    assert only_count(d) is None and d.text == page and only_count.stats["c4.lines.javascript"] == 1


def test_fineweb_rules():
    assert fineweb(doc("\n\n")) == "fineweb.empty"
    menu = "\n".join(["Home", "News", "Sport", "Weather"] * 3 + ["A line that ends properly."])
    assert fineweb(doc(menu)) == "fineweb.line_punctuation_ratio"
    short = "\n".join(f"Item {i} is fine." for i in range(10))
    assert fineweb(doc(short)) == "fineweb.short_line_ratio"
    dup = PROSE + "\n" + "Share this article with your friends on social media today.\n" * 2
    assert fineweb(doc(dup)) == "fineweb.char_duplication_ratio"
    words = "\n".join(f"Number {i} is here." + " and more" * 3 + "." for i in range(30))
    assert FineWeb(FineWebConfig(max_newline_word_ratio=0.05))(doc(words)) == "fineweb.list_ratio"


def test_normalize_unicode_and_whitespace():
    step = Normalize(NormalizeConfig())
    d = doc("  Cafe\u0301\u00a0menu\u200b \t today\r\n\r\n\r\n\r\nOpen   late  \n")
    assert step(d) is None
    assert d.text == "Café menu today\n\nOpen late"
    assert step.stats["normalize.changed"] == 1


def test_pii_redaction_counts_each_kind():
    step = PII(PIIConfig())
    d = doc("Write to jane.doe+news@example.co.uk or call +44 20 7946 0958 or (415) 555-0132. "
            "Server 192.168.10.4 and 2001:db8::8a2e:370:7334 answered at 10:30:00; version 1.2.3.4.5 and 999.1.1.1 are not IPs. "
            "Le bureau de Paris répond au +33 1 42 68 53 00, écrivez à contact@mairie-paris.fr.")
    assert step(d) is None
    assert d.text == ("Write to <EMAIL> or call <PHONE> or <PHONE>. "
                      "Server <IP_ADDRESS> and <IP_ADDRESS> answered at 10:30:00; version 1.2.3.4.5 and 999.1.1.1 are not IPs. "
                      "Le bureau de Paris répond au <PHONE>, écrivez à <EMAIL>.")
    assert step.stats == {"pii.email": 2, "pii.phone": 3, "pii.ip": 2}
    plain = doc("In 2019 the price rose from 1500 to 1750 dollars, order no. 2024-118-77.")
    assert step(plain) is None and plain.text == "In 2019 the price rose from 1500 to 1750 dollars, order no. 2024-118-77."


PHONES = ["+44 20 7946 0958", "+49 30 123456", "+44 (0)20 7946 0958", "+49 (0)30 1234567", "+33 1 23 45 67 89",
          "+41 44 668 18 00", "+31 6 12345678", "+1-800-555-0199", "0044 20 7946 0958", "020 7946 0958", "030 123456",
          "030/123456", "(030) 1234567", "01.23.45.67.89", "06-12345678", "(415) 555-0132", "555-123-4567"]
NOT_PHONES = ["In 2019 and 2020", "$1,299.00", "1.299,00 EUR", "€ 0,99", "ISBN 0-306-40615-2", "ISBN 978-3-16-148410-0",
              "2023-01-15", "15.01.2023", "01.01.2023 12:00", "01/02/2023", "version 10.0.19041.1", "v0.9.2.4",
              "pages 100-120", "order no. 2024-118-77", "+5 points", "+1,000 users", "0.5 mg", "from 09:30 to 17:00",
              "reference 0123456789", "00.0000.00.00", "0000 000000", "+0 123 4567 890", "(000) 555-0132"]


@pytest.mark.parametrize("number", PHONES)
def test_pii_redacts_international_and_national_phone_formats(number):
    step = PII(PIIConfig())
    d = doc(f"Questions? Call {number} today.")
    step(d)
    assert d.text == "Questions? Call <PHONE> today." and step.stats["pii.phone"] == 1


def test_pii_leaves_years_prices_isbns_dates_and_versions_alone():
    step = PII(PIIConfig())
    for text in NOT_PHONES:
        d = doc(f"See {text} here.")
        step(d)
        assert d.text == f"See {text} here.", text
    assert step.stats["pii.phone"] == 0
    long_run = doc("+" + "1" * 5000 + "x")  # no catastrophic backtracking through long digit runs
    step(long_run)
    assert long_run.text.startswith("+111")


def test_url_filter_blocklist_file_subdomains_and_substrings(tmp_path):
    blocklist = tmp_path / "domains.txt"
    blocklist.write_text("# adult and spam domains\ncasino-bonus.example\nspam.test\n")
    step = URLFilter(URLFilterConfig(blocklist_file=str(blocklist), banned_substrings=["porn", "xxx"]))
    assert step(doc(PROSE, "https://casino-bonus.example/win")) == "url.blocked_domain"
    assert step(doc(PROSE, "http://www.Spam.test./page")) == "url.blocked_domain"
    assert step(doc(PROSE, "https://example.org/free-XXX-videos")) == "url.banned_substring"
    assert step(doc(PROSE, "https://notspam.testing.org/")) is None
    assert step(doc(PROSE, None)) is None


@pytest.mark.parametrize("text,lang", [
    (PROSE, "en"), (GERMAN, "de"),
    ("El ayuntamiento aprobó anoche el nuevo presupuesto de la biblioteca municipal, que abrirá más horas.", "es"),
    ("東京都は新しい図書館の予算を承認し、開館時間を延長することを決めました。", "ja"),
    ("Городской совет одобрил новый бюджет библиотеки и продлил часы работы.", "ru"),
])
def test_language_id_labels_and_keeps(text, lang):
    step = Language(LanguageConfig(keep=["en"]))
    d = doc(text)
    reason = step(d)
    assert d.lang == lang and 0 < d.lang_score <= 1
    assert reason == (None if lang == "en" else "lang.not_kept")
    assert Language(LanguageConfig(keep=[]))(doc(text)) is None


def test_messy_html_page_is_cleaned_by_the_chain():
    html = (
        "<html><head><script>var x = {a: 1};</script></head><body>\n"
        "<div class=\"nav\">Home | Login</div>\n"
        "<p>" + PROSE.replace("\n", "</p>\n<p>") + "</p>\n"
        "<footer>© 2024 Example Inc. All rights reserved. Privacy Policy</footer></body></html>"
    )
    assert apply_chain(build_chain(QualityConfig()), doc(html)) == "c4.curly_brace"


def test_filter_part_counts_reconcile_and_labels_language(tmp_path, real_docs):
    part = str(tmp_path / "read" / "part-00000.parquet")
    rows = [{"id": str(i), "text": d["text"], "source": "s"} for i, d in enumerate(real_docs)]
    rows += [{"id": "short", "text": "too short", "source": "s"}, {"id": "de", "text": GERMAN * 3, "source": "s"},
             {"id": "mail", "text": PROSE + "\nContact us at press@example.com for details on the plan.", "source": "s"}]
    storage.write_parquet(part, docs_table(rows))
    stats = filter_part(part, str(tmp_path), QualityConfig())
    assert stats["docs_in"] == len(rows)
    assert stats["docs_kept"] + sum(stats["rejected"].values()) == stats["docs_in"]
    assert stats["rejected"]["lang.not_kept"] == 1 and stats["counters"]["pii.email"] == 1
    assert stats["chars_in"] >= stats["chars_kept"] + sum(stats["rejected_chars"].values())
    kept = storage.read_parquet(str(tmp_path / "quality" / "part-00000.parquet")).to_pylist()
    assert {d["lang"] for d in kept} == {"en"} and all(d["lang_score"] > 0.65 for d in kept)
    assert "<EMAIL>" in next(d["text"] for d in kept if d["id"] == "mail")
    rejected = storage.read_parquet(str(tmp_path / "rejected" / "quality" / "part-00000.parquet")).to_pylist()
    assert {"short", "de"} <= {d["id"] for d in rejected}
    assert next(d for d in rejected if d["id"] == "de")["lang"] == "de"
