"""Proof that tiny MammoRG learns on phantoms, and that its knowledge modules help (issue 4, section 6).

    python -m bench.mammorg_proof --student STUDENT [--studies 600] [--graph-ablation] [--json OUT]

``STUDENT`` is a tiny VersaMammo student (e.g. bench/out/versamammo-proof/run/distill/student_best.pt
from ``python -m bench.versamammo_proof``). Trains the three MammoRG stages with and without the
knowledge modules on the same studies and budgets (``training.mammorg.proof``), generates the
held-out test reports, parses them and prints BI-RADS and density F1 beside their majority-class
baselines, with finding/relation F1 and NLG. Outputs go to bench/out/mammorg-proof/.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "mammorg-proof"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: train on the GPU in bf16")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=None, help="preprocessed-image cache (default: under --out)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--graph-ablation", action="store_true",
                        help="also train with the complete schema graph and with no edges (issue 20)")
    args = parser.parse_args()

    import torch

    from training.mammorg.proof import KEYS, run_mammorg_proof

    torch.set_num_threads(args.threads)
    # The tiny config's epochs suit its 120 studies; at 600 the same number of iterations needs fewer.
    budget = {"mammorg.lm_warmup_epochs": 4, "align.epochs": 2, "sft.epochs": 4} if args.studies >= 400 else {}
    if args.device != "cpu":
        budget.update({"run.device": args.device, "run.precision": "bf16"})
    variants = ("with_knowledge", "without_knowledge") + (("complete_graph", "no_edges") if args.graph_ablation else ())
    result = run_mammorg_proof(args.out, args.cache or args.out / "cache", args.student, studies=args.studies,
                               variants=variants, **budget)
    rows = list(KEYS) + ["density_f1_majority", "birads_f1_majority", "seconds"]
    print(f"{'metric':24s} " + " ".join(f"{v:>18s}" for v in variants))
    for key in rows:
        print(f"{key:24s} " + " ".join(f"{result[v][key]:18.3f}" for v in variants))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
