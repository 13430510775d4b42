"""MammoRG's tokenizer: a base tokenizer plus the lexicon's terms as atomic tokens.

The base is the language model's own tokenizer (``mammorg.tokenizer_path``, a local directory)
or, for CPU runs and tests, a byte-level BPE trained here with ``tokenizers`` on the training
reports. The lexicon's MammoRG terms are then added as ordinary (non-special) added tokens, so
"BI-RADS 4A" or "heterogeneously dense" is one token wherever it appears; added tokens are
matched longest first before the BPE runs, which does what the official code's
space-insertion around terms did. Both are saved: ``tokenizer-base/`` (graph-node and bank
embeddings are computed from the base pieces, whose embeddings are trained) and ``tokenizer/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from models.report import lexicon

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_bpe(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` (lossless round trip)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL)


def load_base(path: Path) -> Any:
    """A local tokenizer directory (never downloaded); pad falls back to unk, then eos."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(path), local_files_only=True, use_fast=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def term_strings(language: str) -> list[str]:
    """The atomic terms for ``language`` ("en", "zh" or "all")."""
    return lexicon.mammorg_terms(None if language == "all" else language)


def with_terms(base: Any, language: str) -> tuple[Any, int]:
    """(a copy of ``base`` with the lexicon terms added, number of base rows)."""
    import copy

    tok = copy.deepcopy(base)
    base_rows = len(tok)
    tok.add_tokens(term_strings(language))
    return tok, base_rows


def build_tokenizers(out_dir: Path, corpus: list[str], base_path: Path | None, vocab_size: int,
                     language: str) -> tuple[Any, Any, int]:
    """(base, full, base_rows), saved under ``out_dir/tokenizer-base`` and ``out_dir/tokenizer``."""
    base = load_base(base_path) if base_path is not None else train_bpe(corpus, vocab_size)
    full, base_rows = with_terms(base, language)
    base.save_pretrained(out_dir / "tokenizer-base")
    full.save_pretrained(out_dir / "tokenizer")
    return base, full, base_rows
