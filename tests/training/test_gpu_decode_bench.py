"""The GPU decode benchmark script runs (its --tiny CPU mode), so it is ready when a GPU is lent."""
from __future__ import annotations

import json
import sys

from bench import gpu_mammorg_decode


def test_decode_bench_tiny_mode_reports_both_cache_kinds(tmp_path, monkeypatch):
    out = tmp_path / "decode.json"
    monkeypatch.setattr(sys, "argv", ["gpu_mammorg_decode", "--tiny", "--new-tokens", "8", "--json", str(out)])
    gpu_mammorg_decode.main()
    result = json.loads(out.read_text())
    assert result["context_tokens"] == gpu_mammorg_decode.PROMPT_TOKENS + gpu_mammorg_decode.PREFIX_TOKENS
    for key in ("plain_generate", "static_cache"):
        assert result[key]["tokens"] == 8 and result[key]["tokens_per_s"] > 0
