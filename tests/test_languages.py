"""Words, stop words and thresholds per language (pipeline/filters/languages.py) on real text of
tests/data/multilingual: clean Chinese, Japanese and other documents are kept by the whole quality
chain, junk made of the same languages is still rejected by the rules meant for it, English is
counted as before, and per-language overrides are validated and applied."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tokenmill.flows.config import load_config
from tokenmill.pipeline.config import FineWebConfig, GopherQualityConfig, QualityConfig
from tokenmill.pipeline.filters import build_chain, filter_docs
from tokenmill.pipeline.filters.base import Doc
from tokenmill.pipeline.filters.fineweb import FineWeb
from tokenmill.pipeline.filters.gopher import GopherQuality
from tokenmill.pipeline.filters.languages import SECTIONS, PerLanguage, defaults, splitter, stop_words
from tokenmill.pipeline.filters.words import split_words

DATA = Path(__file__).parent / "data" / "multilingual"
LANGS = ["zh", "ja", "ko", "hi", "sw", "de", "ar"]


def sentences(lang: str) -> list[str]:
    with gzip.open(DATA / f"leipzig_{lang}.txt.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def clean_doc(lang: str, start: int) -> str:
    """20 consecutive web sentences, four to a line."""
    group, sep = sentences(lang)[start:start + 20], "" if lang in ("zh", "ja") else " "
    return "\n".join(sep.join(group[i:i + 4]) for i in range(0, 20, 4))


def novel_chunk() -> str:
    with gzip.open(DATA / "aozora_wagahaiwa_nekodearu_ja_head.txt.gz", "rt", encoding="utf-8") as f:
        text = re.sub(r"《[^》]*》|｜|［＃[^］]*］", "", f.read())
    return text[2000:3600]


@pytest.fixture(scope="module")
def chain():
    return build_chain(QualityConfig.model_validate({"language": {"keep": LANGS}}))


def run(steps, texts: list[str]) -> list[str | None]:
    return filter_docs(steps, [Doc(str(i), t) for i, t in enumerate(texts)])


def test_segmenters_split_words_of_scripts_without_spaces():
    assert splitter("zh")("我们在北京大学学习中文。") == ["我们", "在", "北京大学", "学习", "中文", "。"]
    assert splitter("ja")("吾輩は猫である。名前はまだ無い。") == ["吾輩", "は", "猫", "で", "ある", "。", "名前", "は",
                                                                  "まだ", "無い", "。"]
    assert splitter("th")("ภาษาไทยเป็นภาษาที่มีระดับเสียง")[:3] == ["ภาษาไทย", "เป็น", "ภาษา"]
    # vowel signs stay in their word; punctuation is a token of its own
    assert splitter("hi")("हिन्दी भाषा, बहुत सुंदर है।") == ["हिन्दी", "भाषा", ",", "बहुत", "सुंदर", "है", "।"]
    assert splitter("fr")("L'homme a dit: «oui» à 3.14 e-mail.") == [
        "L'homme", "a", "dit", ":", "«", "oui", "»", "à", "3.14", "e-mail", "."]


def test_english_is_counted_as_before():
    text = "Mr. Smith didn't pay $5.00 for the U.S. e-mail... (see https://x.org/a?b=1)."
    assert splitter("en") is split_words and splitter(None) is split_words
    assert Doc("a", text, lang="en").words == split_words(text)
    step = GopherQuality(GopherQualityConfig(), {})
    assert step.stop_words("en") == step.stop_words(None) == frozenset(GopherQualityConfig().stop_words)
    assert step.settings("en") is step.settings(None) is step.settings.cfg


def test_clean_documents_in_every_script_are_kept(chain):
    texts = [clean_doc(lang, start) for lang in LANGS for start in (0, 200)] + [novel_chunk()]
    docs = [Doc(str(i), t) for i, t in enumerate(texts)]
    assert filter_docs(chain, docs) == [None] * len(texts)
    assert [d.lang for d in docs] == [lang for lang in LANGS for _ in range(2)] + ["ja"]


def test_junk_in_chinese_and_japanese_is_still_rejected_by_its_rules(chain):
    for lang in ("zh", "ja"):
        lines = sentences(lang)
        words = [w for w in splitter(lang)(" ".join(lines[:40])) if len(w) > 1][:60]
        repeated = "\n".join([lines[3]] * 30)
        menu = "\n".join(words[:40])
        bar = " | ".join(words[:8])
        teasers = "\n".join(f"{''.join(splitter(lang)(line)[:6])}…\n2024-05-{d:02d}"
                             for d, line in enumerate(lines[:15], 1))
        boilerplate = f"{bar}\n{teasers}\n© 2024 {words[9]} | {words[10]}"
        reasons = run(chain, [repeated, menu, boilerplate])
        assert reasons[0] == "gopher.duplicate_line_fraction", (lang, reasons)
        assert reasons[1] in ("fineweb.line_punctuation_ratio", "gopher.min_words"), (lang, reasons)
        assert reasons[2].startswith(("gopher.ellipsis_", "gopher.top_", "gopher.duplicate_")), (lang, reasons)


def test_stop_words_are_the_languages_own():
    assert "的" in stop_words("zh") and "の" in stop_words("ja") and "und" in stop_words("de")
    assert not any(w.isdigit() or " " in w for w in stop_words("ko") + stop_words("vi"))
    assert stop_words("xx") is None
    step = GopherQuality(GopherQualityConfig(), {})
    assert step.settings("xx").min_stop_words == 0  # no list for the language: the rule cannot apply
    # the English list no longer decides other languages
    german = clean_doc("de", 0)
    assert step(Doc("de", german, lang="de")) is None
    assert step(Doc("de", german, lang="en")) == "gopher.stop_words"


def test_every_built_in_default_is_a_valid_setting():
    cfg = QualityConfig()
    for lang in [*defaults(), "xx"]:
        for section in SECTIONS:
            PerLanguage(section, getattr(cfg, section))(lang)  # validates the merged values


def test_per_language_overrides_from_the_command_line(chain):
    config = load_config(overrides=["curate.quality.language.keep=[zh,de]",
                                     "curate.quality.languages.zh.gopher_quality.min_words=100000"])
    steps = build_chain(config.curate.quality)
    assert run(steps, [clean_doc("zh", 0), clean_doc("de", 0)]) == ["gopher.min_words", None]
    with pytest.raises(ValueError, match=r"languages\.zh\.gopher_quality: min_wrds"):
        load_config(overrides=["curate.quality.languages.zh.gopher_quality.min_wrds=1"])
    with pytest.raises(ValueError, match=r"languages\.zh\.language: only min_score"):
        load_config(overrides=["curate.quality.languages.zh.language.keep=[en]"])
    with pytest.raises(ValueError, match=r"languages\.zh\.pii"):
        load_config(overrides=["curate.quality.languages.zh.pii.enabled=false"])


def test_japanese_dialogue_lines_end_in_a_closing_quote():
    with gzip.open(DATA / "aozora_wagahaiwa_nekodearu_ja_head.txt.gz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in re.sub(r"《[^》]*》|｜|［＃[^］]*］", "", f.read()).splitlines()]
    dialogue = "\n".join([line for line in lines if line.endswith("」") and len(line) > 12][:20])
    step = FineWeb(FineWebConfig(), {})
    assert step(Doc("ja", dialogue, lang="ja")) is None
    assert step(Doc("ja", dialogue, lang="de")) == "fineweb.line_punctuation_ratio"  # as the published rule
