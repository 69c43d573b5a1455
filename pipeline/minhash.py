"""Compiled kernels of MinHash dedup: normalised text, shingle hashes and signatures of a whole batch.

Each kernel is one loop over the characters (or hashes) of every document of a batch, compiled by
numba (cached in __pycache__: compiled once per installation, later processes load it). Python only
passes arrays in and out; the Unicode knowledge is in tables built once per process from
`unicodedata` (char_tables). Shingle hashes are made in one pass over the UTF-8 bytes, without
writing the normalised text (shingle_hashes); `normalize` writes it, for exact dedup.

Normalisation, per character: NFKC then case folding (`unicodedata.normalize("NFKC", c).casefold()`,
so "ﬁ" -> "fi", "Ａ" -> "a", "ß" -> "ss", "\\xa0" -> " "). A word is a run of letters, digits and
combining marks (Unicode L*, N*, M*); anything else (spaces, punctuation, symbols) separates words.
The normalised text is the words joined by single spaces. Per character is exactly the whole text's
NFKC unless characters interact under NFKC (a combining mark or a character that composes with the
one before it, next to a character it reorders or composes with; see JOINS and COMPAT_EDGE): the few
documents where that can happen (decomposed accents, halfwidth "ｶﾞ", compatibility Hangul jamo) are
normalised again from their whole-text NFKC, in Python (see _joins, fold_batch).

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
JOINS = np.uint8(4)  # char class bit: under NFKC it may join the character before it (see char_tables)
COMPAT_EDGE = np.uint8(8)  # char class bit: its NFKD is not its NFD, and may join or be joined at an end
NFC_NO = np.uint8(16)  # char class bit: NFC changes it on its own (NFC_Quick_Check=No)
COMPOSES_NEXT = np.uint8(32)  # char class bit: first of a canonical pair that composes (Hangul lead, LV syllable)
COMPOSES_PREV = np.uint8(64)  # char class bit: second of a canonical pair that composes (NFC_Quick_Check=Maybe)

# Unicode blocks of scripts written without spaces between words: Thai, Lao, Tibetan, Myanmar, Khmer,
# kana, CJK (with extensions and compatibility ideographs).
NO_SPACE_BLOCKS = [(0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF),
                   (0x3040, 0x30FF), (0x3400, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF)]
HANGUL_VOWELS_AND_TAILS = [(0x1161, 0x1175), (0x11A8, 0x11C2)]  # compose with a preceding syllable

_B = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial hashes
_M64A, _M64B = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64
_M32A, _M32B = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)  # MurmurHash3 fmix32 (datasketch's pre-mix)
_S16, _S13, _S33, _S32 = np.uint32(16), np.uint32(13), np.uint64(33), np.uint64(32)
_ZERO, _ONE_U, _SPACE, _MAX32 = np.uint64(0), np.uint64(1), np.uint32(0x20), np.uint32(0xFFFFFFFF)
_ONE, _TWO, _THREE, _FOUR = np.int64(1), np.int64(2), np.int64(3), np.int64(4)
_LONGEST_FOLD = 18  # code points of the longest per-character NFKC case folding (U+FDFA)


# ---- tables -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fold, expansions, expansion_offsets, classes, ccc_ends, pairs) over all code points (~0.6 s of CPU,
    once per process).

    fold[c] is the folded code point of c, or -(k + 1) when c folds to several:
    expansions[expansion_offsets[k]:expansion_offsets[k + 1]]. classes[c] has the bits above,
    ccc_ends[c] the canonical combining classes of the first and last character of c's NFKD (low and
    high byte: a precomposed "İ" ends in a mark, U+0307), pairs the sorted (first << 21 | second) of
    the canonical pairs that compose (Hangul's are left out: its classes say all). Planes 4-13 are
    unassigned and 15-16 private use: kept as they are, not words.

    JOINS: a combining mark, a character that composes with the one before it (the second of a
    canonical pair, Hangul vowels and tails), one whose NFKD starts with either (halfwidth "ﾞ" ->
    U+3099, which makes "ｶﾞ" "ガ"), or one NFC changes. COMPAT_EDGE: a character whose compatibility
    decomposition differs from its canonical one and starts with a joining character or ends with a
    combining mark or a character that something composes with ("ª" -> "a", so "ª\u0301" is "á").
    A text's NFKC is its per-character NFKC unless it has a JOINS character after a COMPAT_EDGE one
    (or one that is both), or is not in NFC (see _joins)."""
    fold = np.arange(0x110000, dtype=np.int32)
    classes = np.zeros(0x110000, np.uint8)
    ccc_ends = np.zeros(0x110000, np.uint16)
    expansions: list[int] = []
    offsets = [0]
    composes_with_previous = {c for lo, hi in HANGUL_VOWELS_AND_TAILS for c in range(lo, hi + 1)}
    composes_with_next = set(range(0x1100, 0x1113)) | set(range(0xAC00, 0xD7A4, 28))  # Hangul lead jamo, LV syllables
    pairs: list[int] = []
    nfkd_ends: dict[int, tuple[str, str, bool]] = {}  # c -> first and last of its NFKD, is it not its NFD
    for c in itertools.chain(range(0xD800), range(0xE000, 0x40000), range(0xE0000, 0xE1000)):
        ch = chr(c)
        if unicodedata.category(ch)[0] in "LNM":
            classes[c] |= WORD
        ccc_ends[c] = unicodedata.combining(ch) * 0x101
        if unicodedata.normalize("NFC", ch) != ch:
            classes[c] |= NFC_NO | JOINS
        if ccc_ends[c]:
            classes[c] |= JOINS
        decomposition = unicodedata.decomposition(ch)
        if decomposition:
            parts = decomposition.split()
            if len(parts) == 2 and not parts[0].startswith("<") and unicodedata.normalize("NFC", ch) == ch:
                pairs.append(int(parts[0], 16) << 21 | int(parts[1], 16))
                composes_with_next.add(int(parts[0], 16))
                composes_with_previous.add(int(parts[1], 16))
            nfkd = unicodedata.normalize("NFKD", ch)
            nfkd_ends[c] = nfkd[0], nfkd[-1], nfkd != unicodedata.normalize("NFD", ch)
            ccc_ends[c] = unicodedata.combining(nfkd[0]) | unicodedata.combining(nfkd[-1]) << 8
        folded = unicodedata.normalize("NFKC", ch).casefold()
        if len(folded) == 1:
            fold[c] = ord(folded)
        elif folded != ch:
            fold[c] = -len(offsets)
            expansions += map(ord, folded)
            offsets.append(len(expansions))
    classes[list(composes_with_previous)] |= JOINS | COMPOSES_PREV
    classes[list(composes_with_next)] |= COMPOSES_NEXT
    for c, (first, last, compat) in nfkd_ends.items():
        joins = unicodedata.combining(first) or ord(first) in composes_with_previous
        classes[c] |= JOINS if joins else 0
        if compat and (joins or unicodedata.combining(last) or ord(last) in composes_with_next):
            classes[c] |= COMPAT_EDGE
    for lo, hi in NO_SPACE_BLOCKS:
        classes[lo : hi + 1] |= NO_SPACE
    return fold, np.array(expansions, np.uint32), np.array(offsets, np.int64), classes, ccc_ends, np.unique(np.array(pairs, np.int64))


def utf8_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets) of a string array without nulls, without copying."""
    strings = strings.cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def strings(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One large_string array, nulls as empty strings."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    return pc.fill_null(texts.cast(pa.large_string()), "")


def nfkc(texts: pa.Array, rows: np.ndarray) -> pa.Array:
    """Whole-text NFKC of texts[rows]."""
    return pa.array([unicodedata.normalize("NFKC", s) for s in texts.take(pa.array(rows)).to_pylist()], pa.large_string())


def fold_batch(kernel, texts: pa.Array | pa.ChunkedArray, *args) -> tuple:
    """kernel(utf8 data, offsets, *char_tables(), *args) -> (values, offsets, per-doc arrays..., NFKC
    needed) over a batch, with the docs where NFKC is needed (see _joins) done again from their
    whole-text NFKC: (values, offsets, per-doc arrays...) of the texts as NFKC case folding sees them."""
    texts, tables = strings(texts), char_tables()
    values, offsets, *per_doc, needed = kernel(*utf8_buffers(texts), *tables, *args)
    rows = np.flatnonzero(needed)
    if len(rows):
        redone, redone_offsets, *redone_per_doc, _ = kernel(*utf8_buffers(nfkc(texts, rows)), *tables, *args)
        values, offsets = replace_docs(values, offsets, rows, redone, redone_offsets)
        for column, redone_column in zip(per_doc, redone_per_doc):
            column[rows] = redone_column
    return values, offsets, *per_doc


def replace_docs(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, new_values: np.ndarray,
                 new_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a batch with docs `rows` (ascending) replaced by the docs of (new_values, new_offsets)."""
    lengths = np.diff(offsets)
    lengths[rows] = np.diff(new_offsets)
    pieces, previous = [], 0
    for r, row in enumerate(rows):
        pieces += [values[offsets[previous] : offsets[row]], new_values[new_offsets[r] : new_offsets[r + 1]]]
        previous = row + 1
    pieces.append(values[offsets[previous] :])
    return np.concatenate(pieces), np.concatenate(([0], np.cumsum(lengths)))


# ---- per-character steps, inlined into the kernels ---------------------------------------------------


@njit(inline="always")
def _next(data, i, end):
    """(code point, position after it) of the character at data[i]."""
    if data[i] < 0x80:
        return np.int64(data[i]), i + _ONE
    cp, width = _decode(data, i, end)
    return cp, i + width


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


@njit(nogil=True)
def _joins(data, start, i, cp, classes, ccc_ends, pairs):
    """May the NFKC of a text differ from its per-character NFKC at the JOINS character cp at data[i]
    (the text starts at data[start])? Conservative (some yes are no), exact for no: NFC's quick check
    on the decompositions (No; combining classes out of order; Maybe only after a mark or a character
    it composes with), and a JOINS character after a COMPAT_EDGE one or both at once. Called for
    JOINS characters only (rare): the one before is found by stepping back over UTF-8 continuation bytes."""
    flags = classes[cp]
    if flags & (NFC_NO | COMPAT_EDGE):
        return True
    if i == start:
        return False
    j = i - 1
    while j > start and (data[j] & 0xC0) == 0x80:
        j -= 1
    previous = np.int64(data[j]) if data[j] < 0x80 else _decode(data, j, i)[0]
    before = classes[previous]
    first, last_before = ccc_ends[cp] & 0xFF, ccc_ends[previous] >> 8
    return ((before & COMPAT_EDGE) != 0 or (first != 0 and last_before > first)
            or ((flags & COMPOSES_PREV) != 0 and (last_before != 0 or (before & COMPOSES_NEXT) != 0 and (
                0x1100 <= previous < 0x1113 or 0xAC00 <= previous < 0xD7A4  # Hangul lead jamo, syllables
                or _contains(pairs, previous << 21 | cp)))))


@njit(inline="always")
def _contains(sorted_values, value):
    i = np.searchsorted(sorted_values, value)
    return i < len(sorted_values) and sorted_values[i] == value


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


def fmix64(x):
    """MurmurHash3's 64-bit finalizer. Compiled (_fmix64), the kernels mix one uint64 with it; as plain
    numpy, dedup's band hashes mix a whole uint64 array."""
    x = x ^ (x >> _S33)
    x = x * _M64A
    x = x ^ (x >> _S33)
    x = x * _M64B
    return x ^ (x >> _S33)


_fmix64 = njit(inline="always")(fmix64)


@njit(inline="always")
def _fmix32(x):
    x = np.uint32(x ^ (x >> _S16))  # numba widens uint32 products: truncate after each step
    x = np.uint32(x * _M32A)
    x = np.uint32(x ^ (x >> _S13))
    x = np.uint32(x * _M32B)
    return np.uint32(x ^ (x >> _S16))


# ---- kernels over a batch ----------------------------------------------------------------------------


@njit(nogil=True)
def _normalize_doc(data, i, end, fold, expansions, expansion_offsets, classes, ccc_ends, pairs, out, k):
    """Normalised text of data[i:end] into out[k:]: (new k or -1 if out is too short, word
    characters, those of them in a no-space script, may its NFKC not be per character (_joins))."""
    if k + (end - i) + 2 > len(out):  # a character that folds to one gives one code point (+ a space) at most
        return -1, 0, 0, False
    doc_start, start, after_word, chars, special, joins = i, k, True, 0, 0, False
    while i < end:
        at = i
        cp, i = _next(data, i, end)
        if cp >= 0x80 and classes[cp] & JOINS and not joins:
            joins = _joins(data, doc_start, at, cp, classes, ccc_ends, pairs)
        f = fold[cp]
        if f >= 0:
            k, after_word, special = _put(f, classes, out, k, start, after_word, special)
            chars += after_word
            continue
        if k + 2 * _LONGEST_FOLD + 2 + (end - i) > len(out):
            return -1, 0, 0, False
        for j in range(expansion_offsets[-f - 1], expansion_offsets[-f]):
            k, after_word, special = _put(expansions[j], classes, out, k, start, after_word, special)
            chars += after_word
    return k, chars, special, joins


@njit(cache=True, nogil=True)
def normalize(data, offsets, fold, expansions, expansion_offsets, classes, ccc_ends, pairs):
    """(code points, offsets, no-space share, NFKC needed) of every doc's normalised text: folded
    words joined by single spaces; the share of its characters that are in a script written without
    spaces. The text is the per-character folding: see fold_batch for the docs where NFKC is needed."""
    docs = len(offsets) - 1
    out = np.empty(len(data) + 2 * _LONGEST_FOLD + 2, np.uint32)
    out_offsets = np.zeros(docs + 1, np.int64)
    share = np.zeros(docs, np.float64)
    needed = np.zeros(docs, np.bool_)
    for d in range(docs):
        k = -1
        while k < 0:  # a doc with many characters that fold to several needs a longer buffer
            k, chars, special, joins = _normalize_doc(data, offsets[d], offsets[d + 1], fold, expansions,
                                                      expansion_offsets, classes, ccc_ends, pairs, out, out_offsets[d])
            if k < 0:
                out = np.concatenate((out, np.empty(len(out), np.uint32)))
        out_offsets[d + 1] = k
        share[d] = special / max(chars, 1)
        needed[d] = joins
    return out[: out_offsets[-1]], out_offsets, share, needed


@njit(inline="always")
def _token_step(f, classes, by_chars, out, k, h, length, chars, special):
    """One folded character f: extend the word, or end it (by_chars: every word character is a
    token). Branch-free (a word boundary is a coin flip for the branch predictor): the token slot
    out[k] is always written, k advances over the ones kept. Tokens are unmixed (see _doc_ngrams)."""
    flags = classes[f]
    w = np.uint64(flags & WORD)
    if by_chars:
        out[k] = np.uint64(f) + _B
        k += np.int64(w)
    else:
        out[k] = h + length
        k += np.int64((w ^ _ONE_U) & (length != _ZERO))
        word = _ZERO - w  # all ones in a word
        h = (h * _B + np.uint64(f)) & word
        length = (length + _ONE_U) & word
    return k, h, length, chars + np.int64(w), special + np.int64(w & (flags >> 1))


@njit(nogil=True)
def _doc_tokens(data, i, end, fold, expansions, expansion_offsets, classes, ccc_ends, pairs, by_chars, out):
    """Unmixed token hashes of data[i:end] into out (room for end - i + 1), in one pass: decode, fold,
    words (or word characters when by_chars). Returns (tokens or -1 if out is too short, word
    characters, those of them in a no-space script, may its NFKC not be per character (_joins))."""
    start, k, h, length, chars, special, joins = i, 0, _ZERO, _ZERO, 0, 0, False
    while i < end:
        if data[i] < 0x80:  # spelled out rather than _next(): numba's code for this loop is 30% slower with it
            cp = np.int64(data[i])
            i += _ONE
        else:
            cp, width = _decode(data, i, end)
            if classes[cp] & JOINS and not joins:
                joins = _joins(data, start, i, cp, classes, ccc_ends, pairs)
            i += width
        f = np.int64(fold[cp])
        if f >= 0:
            k, h, length, chars, special = _token_step(f, classes, by_chars, out, k, h, length, chars, special)
            continue
        first, stop = expansion_offsets[-f - 1], expansion_offsets[-f]
        if k + (stop - first) + (end - i) + 1 > len(out):
            return -1, chars, special, joins
        for j in range(first, stop):
            k, h, length, chars, special = _token_step(np.int64(expansions[j]), classes, by_chars, out, k, h,
                                                       length, chars, special)
    if length:
        out[k] = h + length
        k += 1
    return k, chars, special, joins


@njit(inline="always")
def _doc_ngrams(tokens, count, n, out, k):
    """32-bit hashes of the n-grams of tokens[:count] into out[k:] (room for count + 1): tokens mixed
    by fmix64 (word: Horner of code points + length; character: code point + B), then the Horner
    polynomial of n token hashes, rolled along (the token leaving the window is taken out), fmix64,
    upper 32 bits. Fewer than n tokens: one shingle, the missing ones count 0; none: the hash 0."""
    if count == 0:
        out[k] = np.uint32(0)
        return k + 1
    for j in range(count):
        tokens[j] = _fmix64(tokens[j])
    b_n1, acc = _ONE_U, _ZERO
    for _ in range(n - 1):
        b_n1 *= _B  # the weight of the token leaving the window
    for j in range(min(n - 1, count)):
        acc = acc * _B + tokens[j]
    if count < n:
        for _ in range(n - count):
            acc *= _B
        out[k] = np.uint32(_fmix64(acc) >> _S32)
        return k + 1
    for j in range(n - 1, count):
        acc = acc * _B + tokens[j]
        out[k] = np.uint32(_fmix64(acc) >> _S32)
        k += 1
        acc -= tokens[j - n + 1] * b_n1
    return k


@njit(cache=True, nogil=True)
def shingle_hashes(data, offsets, fold, expansions, expansion_offsets, classes, ccc_ends, pairs, ngram, char_ngram):
    """(32-bit shingle hashes, shingle offsets, NFKC needed) of every doc: hashes of its word ngrams, or
    of its character char_ngrams (spaces left out) when more than NO_SPACE_SHARE of its word characters
    are in a no-space script (such a doc is read twice: the share is known at its end). The hashes
    are of the per-character folding: see fold_batch for the docs where NFKC is needed."""
    docs = len(offsets) - 1
    out = np.empty(len(data) // 3 + docs + 16, np.uint32)  # ~1 shingle per word; grown if short
    shingle_offsets = np.zeros(docs + 1, np.int64)
    needed = np.zeros(docs, np.bool_)
    tokens = np.empty(1024, np.uint64)  # one doc's, reused
    for d in range(docs):
        if len(tokens) < offsets[d + 1] - offsets[d] + 1:
            tokens = np.empty(2 * (offsets[d + 1] - offsets[d] + 1), np.uint64)
        by_chars = False
        while True:
            count, chars, special, joins = _doc_tokens(data, offsets[d], offsets[d + 1], fold, expansions,
                                                       expansion_offsets, classes, ccc_ends, pairs, by_chars, tokens)
            if count < 0:
                tokens = np.empty(2 * len(tokens), np.uint64)
            elif not by_chars and special > NO_SPACE_SHARE * max(chars, 1):
                by_chars = True
            else:
                break
        k = shingle_offsets[d]
        if k + count + 1 > len(out):
            out = np.concatenate((out, np.empty(len(out) + count + 1, np.uint32)))
        shingle_offsets[d + 1] = _doc_ngrams(tokens, count, char_ngram if by_chars else ngram, out, k)
        needed[d] = joins
    return out[: shingle_offsets[-1]], shingle_offsets, needed


@njit(cache=True, nogil=True)
def minhash(shingles, shingle_offsets, a, b):
    """(docs, num_perm) uint32 signatures: per doc, the minimum of a*fmix32(h) + b mod 2^32 over its
    shingles. Four shingles per pass over the signature row (vectorised by LLVM over the
    permutations): the row is loaded and stored a quarter as often, 2.2x faster than one at a time."""
    docs, num_perm = len(shingle_offsets) - 1, len(a)
    sig = np.empty((docs, num_perm), np.uint32)
    for d in range(docs):
        row = sig[d]
        row[:] = _MAX32
        i, end = shingle_offsets[d], shingle_offsets[d + 1]
        while i + 4 <= end:
            h1, h2, h3, h4 = _fmix32(shingles[i]), _fmix32(shingles[i + 1]), _fmix32(shingles[i + 2]), _fmix32(shingles[i + 3])
            for p in range(num_perm):
                ap, bp = a[p], b[p]
                row[p] = min(row[p], min(min(np.uint32(ap * h1 + bp), np.uint32(ap * h2 + bp)),
                                         min(np.uint32(ap * h3 + bp), np.uint32(ap * h4 + bp))))
            i += 4
        for j in range(i, end):
            h = _fmix32(shingles[j])
            for p in range(num_perm):
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
