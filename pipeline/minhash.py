"""Compiled kernels of MinHash dedup: normalised text, shingle hashes and signatures of a whole batch.

Each kernel is one loop over the characters (or hashes) of every document of a batch, compiled by
numba (cached in __pycache__: compiled once per installation, later processes load it). Python only
passes arrays in and out; the Unicode knowledge is in two tables built once per process from
`unicodedata` (char_tables).

Normalisation, per character: NFKC then case folding (`unicodedata.normalize("NFKC", c).casefold()`,
so "ﬁ" -> "fi", "Ａ" -> "a", "ß" -> "ss", "\\xa0" -> " "). A word is a run of letters, digits and
combining marks (Unicode L*, N*, M*); anything else (spaces, punctuation, symbols) separates words.
The normalised text is the words joined by single spaces. Per character is exactly NFKC for text
already in NFC (almost all web text); a document that is not (decomposed accents, marks out of
canonical order) is first normalised as a whole with NFKC (nfkc_where_not_nfc: a kernel finds the
few documents with a character NFC may change, Python checks and normalises those).

A document mostly (NO_SPACE_SHARE of its word characters) in a script written without spaces (CJK,
kana, Thai, Lao, Tibetan, Myanmar, Khmer) is shingled by characters instead of words.

Hashes (uint64 arithmetic wraps mod 2^64):
    word       Horner polynomial of its code points in base B, plus its length, then fmix64
    character  fmix64(code point + B)
    shingle    Horner polynomial of n token hashes, fmix64, upper 32 bits; a document with fewer
               than n tokens has one shingle (missing tokens count 0), one without tokens the hash 0
    signature  datasketch's affine32 scheme: h' = fmix32(h), value = a*h' + b mod 2^32, min per doc,
               with datasketch's (a, b) for num_perm and seed: bit-identical to
               MinHash(num_perm, seed, hashfunc=int).update_batch(shingle hashes)
"""
from __future__ import annotations

import functools
import itertools
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

NO_SPACE_SHARE = 0.3  # share of word characters in a no-space script above which a doc is shingled by characters

WORD = np.uint8(1)  # char class bit: a letter, digit or combining mark
NO_SPACE = np.uint8(2)  # char class bit: in a script written without spaces between words
NFC_SUSPECT = np.uint8(4)  # char class bit: NFC may change a text with it (not NFC_QC=Yes, or a combining class)

# Unicode blocks of scripts written without spaces between words: Thai, Lao, Tibetan, Myanmar, Khmer,
# kana, CJK (with extensions and compatibility ideographs).
NO_SPACE_BLOCKS = [(0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF),
                   (0x3040, 0x30FF), (0x3400, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF)]
HANGUL_VOWELS_AND_TAILS = [(0x1161, 0x1175), (0x11A8, 0x11C2)]  # compose with a preceding syllable

_B = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial hashes
_M64A, _M64B = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64
_M32A, _M32B = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)  # MurmurHash3 fmix32 (datasketch's pre-mix)
_S16, _S13, _S33, _S32 = np.uint32(16), np.uint32(13), np.uint64(33), np.uint64(32)
_ZERO, _SPACE, _MAX32 = np.uint64(0), np.uint32(0x20), np.uint32(0xFFFFFFFF)
_ONE, _TWO, _THREE, _FOUR = np.int64(1), np.int64(2), np.int64(3), np.int64(4)
_LONGEST_FOLD = 18  # code points of the longest per-character NFKC case folding (U+FDFA)


# ---- tables -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fold, expansions, expansion_offsets, classes) over all code points (~0.5 s of CPU, once per process).

    fold[c] is the folded code point of c, or -(k + 1) when c folds to several:
    expansions[expansion_offsets[k]:expansion_offsets[k + 1]]. classes[c] has the WORD, NO_SPACE and
    NFC_SUSPECT bits. Planes 4-13 are unassigned and 15-16 private use: kept as they are, not words."""
    fold = np.arange(0x110000, dtype=np.int32)
    classes = np.zeros(0x110000, np.uint8)
    expansions: list[int] = []
    offsets = [0]
    for c in itertools.chain(range(0xD800), range(0xE000, 0x40000), range(0xE0000, 0xE1000)):
        ch = chr(c)
        if unicodedata.category(ch)[0] in "LNM":
            classes[c] |= WORD
        if unicodedata.combining(ch) or unicodedata.normalize("NFC", ch) != ch:
            classes[c] |= NFC_SUSPECT
        parts = unicodedata.decomposition(ch).split()
        if len(parts) == 2 and not parts[0].startswith("<") and unicodedata.normalize("NFC", ch) == ch:
            classes[int(parts[1], 16)] |= NFC_SUSPECT  # composes with the character before it
        folded = unicodedata.normalize("NFKC", ch).casefold()
        if len(folded) == 1:
            fold[c] = ord(folded)
        elif folded != ch:
            fold[c] = -len(offsets)
            expansions += map(ord, folded)
            offsets.append(len(expansions))
    for lo, hi in NO_SPACE_BLOCKS:
        classes[lo : hi + 1] |= NO_SPACE
    for lo, hi in HANGUL_VOWELS_AND_TAILS:
        classes[lo : hi + 1] |= NFC_SUSPECT
    return fold, np.array(expansions, np.uint32), np.array(offsets, np.int64), classes


def utf8_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets) of a string array without nulls, without copying."""
    strings = strings.cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def nfkc_where_not_nfc(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The texts, with whole-text NFKC applied to those not in NFC (per-character folding is NFKC for
    the others). Only documents with an NFC_SUSPECT character are looked at in Python."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    rows = np.flatnonzero(nfc_suspects(*utf8_buffers(texts), char_tables()[3]))
    if len(rows) == 0:
        return texts
    strings = texts.take(pa.array(rows)).to_pylist()
    redo = [i for i, s in enumerate(strings) if not unicodedata.is_normalized("NFC", s)]
    if not redo:
        return texts
    mask = np.zeros(len(texts), bool)
    mask[rows[redo]] = True
    fixed = pa.array([unicodedata.normalize("NFKC", strings[i]) for i in redo], pa.large_string())
    return pc.replace_with_mask(texts, pa.array(mask), fixed)


# ---- per-character steps, inlined into the kernels ---------------------------------------------------


@njit(inline="always")
def _decode(data, i, end):
    """(code point, width) of the non-ASCII UTF-8 character at data[i]; an invalid or cut sequence
    is U+FFFD of width 1."""
    b = np.int64(data[i])
    if b < 0xE0:
        if b >= 0xC0 and i + 1 < end:
            return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), _TWO
    elif b < 0xF0:
        if i + 2 < end:
            return ((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), _THREE
    elif b < 0xF8 and i + 3 < end:
        cp = (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
              | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F))
        if cp < 0x110000:
            return cp, _FOUR
    return np.int64(0xFFFD), _ONE


@njit(inline="always")
def _put(cp, classes, out, k, doc_start, after_word, special):
    """Append folded character cp: a word character gets a space before it when the character
    before it was not a word character (and it is not the doc's first); other characters give
    nothing. Branch-free: both slots are written, k advances over the ones kept.
    Returns (k, cp is a word character, special + 1 if it is one in a no-space script)."""
    flags = classes[cp]
    word = (flags & WORD) != 0
    out[k] = _SPACE
    k += word & (not after_word) & (k > doc_start)
    out[k] = cp
    return k + word, word, special + (word & ((flags & NO_SPACE) != 0))


@njit(inline="always")
def _fmix64(x):
    x ^= x >> _S33
    x *= _M64A
    x ^= x >> _S33
    x *= _M64B
    return x ^ (x >> _S33)


@njit(inline="always")
def _fmix32(x):
    x = np.uint32(x ^ (x >> _S16))  # numba widens uint32 products: truncate after each step
    x = np.uint32(x * _M32A)
    x = np.uint32(x ^ (x >> _S13))
    x = np.uint32(x * _M32B)
    return np.uint32(x ^ (x >> _S16))


# ---- kernels over a batch ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def nfc_suspects(data, offsets, classes):
    """Per doc: does it have a character that NFC may change (see NFC_SUSPECT)?"""
    docs = len(offsets) - 1
    out = np.zeros(docs, np.bool_)
    for d in range(docs):
        i, end = offsets[d], offsets[d + 1]
        while i < end:
            if data[i] < 0x80:
                i += _ONE
                continue
            cp, width = _decode(data, i, end)
            if classes[cp] & NFC_SUSPECT:
                out[d] = True
                break
            i += width
    return out


@njit(nogil=True)
def _normalize_doc(data, i, end, fold, expansions, expansion_offsets, classes, out, k):
    """Normalised text of data[i:end] into out[k:]: (new k or -1 if out is too short, word
    characters, those of them in a no-space script)."""
    if k + (end - i) + 2 > len(out):  # a character that folds to one gives one code point (+ a space) at most
        return -1, 0, 0
    start, after_word, chars, special = k, True, 0, 0
    while i < end:
        if data[i] < 0x80:
            cp = np.int64(data[i])
            i += _ONE
        else:
            cp, width = _decode(data, i, end)
            i += width
        f = fold[cp]
        if f >= 0:
            k, after_word, special = _put(f, classes, out, k, start, after_word, special)
            chars += after_word
            continue
        if k + 2 * _LONGEST_FOLD + 2 + (end - i) > len(out):
            return -1, 0, 0
        for j in range(expansion_offsets[-f - 1], expansion_offsets[-f]):
            k, after_word, special = _put(expansions[j], classes, out, k, start, after_word, special)
            chars += after_word
    return k, chars, special


@njit(cache=True, nogil=True)
def normalize(data, offsets, fold, expansions, expansion_offsets, classes):
    """(code points, offsets, no-space share) of every doc's normalised text: folded words joined
    by single spaces; the share of its characters that are in a script written without spaces."""
    docs = len(offsets) - 1
    out = np.empty(len(data) + 2 * _LONGEST_FOLD + 2, np.uint32)
    out_offsets = np.zeros(docs + 1, np.int64)
    share = np.zeros(docs, np.float64)
    for d in range(docs):
        k = -1
        while k < 0:  # a doc with many characters that fold to several needs a longer buffer
            k, chars, special = _normalize_doc(data, offsets[d], offsets[d + 1], fold, expansions,
                                               expansion_offsets, classes, out, out_offsets[d])
            if k < 0:
                out = np.concatenate((out, np.empty(len(out), np.uint32)))
        out_offsets[d + 1] = k
        share[d] = special / max(chars, 1)
    return out[: out_offsets[-1]], out_offsets, share


@njit(inline="always")
def _word_hashes(text, start, end, out, k):
    h, length = _ZERO, 0
    for i in range(start, end):
        cp = np.uint64(text[i])
        if cp != _SPACE:
            h = h * _B + cp
            length += 1
        else:  # a single space ends every word
            out[k] = _fmix64(h + np.uint64(length))
            k += 1
            h, length = _ZERO, 0
    if length:
        out[k] = _fmix64(h + np.uint64(length))
        k += 1
    return k


@njit(inline="always")
def _char_hashes(text, start, end, out, k):
    for i in range(start, end):
        cp = np.uint64(text[i])
        if cp != _SPACE:
            out[k] = _fmix64(cp + _B)
            k += 1
    return k


@njit(cache=True, nogil=True)
def token_hashes(text, offsets, chars_of_doc):
    """(token hashes, token offsets) of normalised text: per doc its words, or its characters (spaces
    left out) where chars_of_doc[d]."""
    docs = len(offsets) - 1
    out = np.empty(len(text), np.uint64)  # a token has one character at least
    token_offsets = np.zeros(docs + 1, np.int64)
    k = 0
    for d in range(docs):
        if chars_of_doc[d]:
            k = _char_hashes(text, offsets[d], offsets[d + 1], out, k)
        else:
            k = _word_hashes(text, offsets[d], offsets[d + 1], out, k)
        token_offsets[d + 1] = k
    return out[:k], token_offsets


@njit(cache=True, nogil=True)
def ngram_hashes(tokens, token_offsets, n_of_doc):
    """(32-bit hash of every n-gram of consecutive tokens of a doc, shingle offsets), n = n_of_doc[d].
    A doc with fewer than n tokens has one shingle, a doc without tokens the hash 0."""
    docs = len(token_offsets) - 1
    out = np.empty(len(tokens) + docs, np.uint32)
    shingle_offsets = np.zeros(docs + 1, np.int64)
    k = 0
    for d in range(docs):
        start, end, n = token_offsets[d], token_offsets[d + 1], n_of_doc[d]
        for i in range(start, max(end - n + 1, start + 1)):
            acc = _ZERO
            for j in range(i, i + n):
                acc = acc * _B + (tokens[j] if j < end else _ZERO)
            out[k] = np.uint32(_fmix64(acc) >> _S32) if end > start else np.uint32(0)
            k += 1
        shingle_offsets[d + 1] = k
    return out[:k], shingle_offsets


@njit(cache=True, nogil=True)
def minhash(shingles, shingle_offsets, a, b):
    """(docs, num_perm) uint32 signatures: per doc, the minimum of a*fmix32(h) + b mod 2^32 over its shingles."""
    docs, num_perm = len(shingle_offsets) - 1, len(a)
    sig = np.empty((docs, num_perm), np.uint32)
    for d in range(docs):
        row = sig[d]
        row[:] = _MAX32
        for i in range(shingle_offsets[d], shingle_offsets[d + 1]):
            h = _fmix32(shingles[i])
            for p in range(num_perm):  # vectorised by LLVM: multiply, add, min over the permutations
                row[p] = min(row[p], np.uint32(a[p] * h + b[p]))
    return sig


@njit(cache=True, nogil=True)
def string_hashes(data, offsets):
    """uint64 hash of every string of a batch (its raw UTF-8 bytes): Horner polynomial, then fmix64."""
    docs = len(offsets) - 1
    out = np.empty(docs, np.uint64)
    for d in range(docs):
        h = _ZERO
        for i in range(offsets[d], offsets[d + 1]):
            h = h * _B + np.uint64(data[i])
        out[d] = _fmix64(h + np.uint64(offsets[d + 1] - offsets[d]))
    return out
