"""``mammo-export``: turn trained checkpoints into model packages an admin can install.

    mammo-export versamammo CHECKPOINT --out DIR --name NAME --version V [--tar] [--no-fp16] [--metrics FILE]
    mammo-export mammorg MODEL_DIR --out DIR --name NAME --version V [--tar] [--metrics FILE]
    mammo-export tensorrt PACKAGE [--cache DIR | --config NODE_TOML]

Each export checks parity against torch before it writes the manifest (exit 1 with the reason
when a graph does not reproduce the model). Golden vectors are made from phantom studies.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Export trained models to ONNX model packages.", no_args_is_help=True,
                  add_completion=False)
console = Console(stderr=True, soft_wrap=True)  # messages name paths: never break them


def _prepare(out: Path, force: bool) -> None:
    if out.exists() or out.with_name(out.name + ".tar").exists():
        if not force:
            console.print(f"[red]{out} exists; use --force to replace it[/red]")
            raise typer.Exit(2)
        shutil.rmtree(out, ignore_errors=True)
        out.with_name(out.name + ".tar").unlink(missing_ok=True)


MetricsOption = typer.Option(None, "--metrics", help="JSON of a held-out evaluation to record in the manifest "
                             "(the output of `mammo-train versamammo-eval --json`, or mammorg-eval's "
                             "metrics-<split>.json).")


def _read_metrics_file(path: Optional[Path]) -> Optional[dict]:
    """The ``--metrics`` file as a JSON object; a clear exit 2 before any export work if it is not one."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        console.print(f"[red]--metrics {path}: not a readable JSON file ({exc})[/red]")
        raise typer.Exit(2)
    if not isinstance(data, dict):
        console.print(f"[red]--metrics {path}: expected a JSON object, got {type(data).__name__}[/red]")
        raise typer.Exit(2)
    return data


def package_metrics(extra: dict, evaluation: Optional[dict]) -> dict:
    """The manifest's ``metrics``: what training measured on held-out data, and an evaluation if given.

    Training records its model-selection scores, not a ``metrics`` key: the VersaMammo student
    checkpoint has ``val`` (the validation scores it was selected on), a MammoRG model ``best``
    (its best validation record). They go under ``validation``; the ``--metrics`` file under
    ``evaluation``. A ``metrics`` mapping already in the checkpoint is kept as it is.
    """
    metrics = dict(extra.get("metrics") or {})
    best = extra.get("best")
    if isinstance(extra.get("val"), dict):
        metrics.setdefault("validation", extra["val"])
    elif isinstance(best, dict) and best.get("score") not in (None, -1.0):
        metrics.setdefault("validation", best)
    if "validation" in metrics and extra.get("selected_on"):
        metrics.setdefault("selected_on", extra["selected_on"])
    if evaluation is not None:
        metrics["evaluation"] = evaluation
    return metrics


def engine_cache_dir(cache: Optional[Path], config: Optional[Path]) -> Path:
    """Where TensorRT engines go: ``--cache``, else the directory the node itself reads them from.

    Engines built anywhere else (the old default was ``var/trt-cache`` under the current
    directory) would be rebuilt by the node at its first start, which takes minutes per graph.
    """
    if cache is not None:
        return cache
    from node.config import ConfigError, load_settings

    try:
        return load_settings(config).trt_cache_dir
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)


def _report(path: Path, manifest, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"ok": True, "package": str(path), "ref": manifest.ref,
                                     "files": sorted(manifest.files)}, indent=2) + "\n")
    else:
        console.print(f"[green]wrote {manifest.ref} to {path}[/green] (install: mammo-node models install {path})")


@app.command()
def versamammo(checkpoint: Path = typer.Argument(..., exists=True, help="Student checkpoint (ours or official)."),
               out: Path = typer.Option(..., "--out", help="Package directory to create."),
               name: str = typer.Option("versamammo", "--name"), version: str = typer.Option(..., "--version"),
               fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Also export the fp16 graph."),
               tar: bool = typer.Option(False, "--tar", help="Write DIR.tar instead of a directory."),
               force: bool = typer.Option(False, "--force"), as_json: bool = typer.Option(False, "--json"),
               metrics_file: Optional[Path] = MetricsOption) -> None:
    """VersaMammo student -> package (fp32 and fp16 graphs, golden vectors)."""
    from export.golden import phantom_images
    from export.package import finish_package
    from export.versamammo import ParityError, export_versamammo
    from models.versamammo.checkpoint import OfficialCheckpointError, load_checkpoint, load_official_student, read_checkpoint
    from models.versamammo.config import student_preprocess_config

    evaluation = _read_metrics_file(metrics_file)
    _prepare(out, force)
    extra = {}
    try:
        payload = read_checkpoint(checkpoint)
        student = load_checkpoint(checkpoint, kind="student")
        extra = payload.get("extra", {})
    except ValueError:
        try:
            student = load_official_student(checkpoint)
        except OfficialCheckpointError as exc:
            console.print(f"[red]{checkpoint}: neither our student checkpoint nor an official one ({exc})[/red]")
            raise typer.Exit(2)
    try:
        fields = export_versamammo(student, out, phantom_images(student_preprocess_config(student.cfg), 4),
                                   ("fp32", "fp16") if fp16 else ("fp32",))
    except ParityError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    path, manifest = finish_package(out, name, version, fields, training={"checkpoint": str(checkpoint), **extra},
                                    metrics=package_metrics(extra, evaluation), tar=tar)
    _report(path, manifest, as_json)


@app.command()
def mammorg(model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A saved MammoRG (sft/model)."),
            out: Path = typer.Option(..., "--out", help="Package directory to create."),
            name: str = typer.Option("mammorg", "--name"), version: str = typer.Option(..., "--version"),
            tar: bool = typer.Option(False, "--tar"), force: bool = typer.Option(False, "--force"),
            as_json: bool = typer.Option(False, "--json"), metrics_file: Optional[Path] = MetricsOption) -> None:
    """MammoRG -> package (prefix graph, KV-cache decoder, embeddings, tokenizer, golden vectors)."""
    from export.golden import phantom_views
    from export.mammorg import export_mammorg
    from export.package import finish_package
    from export.versamammo import ParityError
    from models.mammorg.model import load_mammorg, read_meta
    from models.mammorg.config import preprocess_config

    evaluation = _read_metrics_file(metrics_file)
    _prepare(out, force)
    model, tokenizer = load_mammorg(model_dir)
    if model.vision is None:
        console.print(f"[red]{model_dir} holds no vision student; export needs the full model[/red]")
        raise typer.Exit(2)
    views, present = phantom_views(preprocess_config(model.cfg, model.vision.cfg), 2)
    try:
        fields = export_mammorg(model, tokenizer, out, views, present)
    except ParityError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    extra = read_meta(model_dir).get("extra", {})
    path, manifest = finish_package(out, name, version, fields, training={"model_dir": str(model_dir), **extra},
                                    metrics=package_metrics(extra, evaluation), tar=tar)
    _report(path, manifest, as_json)


@app.command()
def tensorrt(package: Path = typer.Argument(..., exists=True, help="An exported package directory."),
             cache: Optional[Path] = typer.Option(None, "--cache", help="Engine cache directory (default: the "
                                                  "node's DATA_DIR/trt-cache, from --config and the environment)."),
             config: Optional[Path] = typer.Option(None, "--config", "-c", help="The node's TOML configuration."),
             fp16: bool = typer.Option(True, "--fp16/--no-fp16")) -> None:
    """Build TensorRT engines for a package's graphs through ONNX Runtime's TensorRT provider."""
    from node.inference.session import SessionSettings, available_providers, gpu_driver_present, open_session
    from models.package.manifest import read_manifest

    why = None
    if "TensorrtExecutionProvider" not in available_providers():
        why = f"this onnxruntime build offers only {', '.join(available_providers())}"
    elif not gpu_driver_present():
        why = "there is no NVIDIA GPU driver on this machine"
    if why:
        console.print(f"[red]TensorRT is not available here: {why}. Build engines on the GPU machine that will "
                      "run them, with TensorRT and onnxruntime-gpu installed (docs/model-packages.md, "
                      "'TensorRT'); the package itself runs unchanged on CUDA or CPU.[/red]")
        raise typer.Exit(1)
    manifest = read_manifest(package)
    cache = engine_cache_dir(cache, config)
    settings = SessionSettings(providers=("tensorrt", "cuda", "cpu"), trt_fp16=fp16, trt_cache=cache)
    for role, graph in manifest.graphs.items():
        session = open_session(package / graph["file"], settings)
        if session.get_providers()[0] != "TensorrtExecutionProvider":
            console.print(f"[red]{graph['file']}: the TensorRT provider did not start (running on "
                          f"{session.get_providers()[0]}); see the log above for the reason[/red]")
            raise typer.Exit(1)
        console.print(f"{role}: {graph['file']} on {session.get_providers()[0]} (engines cached in {cache})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
