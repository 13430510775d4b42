"""GPU benchmark of MammoRG's report decoding with a Vicuna-7B-sized Llama (issue 4, section 7).

    python -m bench.gpu_mammorg_decode [--new-tokens 256] [--json OUT] [--tiny]

A LlamaForCausalLM with Vicuna-7B's shape (32 layers, hidden 4096, 32 heads, vocab 32000 + the
lexicon's terms), random weights in bf16, is given MammoRG's prompt embeddings: a short text
prompt around the 1029-token visual prefix (random soft tokens at the embedding scale). It then
decodes greedily, and we time:

1. plain ``generate`` (dynamic KV cache),
2. ``generate`` with a static KV cache (``cache_implementation="static"``), eager,
3. the same, with the decoding step compiled (``torch.compile``, "reduce-overhead"),

reporting new tokens/s at batch 1 (and the prefill time), and the memory-bandwidth bound: weight
bytes / HBM bandwidth per token. Reference on an H200 (issue text): 36 tokens/s plain, 125 static,
314 at the bandwidth bound. ``--tiny`` runs a 2-layer model on the CPU to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

VICUNA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "vocab_size": 32070}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "vocab_size": 1000}
PREFIX_TOKENS = 1029
PROMPT_TOKENS = 60  # vicuna_v1 system prompt + instruction around <image>
# HBM bandwidth (bytes/s) for the bandwidth bound; looked up by device name.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False, eos_token_id=2, pad_token_id=0))
    return model.to(dtype).eval()


def decode_rate(model: Any, context: torch.Tensor, new_tokens: int, device: torch.device, **kwargs: Any) -> dict[str, float]:
    """Tokens/s of greedy decoding after ``context``; EOS is disabled so every run makes ``new_tokens``."""
    attention = torch.ones(context.shape[:2], dtype=torch.long, device=device)
    common = dict(inputs_embeds=context, attention_mask=attention, do_sample=False, eos_token_id=None,
                  pad_token_id=0, **kwargs)
    model.generate(**common, max_new_tokens=8)      # warm-up (and compilation)
    _sync(device)
    start = time.perf_counter()
    model.generate(**common, max_new_tokens=1)
    _sync(device)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(**common, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    _sync(device)
    total = time.perf_counter() - start
    made = out.shape[1]
    return {"tokens": made, "seconds": total, "prefill_s": prefill,
            "tokens_per_s": (made - 1) / max(total - prefill, 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="2-layer model on the CPU (checks the script)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --tiny to check the script on the CPU")
    shape = TINY if args.tiny else VICUNA_7B
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = build(shape, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    scale = model.get_input_embeddings().weight.float().std().item()
    context = (torch.randn(1, PROMPT_TOKENS + PREFIX_TOKENS, shape["hidden_size"], generator=g) * scale).to(device, dtype)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                              "shape": shape, "dtype": str(dtype), "context_tokens": context.shape[1],
                              "new_tokens": args.new_tokens}
    result["plain_generate"] = decode_rate(model, context, args.new_tokens, device)
    result["static_cache"] = decode_rate(model, context, args.new_tokens, device, cache_implementation="static")
    if not args.no_compile and device.type == "cuda":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        result["static_cache_compiled"] = decode_rate(model, context, args.new_tokens, device,
                                                      cache_implementation="static")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result["weight_bytes"] = weight_bytes
    bandwidth = next((bw for name, bw in BANDWIDTH.items() if name in result["device"]), None)
    if bandwidth:
        result["bandwidth_bound_tokens_per_s"] = bandwidth / weight_bytes
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for key in ("plain_generate", "static_cache", "static_cache_compiled"):
        if key in result:
            r = result[key]
            print(f"{key:22s} {r['tokens_per_s']:8.1f} tokens/s (prefill {r['prefill_s'] * 1000:.0f} ms)")
    if "bandwidth_bound_tokens_per_s" in result:
        print(f"{'bandwidth bound':22s} {result['bandwidth_bound_tokens_per_s']:8.1f} tokens/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
