"""``mammo-train``: the ML engineer's command line.

Each command takes ``--config FILE`` (TOML, see training/config.py and training/configs/) and
``--set section.key=value`` overrides. Runs are resumable: start the same command again and it
continues from the latest checkpoint in ``run.out_dir``. Under torchrun every rank runs the
same command; only rank 0 prints and writes logs. The evaluation commands run once: under
torchrun, rank 0 evaluates and the other ranks return at once (they would otherwise repeat the
whole evaluation and race to write the same prediction and metric files).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from training.config import TrainConfig, TrainConfigError, load_train_config

app = typer.Typer(help="mammo-train: train and evaluate the VersaMammo and MammoRG models.",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML training configuration.")
SetOption = typer.Option([], "--set", help="Override a key, e.g. --set ssl.epochs=2 (repeatable).")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config(config: Optional[Path], overrides: list[str]) -> TrainConfig:
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            err.print(f"[red]--set expects section.key=value, got {item!r}[/red]")
            raise typer.Exit(2)
        key, value = item.split("=", 1)
        parsed[key.strip()] = _parse_value(value.strip())
    try:
        return load_train_config(config, parsed)
    except TrainConfigError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2)


def _skip_on_other_ranks(command: str) -> bool:
    """True on a torchrun rank other than 0, where an evaluation command has nothing to do."""
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        err.print(f"rank {rank}: {command} runs on rank 0 only")
    return rank != 0


@app.command("versamammo-ssl")
def versamammo_ssl(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """Stage 1: self-supervised (DINOv2-style) pretraining of the ViT teacher."""
    from training.versamammo.ssl.train import run_ssl

    path = run_ssl(_config(config, overrides))
    err.print(f"teacher checkpoint: {path}")


@app.command("versamammo-patches")
def versamammo_patches(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """Optional start for stage 2: pretrain the student on lesion patches (needs box annotations).

    Stage 2 starts from it with --set model.student_init=lesion_patches.
    """
    from training.versamammo.patches.train import run_patches

    path = run_patches(_config(config, overrides))
    err.print(f"lesion-patch student: {path}")


@app.command("versamammo-distill")
def versamammo_distill(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """Stage 2: supervised training of the EfficientNet student with knowledge distillation."""
    from training.versamammo.distill.train import run_distill

    path = run_distill(_config(config, overrides))
    err.print(f"student checkpoint: {path}")


@app.command("versamammo-eval")
def versamammo_eval(
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Student checkpoint (default: the run's best)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a student: accuracy, macro-F1, macro AUC with bootstrap 95% intervals."""
    from training.versamammo.evaluate import print_report, run_eval

    if _skip_on_other_ranks("versamammo-eval"):
        return
    report = run_eval(_config(config, overrides), checkpoint)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report)


@app.command("versamammo-probe")
def versamammo_probe(
    config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Student checkpoint (default: distill/student_best.pt)."),
) -> None:
    """Frozen-backbone linear probes and top-K retrieval of the student's pooled features, with
    bootstrap 95% intervals (training/eval/probes.py); prints JSON."""
    if _skip_on_other_ranks("versamammo-probe"):
        return
    from training.eval.probes import run_probe_eval

    report = run_probe_eval(_config(config, overrides), checkpoint)
    typer.echo(json.dumps(report, indent=2, default=str))


@app.command("mammorg-knowledge")
def mammorg_knowledge(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """MammoRG stage 1: build the model (tokenizer, graph, report bank) and train the knowledge modules."""
    from training.mammorg.knowledge import run_knowledge

    err.print(f"knowledge model: {run_knowledge(_config(config, overrides))}")


@app.command("mammorg-align")
def mammorg_align(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """MammoRG stage 2a: train the projectors and the term-token rows on the reports."""
    from training.mammorg.lm_stages import run_lm_stage

    err.print(f"aligned model: {run_lm_stage(_config(config, overrides), 'align')}")


@app.command("mammorg-sft")
def mammorg_sft(config: Optional[Path] = ConfigOption, overrides: list[str] = SetOption) -> None:
    """MammoRG stage 2b: terminology-aware SFT with LoRA, merged into the LM at the end."""
    from training.mammorg.lm_stages import run_lm_stage

    err.print(f"fine-tuned model: {run_lm_stage(_config(config, overrides), 'sft')}")


@app.command("mammorg-eval")
def mammorg_eval(
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    model: Optional[Path] = typer.Option(None, "--model", help="Saved MammoRG directory (default: the run's SFT model)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Generate reports for eval.split, parse them and print clinical and NLG metrics with 95% intervals."""
    from training.eval.cli import _json_safe, _print_metrics
    from training.mammorg.evaluate import run_mammorg_eval

    if _skip_on_other_ranks("mammorg-eval"):
        return
    report = run_mammorg_eval(_config(config, overrides), model)
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(report), indent=2) + "\n")
    else:
        _print_metrics(report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
