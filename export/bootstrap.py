"""``mammo-node models bootstrap-demo``'s worker: train the tiny models on phantoms, export, package.

Runs in its own process (``python -m export.bootstrap --out DIR``) because it needs torch and the
node never imports torch. Every stage writes resumable checkpoints under ``DIR/train``, so an
interrupted bootstrap continues where it stopped, and a finished one is not redone: the packages
in ``DIR/packages`` are reused. The result is two demonstration packages whose manifests say
plainly that they were trained on synthetic data and are not for clinical use, and record the
command, the recipe, the full configurations (seeds included), the phantom version and the
held-out metrics.

Recipe 3 (``RECIPE``): phantom version 2; VersaMammo stage 1 (short SSL: the tiny teacher only
feeds the relational distillation), the lesion-patch start (``model.student_init =
"lesion_patches"``, training/versamammo/patches), stage 2 with the lesion map trained from the
phantoms' boxes (three warm-up epochs of the map alone, then every term with the backbone at 0.1
of the learning rate), heads that pool the grid by the map (``student_head_pool = "avg_lesion"``)
and the head refit on the frozen student (``distill.head_refit``), then MammoRG's three stages on
the frozen student, and the per-field choice of reporting source on the validation split
(training/mammorg/reporting.py). Recipe 3.2.0 (``DEMO_VERSION``) also trains MammoRG on 1560 more
phantom studies (training split only; 3.1.0: 840). About two hours on 2 CPU cores (VersaMammo 43
min, MammoRG 110 min measured), which is why the repository ships the packages this recipe made
(deploy/demo-models/, ``--ship``):
``bootstrap-demo`` installs those without torch, and ``--retrain`` reproduces them. ``--quick`` is
a minutes-long recipe for tests of this code path only. What each recipe gave: docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from models.package.demo import DEMO_VERSION, NAMES

# Bump models/package/demo.py's DEMO_VERSION when RECIPE changes: the packages' version and cache key.
RECIPE: dict[str, Any] = {
    "studies": 600, "ssl_iterations": 150, "distill_epochs": 10,
    "versamammo": {"model.student_init": "lesion_patches", "patches.epochs": 8, "patches.samples_per_epoch": 4096,
                   "model.student_head_pool": "avg_lesion", "model.student_lesion_map": True,
                   "distill.lesion_map_weight": 10.0, "distill.lesion_map_warmup_epochs": 3,
                   "distill.backbone_lr_mult": 0.1, "distill.head_refit": True},
    # 3.0.0 was trained before the knowledge-graph edges (models/mammorg/edges.py) existed, with every
    # schema pair linked: pinned, so --retrain reproduces it (its manifest's recipe predates the key).
    # 3.1.0: MammoRG also learns from 840 more phantom studies (seed 0, indices 600..1439); 3.2.0 from
    # 1560 (indices 600..2159), training split only, so its validation and test studies are the
    # student's (docs/mammorg.md, "More training reports").
    "mammorg": {"knowledge.epochs": 6, "align.epochs": 4, "sft.epochs": 12, "mammorg.lm_warmup_epochs": 12,
                "mammorg.graph_edges": "complete", "data.phantom_extra_train_studies": 1560},
}
# Minutes on 2 cores: proves the code path (tests), not the models.
QUICK_RECIPE: dict[str, Any] = {
    "studies": 40, "ssl_iterations": 30, "distill_epochs": 2,
    "versamammo": {"model.student_init": "lesion_patches", "patches.epochs": 1, "patches.samples_per_epoch": 256,
                   "patches.val_samples": 64, "model.student_lesion_map": True, "distill.lesion_map_weight": 1.0},
    "mammorg": {"knowledge.epochs": 1, "align.epochs": 1, "sft.epochs": 2, "mammorg.lm_warmup_epochs": 2,
                "data.phantom_extra_train_studies": 8},
}


def mammorg_data(data: str, recipe: dict[str, Any]) -> str:
    """The MammoRG manifest's data line: the student's studies plus its extra training studies."""
    extra = recipe["mammorg"].get("data.phantom_extra_train_studies", 0)
    if not extra:
        return data
    first = recipe["studies"]
    return (f"{data}; MammoRG also on {extra} more phantom studies of the same seed (indices {first}.."
            f"{first + extra - 1}), training split only")


def golden_images(side: int) -> int:
    """How many golden images the VersaMammo package carries: 4 at 256 px, fewer for larger inputs
    (1 at 512: the golden file holds each image and its 1280-channel feature grid, and the shipped
    demo folder must stay under 50 MB)."""
    return max(1, 4 * 256 * 256 // (side * side))


def package_dir(out: Path, kind: str) -> Path:
    return out / "packages" / f"{NAMES[kind]}@{DEMO_VERSION}"


def _stage(message: str) -> None:
    print(f"[bootstrap-demo] {message}", file=sys.stderr, flush=True)


def build(out: Path, threads: int | None = None, recipe: dict[str, Any] | None = None,
          command: list[str] | None = None) -> dict[str, Path]:
    """Train (or resume), export and package both demo models under ``out``; returns their directories."""
    import torch

    from phantoms.study import PHANTOM_VERSION

    from export.golden import phantom_images, phantom_views
    from export.mammorg import export_mammorg
    from export.package import finish_package
    from export.versamammo import export_versamammo
    from models.mammorg.model import load_mammorg
    from models.versamammo.checkpoint import load_checkpoint
    from models.versamammo.config import student_preprocess_config
    from training.mammorg.evaluate import run_mammorg_eval
    from training.mammorg.proof import KEYS, proof_config as mammorg_config
    from training.versamammo.proof import proof_config as versamammo_config, student_metrics

    recipe = recipe or RECIPE
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    done = {kind: package_dir(out, kind) for kind in NAMES}
    if all((d / "manifest.json").is_file() for d in done.values()):
        _stage("cached packages found; nothing to train")
        return done
    train, cache = out / "train", out / "cache"
    start = time.perf_counter()

    # --- VersaMammo: SSL teacher, then the distilled student ---------------------------------
    from training.versamammo.distill.train import run_distill
    from training.versamammo.ssl.train import run_ssl

    vcfg = versamammo_config(train / "versamammo", cache, recipe["studies"], recipe["ssl_iterations"],
                             recipe["distill_epochs"], **recipe["versamammo"])
    _stage("VersaMammo stage 1: self-supervised teacher")
    run_ssl(vcfg)
    if vcfg.model.student_init == "lesion_patches":
        from training.versamammo.patches.train import run_patches

        _stage("VersaMammo: lesion-patch start for the student")
        run_patches(vcfg)
    _stage("VersaMammo stage 2: distilling the student")
    student_path = run_distill(vcfg)
    vmetrics = {k: v for k, v in student_metrics(vcfg).items() if k != "report"}
    student = load_checkpoint(student_path, kind="student")

    # --- MammoRG: knowledge, alignment, instruction tuning ------------------------------------
    from training.mammorg.knowledge import run_knowledge
    from training.mammorg.lm_stages import run_lm_stage

    mcfg = mammorg_config(train / "mammorg", cache, student_path, recipe["studies"], True, **recipe["mammorg"])
    _stage("MammoRG stage 1: knowledge modules")
    run_knowledge(mcfg)
    _stage("MammoRG stage 2a: alignment")
    run_lm_stage(mcfg, "align")
    _stage("MammoRG stage 2b: instruction tuning")
    model_dir = run_lm_stage(mcfg, "sft")
    _stage("MammoRG: scoring generated reports on the held-out phantoms")
    report = run_mammorg_eval(mcfg)
    rmetrics = {k: report["metrics"][k]["value"] for k in KEYS}
    rmetrics.update({k: v["value"] for k, v in report["baselines"].items()})
    from training.mammorg.reporting import reporting_sources

    _stage("choosing the reported source per field on the validation split")
    reporting = reporting_sources(mcfg, student_path, model_dir)

    # --- export and package --------------------------------------------------------------------
    provenance = {"data": f"{recipe['studies']} synthetic phantom studies (phantoms.study, version "
                          f"{PHANTOM_VERSION}), 60/20/20 train/val/test", "recipe": recipe,
                  "phantom_version": PHANTOM_VERSION,
                  "command": command or ["python", "-m", "export.bootstrap", "--out", str(out)]}
    staging = out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    _stage("exporting VersaMammo (fp32 and fp16) with parity checks")
    pre = student_preprocess_config(student.cfg)
    marks: dict[str, Any] = {}
    if student.lesion_head is not None:
        from export.mark_threshold import mark_threshold_on
        from training.data.records import load_records

        _stage("choosing the CAD mark threshold on the validation split")
        marks = mark_threshold_on(student, [r for r in load_records(vcfg.data) if r.split == "val"], pre)
    fields = export_versamammo(student, staging / "versamammo", phantom_images(pre, golden_images(pre.size[0])),
                               **({"mark_threshold": marks["mark_threshold"]} if marks else {}))
    if marks:
        fields["localization"]["operating_point"] = marks["operating_point"]
    vprov = dict(provenance, checkpoint=str(student_path), config=vcfg.model_dump(mode="json"))
    finish_package(staging / "versamammo", NAMES["versamammo"], DEMO_VERSION, fields, training=vprov,
                   metrics={"test_split": vmetrics}, demonstration=True)
    _stage("exporting MammoRG (prefix + KV-cache decoder) with greedy-generation parity")
    model, tokenizer = load_mammorg(model_dir)
    views, present = phantom_views(pre, 2)
    fields = export_mammorg(model, tokenizer, staging / "mammorg", views, present)
    mprov = dict(provenance, data=mammorg_data(provenance["data"], recipe), model_dir=str(model_dir),
                 config=mcfg.model_dump(mode="json"))
    fields["reporting"] = reporting
    finish_package(staging / "mammorg", NAMES["mammorg"], DEMO_VERSION, fields, training=mprov,
                   metrics={"test_split": rmetrics}, demonstration=True)
    for kind in NAMES:
        done[kind].parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(done[kind], ignore_errors=True)
        (staging / kind).replace(done[kind])
    shutil.rmtree(staging, ignore_errors=True)
    _stage(f"done in {time.perf_counter() - start:.0f} s")
    return done


def ship(done: dict[str, Path], target: Path) -> dict[str, Path]:
    """Copy the built packages into ``target`` (deploy/demo-models/), replacing every other version
    of the demo packages there, so the repository holds exactly one demo set."""
    target.mkdir(parents=True, exist_ok=True)
    shipped = {}
    for kind, source in done.items():
        for old in target.glob(f"{NAMES[kind]}@*"):
            shutil.rmtree(old)
        shipped[kind] = target / source.name
        shutil.copytree(source, shipped[kind])
    return shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="cache directory (training runs and packages)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a minutes-long recipe that tests the code path only")
    parser.add_argument("--ship", type=Path, default=None, metavar="DIR",
                        help="also copy the packages into DIR (maintainers: deploy/demo-models)")
    args = parser.parse_args(argv)
    command = ["python", "-m", "export.bootstrap", *(argv if argv is not None else sys.argv[1:])]
    done = build(args.out, args.threads, QUICK_RECIPE if args.quick else RECIPE, command)
    if args.ship is not None:
        done = ship(done, args.ship)
    print(json.dumps({kind: str(path) for kind, path in done.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
