"""Proof that the tiny VersaMammo pipeline learns on phantoms (issue 3, section 7).

    python -m bench.versamammo_proof [--studies 600] [--ssl-iterations 600] [--distill-epochs 8] [--json OUT]
    python -m bench.versamammo_proof --device cuda --studies 4000 --distill-epochs 30   # a GPU machine
    python -m bench.versamammo_proof --lesion-patches 8      # stage 2 from the lesion-patch start

Runs ``training.versamammo.proof.run_proof`` on 2 CPU cores and prints, each beside its
baseline: the SSL loss (first vs last iterations), the density linear probe of the SSL teacher
vs a random-init teacher (all labels, and 8 labels per class), and the student's held-out
density accuracy and BI-RADS macro-F1 against the majority class, with the lesion AUC. The
default size takes about half an hour here; outputs go to bench/out/versamammo-proof/.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "versamammo-proof"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--ssl-iterations", type=int, default=600)
    parser.add_argument("--distill-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: train on the GPU in bf16")
    parser.add_argument("--lesion-patches", type=int, default=0, metavar="EPOCHS",
                        help="start stage 2 from EPOCHS of lesion-patch pretraining (model.student_init)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    import torch

    from training.versamammo.proof import run_proof

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = {} if args.device == "cpu" else {"run.device": args.device, "run.precision": "bf16"}
    if args.lesion_patches:
        device.update({"model.student_init": "lesion_patches", "patches.epochs": args.lesion_patches})
    result = run_proof(args.out / "run", args.out / "cache", studies=args.studies,
                       ssl_iterations=args.ssl_iterations, distill_epochs=args.distill_epochs, **device)
    result["seconds"] = round(time.perf_counter() - start, 1)
    s, p, st = result["ssl"], result["probe"], result["student"]
    print(f"SSL loss: first {s['loss_first']:.3f} -> last {s['loss_last']:.3f}")
    print(f"density probe, all labels: SSL {p['ssl']['all_labels']:.3f} vs random {p['random']['all_labels']:.3f} "
          f"(majority {p['majority']:.3f})")
    print(f"density probe, {p['shots']} labels/class: SSL {p['ssl']['few_shot']:.3f} +- {p['ssl']['few_shot_stderr']:.3f} "
          f"vs random {p['random']['few_shot']:.3f} +- {p['random']['few_shot_stderr']:.3f}")
    print(f"student on {st['test_images']} test images: density accuracy {st['density_accuracy']:.3f} "
          f"(majority {st['density_majority_accuracy']:.3f}); BI-RADS macro-F1 {st['birads_macro_f1']:.3f} "
          f"(majority {st['birads_majority_macro_f1']:.3f}); lesion AUC {st['lesion_auc']:.3f} (chance 0.5)")
    print(f"total {result['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
