from pipeline.config import QualityConfig
from pipeline.filters import filter_part, gopher_quality, gopher_repetition, quality_reason
from pipeline.documents import docs_table
from pipeline import io

CFG = QualityConfig()


def test_real_web_document_passes(real_docs):
    assert quality_reason(real_docs[0]["text"], CFG) is None


def test_too_short_and_too_long():
    assert gopher_quality("just a few words here", CFG) == "gopher.min_words"
    assert gopher_quality("the and of " * 40_000, CFG) == "gopher.max_words"


def test_mean_word_length_bounds():
    assert gopher_quality(" ".join(["a", "to", "of", "the"] * 20), CFG) == "gopher.min_mean_word_length"
    long_words = " ".join(["internationalization", "the", "and", "electroencephalography"] * 20)
    assert gopher_quality(long_words, CFG) == "gopher.max_mean_word_length"


def test_symbols_bullets_ellipses(real_docs):
    base = real_docs[0]["text"]
    assert gopher_quality(base + " #tag" * 200, CFG) == "gopher.symbol_word_ratio"
    bullets = "\n".join(f"- item number {i} of the list with some words" for i in range(30))
    assert gopher_quality(bullets, CFG) == "gopher.bullet_lines_ratio"
    ellipses = "\n".join(f"the story goes on and on for line {i} and then..." for i in range(30))
    assert gopher_quality(ellipses, CFG) == "gopher.ellipsis_lines_ratio"


def test_alpha_ratio_and_stop_words():
    numbers = " ".join(str(1000 + i) for i in range(100)) + " the and of with"
    assert gopher_quality(numbers, CFG) == "gopher.alpha_words_ratio"
    german = ("Der schnelle braune Fuchs springt über den faulen Hund und läuft weiter durch den Wald, "
              "während die Sonne langsam hinter den Bergen untergeht. ") * 5
    assert gopher_quality(german, CFG) == "gopher.stop_words"


def test_repeated_lines(real_docs):
    nav = "\n".join(["Home", "About us", "Contact"] * 10 + ["The only sentence of content here."])
    assert gopher_repetition(nav, CFG) == "gopher.duplicate_line_fraction"
    assert gopher_repetition(real_docs[0]["text"], CFG) is None


def test_filter_part_counts_reconcile(tmp_path, real_docs):
    part = str(tmp_path / "read" / "part-00000.parquet")
    docs = [{"id": str(i), "text": d["text"], "source": "s", "url": None, "meta": None} for i, d in enumerate(real_docs)]
    docs.append({"id": "short", "text": "too short", "source": "s", "url": None, "meta": None})
    io.write_parquet(part, docs_table(docs))
    stats = filter_part(part, str(tmp_path), CFG)
    assert stats["docs_in"] == len(docs)
    assert stats["docs_kept"] + sum(stats["rejected"].values()) == stats["docs_in"]
    assert stats["rejected"].get("gopher.min_words", 0) >= 1
    rejected = io.read_parquet(str(tmp_path / "rejected" / "quality" / "part-00000.parquet"))
    assert "short" in rejected["id"].to_pylist()
