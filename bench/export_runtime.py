"""CPU benchmark: our ONNX Runtime path vs torch eager, side by side in one process.

    python -m bench.export_runtime [--size full|tiny] [--rounds 5] [--threads 2] [--json OUT]

1. VersaMammo per four-view study (batch of 4 preprocessed views): the exported fp32 graph
   through ``node.inference.VersaMammoRunner`` vs the torch student's forward. ``full`` is the
   official-size EfficientNet-B5 at 512x512 (random weights: speed does not depend on them).
   Target: ORT >= 2x faster.
2. MammoRG tiny: report tokens per second through ``node.inference.MammoRGRunner`` (prefix graph
   + KV-cache decoder, greedy) vs ``MammoRG.generate`` (Hugging Face generate), same prompt, same
   number of new tokens, token-identical output checked.

Rounds alternate ORT and torch so machine noise hits both alike; the table shows medians and the
ratio. The result goes to bench/out/export-runtime.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "out" / "export-runtime.json"


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_versamammo(size: str, rounds: int, settings: Any) -> dict[str, Any]:
    from export.golden import phantom_images
    from export.package import finish_package
    from export.versamammo import export_versamammo
    from models.versamammo.checkpoint import build_student, config_for
    from models.versamammo.config import student_preprocess_config
    from node.inference.versamammo import VersaMammoRunner
    from models.package.manifest import read_manifest

    torch.manual_seed(0)
    student = build_student(config_for(size)).eval()
    images = phantom_images(student_preprocess_config(student.cfg), 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        fields = export_versamammo(student, root, images, ("fp32",))
        finish_package(root, "bench", "0", fields)
        runner = VersaMammoRunner(root, read_manifest(root), settings, precision="fp32")
        x = torch.from_numpy(images)
        with torch.no_grad():
            torch_fn = lambda: student(x)  # noqa: E731
            ort_fn = lambda: runner.run(images)  # noqa: E731
            torch_fn(), ort_fn()
            t_ort, t_torch = [], []
            for _ in range(rounds):
                t_ort.append(_seconds(ort_fn))
                t_torch.append(_seconds(torch_fn))
    o, t = statistics.median(t_ort), statistics.median(t_torch)
    return {"size": size, "backbone": student.cfg.student_backbone, "input": student.cfg.student_input,
            "ort_s_per_study": o, "torch_s_per_study": t, "speedup": t / o}


def bench_mammorg(rounds: int, settings: Any, new_tokens: int = 160) -> dict[str, Any]:
    from dataclasses import replace

    from export.golden import phantom_views
    from export.mammorg import export_mammorg
    from export.package import finish_package
    from models.mammorg.model import build_mammorg, set_bank
    from models.mammorg.config import config_for as mammorg_config
    from models.versamammo.checkpoint import build_student, config_for
    from models.versamammo.config import student_preprocess_config
    from node.inference.mammorg import GenerationSettings, MammoRGRunner
    from models.package.manifest import read_manifest
    from training.mammorg.tokenizer import train_bpe, with_terms

    corpus = ["FINDINGS:\nThe breasts are heterogeneously dense. No suspicious masses.\n\nIMPRESSION:\n"
              "Right breast: BI-RADS 1 - negative.\nLeft breast: BI-RADS 1 - negative."] * 5
    tokenizer, base_rows = with_terms(train_bpe(corpus, 500), "en")
    torch.manual_seed(0)
    cfg = replace(mammorg_config("tiny"), max_new_tokens=new_tokens, base_vocab_size=base_rows)
    model = build_mammorg(cfg, tokenizer, build_student(config_for("tiny")).eval())
    set_bank(model, torch.randn(64, model.cfg.embed_dim))
    # No EOS ever: every run decodes exactly new_tokens tokens.
    with torch.no_grad():
        model.lm.lm_head.weight[model.eos_id] = 0
    model.eval()
    views, present = phantom_views(student_preprocess_config(model.vision.cfg), 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        fields = export_mammorg(model, tokenizer, root, views, present)
        finish_package(root, "bench", "0", fields)
        runner = MammoRGRunner(root, read_manifest(root), settings)
        v, p = torch.from_numpy(views), torch.from_numpy(present)
        gen = GenerationSettings(max_new_tokens=new_tokens)
        with torch.no_grad():
            def torch_fn():
                return model.generate(model.encode_views(v, p), p, max_new_tokens=new_tokens, num_beams=1)
            ort_fn = lambda: runner.generate_ids(views, present, gen)  # noqa: E731
            same = torch_fn() == ort_fn()
            t_ort, t_torch = [], []
            for _ in range(rounds):
                t_ort.append(_seconds(ort_fn))
                t_torch.append(_seconds(torch_fn))
        n = len(ort_fn()[0])
    o, t = statistics.median(t_ort), statistics.median(t_torch)
    return {"new_tokens": n, "token_identical": same, "ort_tokens_per_s": n / o, "torch_tokens_per_s": n / t,
            "speedup": t / o}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from node.inference.session import SessionSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = SessionSettings(providers=("cpu",), intra_op_threads=args.threads)
    result = {"threads": args.threads, "rounds": args.rounds,
              "versamammo": bench_versamammo(args.size, args.rounds, settings),
              "mammorg_tiny": bench_mammorg(args.rounds, settings)}
    vm, rg = result["versamammo"], result["mammorg_tiny"]
    print(f"VersaMammo {vm['backbone']} @ {vm['input']}, one four-view study ({args.threads} threads):")
    print(f"  ONNX Runtime {vm['ort_s_per_study']:.3f} s   torch eager {vm['torch_s_per_study']:.3f} s   "
          f"speedup {vm['speedup']:.2f}x (target >= 2x)")
    print(f"MammoRG tiny, {rg['new_tokens']} new tokens, greedy (token-identical: {rg['token_identical']}):")
    print(f"  ONNX Runtime {rg['ort_tokens_per_s']:.0f} tokens/s   HF generate {rg['torch_tokens_per_s']:.0f} tokens/s"
          f"   speedup {rg['speedup']:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
