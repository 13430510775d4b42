"""BLEU, ROUGE-L and tokenisation against values computed by hand."""
from __future__ import annotations

import math
import random
import re

import pytest

from training.eval.nlg import bleu, bleu_statistics, lcs_length, rouge_l, rouge_l_pair, tokenize


def test_tokenize_latin_cjk_and_punctuation() -> None:
    assert tokenize("BI-RADS 4A，右乳肿块.") == ["bi", "-", "rads", "4a", "，", "右", "乳", "肿", "块", "."]
    assert tokenize("Findings:Mixed中文text  1.5cm") == [
        "findings", ":", "mixed", "中", "文", "text", "1", ".", "5cm"]
    assert tokenize("  \n\t ") == []


def test_identical_texts_score_maximum() -> None:
    texts = ["FINDINGS: The breasts are heterogeneously dense. IMPRESSION: BI-RADS 1.", "双乳腺体呈不均匀致密型。"]
    assert bleu(texts, texts, 1) == pytest.approx(100.0)
    assert bleu(texts, texts, 4) == pytest.approx(100.0)
    assert rouge_l(texts, texts) == pytest.approx(1.0)


def test_clipping() -> None:
    # Papineni et al.'s example: "the" occurs at most twice in the reference, so 2/7; c=7 > r=6, BP=1.
    pred, ref = "the the the the the the the", "the cat is on the mat"
    assert bleu([pred], [ref], 1) == pytest.approx(100 * 2 / 7)


def test_brevity_penalty() -> None:
    # p1 = 2/2 but c=2 < r=6: BP = exp(1 - 6/2); BLEU-4 has no 3-grams at all, so 0 (no smoothing).
    assert bleu(["the cat"], ["the cat is on the mat"], 1) == pytest.approx(100 * math.exp(-2))
    assert bleu(["the cat"], ["the cat is on the mat"], 4) == 0.0
    # a longer prediction gets no bonus: BP = 1
    assert bleu(["the cat is on the mat today"], ["the cat is on the mat"], 1) == pytest.approx(100 * 6 / 7)


def test_corpus_bleu_pools_counts_over_reports() -> None:
    preds, refs = ["a b c d e", "x y z"], ["a b c d f", "x y w v"]
    # matches/totals per order: 6/8, 4/6, 2/4, 1/2 (second pair has no 4-gram); c=8, r=9
    brevity = math.exp(1 - 9 / 8)
    expected4 = 100 * brevity * (6 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25
    assert bleu(preds, refs, 4) == pytest.approx(expected4)  # about 52.47
    assert bleu(preds, refs, 1) == pytest.approx(100 * brevity * 6 / 8)
    # the second pair alone has no 3-gram match: a mean of sentence BLEUs would differ
    assert bleu(preds[1:], refs[1:], 4) == 0.0
    stats = bleu_statistics(preds, refs)
    assert stats.sum(axis=0).tolist() == [6, 4, 2, 1, 8, 6, 4, 2, 8, 9]


def test_chinese_characters_are_scored() -> None:
    pred, ref = "右乳未见肿块", "右乳可见肿块"
    # a [a-z0-9]-only tokenizer (rouge_score's default) sees nothing here, hence would score 0
    assert re.findall(r"[a-z0-9]+", pred.lower()) == [] and re.findall(r"[a-z0-9]+", ref.lower()) == []
    # characters: unigram 5/6, LCS 右乳见肿块 = 5 of 6 on both sides
    assert bleu([pred], [ref], 1) == pytest.approx(100 * 5 / 6)
    assert bleu([pred], [ref], 4) == 0.0  # 4-grams: 0/3
    assert rouge_l([pred], [ref]) == pytest.approx(5 / 6)
    # bigrams 3/5, trigrams 1/4 with a longer shared tail
    assert bleu(["右乳未见肿块影"], ["右乳可见肿块影"], 4) == pytest.approx(
        100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_rouge_l_by_hand() -> None:
    assert rouge_l_pair("a b c d e f", "a c f") == pytest.approx((0.5, 1.0, 2 * 0.5 / 1.5))
    # mean over reports, an empty prediction scores 0
    assert rouge_l(["a b c d e f", "same text", ""], ["a c f", "same text", "x"]) == pytest.approx(
        (2 / 3 + 1 + 0) / 3)
    # punctuation is a token: "mass." vs "mass" share 1 of 2 / 1 of 1
    assert rouge_l_pair("mass.", "mass") == pytest.approx((0.5, 1.0, 2 / 3))


def _lcs_dp(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(0)
    for _ in range(400):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
