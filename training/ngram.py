"""The n-gram quality classifier: hashed word and character n-grams into a linear model (fastText-style,
the kind of classifier that filters real crawls: DCLM's fastText, FineWeb's early filters).

Features of a document (lowercased, its first `max_chars` characters):
    words   a word is a run of characters other than whitespace and punctuation; its unigrams and
            bigrams (up to `word_ngrams` words)
    chars   n-grams of `char_min`..`char_max` characters inside each word padded as "<word>", so text
            written without spaces (Chinese, Japanese, Thai) still has features: its "words" are whole
            clauses and their character n-grams carry the signal
Each n-gram is hashed (polynomial over code points, MurmurHash3's fmix64) into one of `buckets` rows.
Values are TF-IDF as in scikit-learn's TfidfVectorizer(sublinear_tf=True): (1 + log count) * idf, the
idf learned from the training documents (a row never seen in training weighs 0, like a word outside
a vocabulary), and each of the two blocks (words, chars) scaled to unit L2 norm. An L2-regularised
multinomial logistic regression over them (scipy's L-BFGS, as scikit-learn fits it).

Why not a library: fastText's own package builds from source only (no wheels for current Pythons);
fasttext-predict (already a dependency, for language id) cannot train; scikit-learn's
HashingVectorizer makes its character n-grams in Python (~100x slower than the numba kernels here,
see bench/quality_model.py). numba and scipy are installed already (scipy with datasketch), so this adds
nothing to install.

Settings: training.config.NgramConfig (finetune.ngram). Saved as ngram.safetensors (idf, weight, bias)
beside classifier.json, which records the settings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

from .config import NgramConfig

WEIGHTS = "ngram.safetensors"

_M64A, _M64B = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64
_S33 = np.uint64(33)
_B = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial hashes
_WORD_SEED, _BIGRAM_SEED, _CHAR_SEED = np.uint64(0x1234567), np.uint64(0x89ABCDE), np.uint64(0x5DEECE66D)
_BOW, _EOW = 0x3C, 0x3E  # "<" and ">" around a word for its character n-grams
_WORDS, _CHARS = 0, 1  # the two feature blocks, each scaled to unit norm


@njit(cache=True, inline="always")
def _fmix64(h):
    h ^= h >> _S33
    h *= _M64A
    h ^= h >> _S33
    h *= _M64B
    h ^= h >> _S33
    return h


@njit(cache=True, inline="always")
def _is_separator(c) -> bool:
    """Whitespace, controls, ASCII punctuation, general and CJK punctuation, fullwidth ASCII punctuation."""
    if c <= 0x20 or (0x21 <= c <= 0x2F) or (0x3A <= c <= 0x40) or (0x5B <= c <= 0x60) or (0x7B <= c <= 0xBF):
        return c != 0xAA and c != 0xB2 and c != 0xB3 and c != 0xB5 and c != 0xB9 and c != 0xBA  # ª ² ³ µ ¹ º
    return (0x2000 <= c <= 0x206F) or (0x3000 <= c <= 0x303F) or (0xFF01 <= c <= 0xFF0F) or (0xFF1A <= c <= 0xFF20) \
        or c == 0xFEFF


@njit(cache=True, inline="always")
def _next_word(codes, i, end):
    """Bounds [start, stop) of the first word at or after position i; start == end when there is none."""
    while i < end and _is_separator(codes[i]):
        i += 1
    stop = i
    while stop < end and not _is_separator(codes[stop]):
        stop += 1
    return i, stop


@njit(cache=True, inline="always")
def _add(h, shift, counts, touched, n_touched):
    b = np.int64((h * _M64A) >> shift)  # multiply-shift: the top bits of an odd multiple are well mixed
    if counts[b] == 0:
        touched[n_touched] = b
        n_touched += 1
    counts[b] += 1
    return n_touched


@njit(cache=True)
def _flush(counts, touched, n_touched, block, indices, values, blocks, nnz):
    """Append the doc-block's distinct rows and counts to the output, clearing the scratch counts."""
    for t in range(n_touched):
        b = touched[t]
        indices[nnz] = b
        values[nnz] = counts[b]
        blocks[nnz] = block
        counts[b] = 0
        nnz += 1
    return nnz


@njit(cache=True)
def count_features(codes, offsets, bits, word_ngrams, char_min, char_max):
    """Distinct hashed n-gram rows of each document and their counts, as CSR (indptr, indices, counts,
    block): `codes` are the code points of the documents one after another, document i is
    codes[offsets[i]:offsets[i + 1]]."""
    n_docs = len(offsets) - 1
    buckets = 1 << bits
    shift = np.uint64(64 - bits)
    counts = np.zeros(buckets, np.uint16)  # a count is at most max_chars + 2 (<= 60,000)
    # At most per character: word_ngrams word n-grams (a 1-character word) and (char_max - char_min + 1)
    # character n-grams of a padded word, + the padding's; bounded generously below.
    cap = len(codes) * (word_ngrams + 3 * (char_max - char_min + 1)) + n_docs * 4 + 16
    touched = np.empty(buckets, np.int64)  # distinct rows of one doc-block
    indices = np.empty(cap, np.int64)
    values = np.empty(cap, np.float32)
    blocks = np.empty(cap, np.uint8)
    indptr = np.zeros(n_docs + 1, np.int64)
    nnz = 0
    for d in range(n_docs):
        start, end = offsets[d], offsets[d + 1]
        # words: unigrams, then n-grams of up to word_ngrams consecutive words
        n_touched = 0
        recent = np.zeros(4, np.uint64)  # hashes of the last words, most recent first
        n_words = 0
        w_start, w_end = _next_word(codes, start, end)
        while w_start < end:
            h = _WORD_SEED
            for q in range(w_start, w_end):
                h = (h + np.uint64(codes[q])) * _B
            for k in range(3, 0, -1):
                recent[k] = recent[k - 1]
            recent[0] = h
            n_words += 1
            n_touched = _add(h, shift, counts, touched, n_touched)
            g = h
            for n in range(2, word_ngrams + 1):
                if n_words < n:
                    break
                g = (g + _fmix64(recent[n - 1] + _BIGRAM_SEED)) * _B
                n_touched = _add(g + np.uint64(n), shift, counts, touched, n_touched)
            w_start, w_end = _next_word(codes, w_end, end)
        nnz = _flush(counts, touched, n_touched, _WORDS, indices, values, blocks, nnz)
        # characters: n-grams inside "<word>"
        n_touched = 0
        w_start, w_end = _next_word(codes, start, end)
        while w_start < end:
            # padded word positions p in [w_start - 1, w_end]: w_start - 1 is "<", w_end is ">"
            for p in range(w_start - 1, w_end + 1):
                h = _CHAR_SEED
                for n in range(1, char_max + 1):
                    q = p + n - 1
                    if q > w_end:
                        break
                    c = _BOW if q == w_start - 1 else (_EOW if q == w_end else codes[q])
                    h = (h + np.uint64(c)) * _B
                    if n >= char_min:
                        n_touched = _add(h + np.uint64(n), shift, counts, touched, n_touched)
            w_start, w_end = _next_word(codes, w_end, end)
        nnz = _flush(counts, touched, n_touched, _CHARS, indices, values, blocks, nnz)
        indptr[d + 1] = nnz
    return indptr, indices[:nnz], values[:nnz], blocks[:nnz]


@njit(cache=True)
def tfidf(indptr, indices, counts, blocks, idf):
    """(1 + log count) * idf, each document's word and character blocks scaled to unit L2 norm."""
    values = np.empty(len(indices), np.float32)
    for d in range(len(indptr) - 1):
        norms = np.zeros(2)
        for j in range(indptr[d], indptr[d + 1]):
            c = counts[j]
            v = (1.0 if c == 1 else 1.0 + np.log(c)) * idf[indices[j]]
            values[j] = v
            norms[blocks[j]] += v * v
        for j in range(indptr[d], indptr[d + 1]):
            norm = norms[blocks[j]]
            if norm > 0:
                values[j] /= np.sqrt(norm)
    return values


@njit(cache=True)
def _logits(indptr, indices, values, weight, bias):
    k = weight.shape[1]
    out = np.empty((len(indptr) - 1, k), np.float32)
    for d in range(len(indptr) - 1):
        for c in range(k):
            out[d, c] = bias[c]
        for j in range(indptr[d], indptr[d + 1]):
            for c in range(k):  # scalar loops: a row slice here would allocate per feature
                out[d, c] += values[j] * weight[indices[j], c]
    return out


def code_points(texts: list[str], max_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowercased first max_chars characters of each text as one code point array, and offsets."""
    lowered = [t[:max_chars].lower() for t in texts]
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum([len(t) for t in lowered], out=offsets[1:])
    codes = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), np.uint32)
    return codes, offsets


def features(texts: list[str], cfg: NgramConfig):
    codes, offsets = code_points(texts, cfg.max_chars)
    return count_features(codes, offsets, cfg.buckets.bit_length() - 1, cfg.word_ngrams, cfg.char_min, cfg.char_max)


def fit(texts: list[str], y: np.ndarray, num_labels: int, cfg: NgramConfig) -> dict[str, np.ndarray]:
    """Train on texts with label indices y: {"idf": (buckets,), "weight": (buckets, num_labels), "bias": (num_labels,)}.
    The objective is scikit-learn's LogisticRegression(C, multinomial) divided by C * n, minimised by
    scipy's L-BFGS-B as scikit-learn does, over the rows training saw only."""
    from scipy.optimize import minimize
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    indptr, indices, counts, blocks = features(texts, cfg)
    n, k = len(texts), num_labels
    rows = np.repeat(np.arange(n), np.diff(indptr))
    df = np.bincount(np.unique(rows * cfg.buckets + indices) % cfg.buckets, minlength=cfg.buckets)
    idf = np.where(df > 0, np.log((1 + n) / (1 + df)) + 1, 0).astype(np.float32)  # sklearn's smooth idf
    values = tfidf(indptr, indices, counts, blocks, idf).astype(np.float64)
    seen, columns = np.unique(indices, return_inverse=True)
    x = csr_matrix((values, columns, indptr), shape=(n, len(seen)))
    onehot = np.eye(k)[np.asarray(y)]
    l2 = 1.0 / (cfg.c * n)

    def loss_and_grad(theta):
        w, b = theta[:-k].reshape(-1, k), theta[-k:]
        z = x @ w + b
        z -= z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = (np.exp(log_p) - onehot) / n
        loss = -(onehot * log_p).sum() / n + 0.5 * l2 * (w * w).sum()
        return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])

    # One BLAS thread: the problem is small, and OpenBLAS threads spinning on a busy machine made this
    # fit 11x slower (7.5 s instead of 0.67 s for 400 documents on 2 loaded cores).
    with threadpool_limits(1):
        theta = minimize(loss_and_grad, np.zeros(len(seen) * k + k), jac=True, method="L-BFGS-B",
                         options={"maxiter": cfg.max_iter}).x
    weight = np.zeros((cfg.buckets, k), np.float32)
    weight[seen] = theta[:-k].reshape(-1, k)
    return {"idf": idf, "weight": weight, "bias": theta[-k:].astype(np.float32)}


def predict_logits(texts: list[str], params: dict[str, np.ndarray], cfg: NgramConfig, chunk: int = 2048) -> np.ndarray:
    out = [np.zeros((0, params["bias"].shape[0]), np.float32)]
    for i in range(0, len(texts), chunk):  # bounded memory on a large part
        indptr, indices, counts, blocks = features(texts[i : i + chunk], cfg)
        values = tfidf(indptr, indices, counts, blocks, params["idf"])
        out.append(_logits(indptr, indices, values, params["weight"], params["bias"]))
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def save(params: dict[str, np.ndarray], directory: str | Path) -> None:
    from safetensors.numpy import save_file

    from tokenmill.pipeline import storage

    path = Path(directory) / WEIGHTS
    tmp = path.with_name(storage.TEMPORARY + path.name)
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(tmp))
    tmp.replace(path)


def load(directory: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(directory) / WEIGHTS))
