"""Configuration of the data pipeline: one pydantic model per step, composed into CurateConfig."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

BUNDLED_CORPUS = str(Path(__file__).parent / "data" / "corpus")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReaderConfig(_Section):
    text_key: str = "text"
    # The record's own id is kept when present; otherwise "<file>#<line>" is used.
    id_key: str | None = "id"
    url_key: str | None = "url"


class QualityConfig(_Section):
    """Thresholds of the Gopher (Rae et al. 2021) quality and repetition rules."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2


class DedupConfig(_Section):
    exact: bool = Field(True, description="drop copies whose normalised text is identical (before MinHash)")
    minhash: bool = Field(True, description="drop near duplicates (MinHash LSH)")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets that counts as a duplicate")
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


class TokensConfig(_Section):
    seq_len: int = Field(256, ge=8)
    # Documents are assigned to val by a hash of their id, so the split is stable across reruns.
    val_fraction: float = Field(0.05, gt=0, lt=1)


class CurateConfig(_Section):
    inputs: list[str] = Field(default_factory=lambda: [BUNDLED_CORPUS])
    reader: ReaderConfig = ReaderConfig()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokens: TokensConfig = TokensConfig()
