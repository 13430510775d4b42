"""Text-overlap metrics for generated reports: corpus BLEU-n and sentence-level ROUGE-L.

Written from the published definitions (numpy only, no sacrebleu / rouge_score):

* BLEU (Papineni et al. 2002), corpus level: clipped ("modified") n-gram precisions p_1..p_N
  from counts summed over the whole corpus, their geometric mean with uniform weights 1/N,
  times the brevity penalty BP = 1 if c > r else exp(1 - r/c), where c and r are the total
  prediction and reference lengths. No smoothing: if some order has no match the score is 0
  (sacrebleu's default ``smooth_method='exp'`` would give a small positive number there; the
  two agree whenever every order has at least one match in the corpus). Scale 0-100.
* ROUGE-L (Lin 2004), per report: LCS-based precision P = LCS/|pred|, recall R = LCS/|ref|,
  F = 2PR/(P+R) (beta = 1, what rouge_score reports as ``fmeasure``); 0 when either side has
  no tokens. Averaged over reports. Scale 0-1.

Tokenisation (:func:`tokenize`): lower-case; every CJK character (Han ideographs with their
extensions and compatibility block, kana, Hangul syllables and jamo, bopomofo) is its own
token; other runs of letters/digits form one token; every other non-space character
(punctuation, symbols, full-width punctuation) is a token of its own; whitespace only
separates. Nothing is dropped. (rouge_score's default tokenizer keeps only [a-z0-9], so on
Chinese reports it scores the handful of Latin words; sacrebleu's 13a tokenizer leaves runs
of Chinese characters as single tokens.)
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

MAX_ORDER = 4

_CJK = (
    "\u2e80-\u2fdf"  # CJK radicals supplement, Kangxi radicals
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"  # iteration mark, ideographic zero, Hangzhou numerals
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3100-\u312f\u3131-\u318f\u31a0-\u31bf"  # bopomofo, Hangul compatibility jamo, bopomofo ext.
    "\u31c0-\u31ef\u31f0-\u31ff"  # CJK strokes, katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (ext. A and base)
    "\u1100-\u11ff\uac00-\ud7af"  # Hangul jamo and syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003ffff"  # CJK unified ideographs ext. B-H and compatibility supplement
)
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|\S")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens: single CJK characters, letter/digit runs, single other symbols.

    >>> tokenize("BI-RADS 4A，右乳肿块.")
    ['bi', '-', 'rads', '4a', '，', '右', '乳', '肿', '块', '.']
    """
    return _TOKEN.findall(text.lower())


# --------------------------------------------------------------------------------------- BLEU

def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_statistics(preds: Sequence[str], refs: Sequence[str], max_order: int = MAX_ORDER) -> np.ndarray:
    """Per-pair sufficient statistics, shape (N, 2 * max_order + 2).

    Columns: clipped matches for orders 1..max_order, prediction n-gram totals for orders
    1..max_order, prediction length, reference length. Summing rows over any subset of pairs
    and passing the sum to :func:`bleu_from_statistics` gives that subset's corpus BLEU.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    stats = np.zeros((len(preds), 2 * max_order + 2), dtype=np.int64)
    for row, (pred, ref) in enumerate(zip(preds, refs)):
        p_tok, r_tok = tokenize(pred), tokenize(ref)
        for n in range(1, max_order + 1):
            p_grams, r_grams = _ngrams(p_tok, n), _ngrams(r_tok, n)
            stats[row, n - 1] = sum(min(c, r_grams[g]) for g, c in p_grams.items())
            stats[row, max_order + n - 1] = max(len(p_tok) - n + 1, 0)
        stats[row, 2 * max_order] = len(p_tok)
        stats[row, 2 * max_order + 1] = len(r_tok)
    return stats


def bleu_from_statistics(totals: np.ndarray, n: int) -> float:
    """Corpus BLEU-n (0-100) from summed :func:`bleu_statistics` columns (1-D)."""
    totals = np.asarray(totals)
    max_order = (len(totals) - 2) // 2
    if not 1 <= n <= max_order:
        raise ValueError(f"BLEU order {n} not in 1..{max_order}")
    matches, counts = totals[:n], totals[max_order:max_order + n]
    hyp_len, ref_len = int(totals[2 * max_order]), int(totals[2 * max_order + 1])
    if hyp_len == 0 or np.any(matches == 0):
        return 0.0
    log_precision = float(np.mean(np.log(matches / counts)))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def bleu(preds: Sequence[str], refs: Sequence[str], n: int = 4) -> float:
    """Corpus BLEU-n on a 0-100 scale, one reference per prediction, no smoothing."""
    return bleu_from_statistics(bleu_statistics(preds, refs, max(n, 1)).sum(axis=0), n)


# ------------------------------------------------------------------------------------ ROUGE-L

def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Allison-Dix/Hyyro recurrence).

    Bit i of ``v`` is 0 where a[i] is matched in the current LCS frontier; each symbol of ``b``
    updates every position of ``a`` at once with one add and a few bit operations.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_pair(pred: str, ref: str) -> tuple[float, float, float]:
    """(precision, recall, F) of ROUGE-L for one prediction against one reference."""
    p_tok, r_tok = tokenize(pred), tokenize(ref)
    if not p_tok or not r_tok:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(p_tok, r_tok)
    precision, recall = lcs / len(p_tok), lcs / len(r_tok)
    if precision + recall == 0:
        return precision, recall, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


def rouge_l_scores(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-pair ROUGE-L F-measure (0-1)."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    return np.array([rouge_l_pair(p, r)[2] for p, r in zip(preds, refs)], dtype=np.float64)


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean per-report ROUGE-L F-measure, 0-1 (NaN for no pairs)."""
    scores = rouge_l_scores(preds, refs)
    return float(scores.mean()) if len(scores) else float("nan")
