"""``mammo-node models ...``: install, verify, activate, roll back and remove model packages.

Every command takes ``--json``. Exit codes: 0 done, 1 refused or failed (the reason is printed),
2 bad usage or configuration. A running node picks up ``activate`` and ``rollback`` for the next
study it starts, without a restart (node.inference.engine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from node.packages.manifest import PackageError

models_app = typer.Typer(help="Install, verify, activate and roll back model packages.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML configuration file.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _registry(config: Optional[Path]):
    from node.cli import _settings
    from node.packages.registry import ModelRegistry

    settings = _settings(config)
    return ModelRegistry(settings.models_dir, settings.session_settings()), settings


def _out(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _fail(message: str, as_json: bool, **extra: Any) -> None:
    if as_json:
        _out({"ok": False, "error": message, **extra})
    else:
        err_console.print(f"[red]{message}[/red]", highlight=False, soft_wrap=True)  # no line breaks in paths
    raise typer.Exit(1)


def _describe(package: Any, active: dict[str, str]) -> dict[str, Any]:
    m = package.manifest
    return {"ref": package.ref, "name": m.name, "version": m.version, "kind": m.kind,
            "active": active.get(m.kind) == package.ref, "created": m.data.get("created"),
            "demonstration": m.demonstration, "intended_use": m.data.get("intended_use"),
            "graphs": {role: g.get("file") for role, g in m.graphs.items()},
            "bytes": sum(int(f.get("bytes", 0)) for f in m.files.values())}


@models_app.command("list")
def list_models(as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Installed packages; the active one of each kind is marked."""
    registry, _ = _registry(config)
    active = registry.active()
    rows = [_describe(p, active) for p in registry.installed()]
    if as_json:
        _out({"active": active, "packages": rows})
        return
    if not rows:
        console.print("no model packages installed (mammo-node models install PATH, or models bootstrap-demo)")
        return
    table = Table("", "package", "kind", "created", "size", "note")
    for r in rows:
        table.add_row("*" if r["active"] else "", r["ref"], r["kind"], str(r["created"] or "-"),
                      f"{r['bytes'] / 1e6:.1f} MB", "demonstration, not for clinical use" if r["demonstration"] else "")
    console.print(table)


@models_app.command()
def install(path: Path = typer.Argument(..., help="Package directory or .tar."),
            activate: bool = typer.Option(False, "--activate", help="Activate it once installed."),
            as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Check every sha256 and the manifest, run the golden vectors here, then install."""
    registry, _ = _registry(config)
    try:
        package = registry.install(path, activate=activate)
    except PackageError as exc:
        _fail(str(exc), as_json)
    info = _describe(package, registry.active())
    if as_json:
        _out({"ok": True, **info})
    else:
        console.print(f"[green]installed {package.ref}[/green]" + (" and activated it" if info["active"] else ""))
        if package.manifest.demonstration:
            console.print(f"[yellow]{package.manifest.data.get('intended_use')}[/yellow]")


@models_app.command()
def verify(ref: str = typer.Argument(..., help="NAME@VERSION of an installed package."),
           as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Re-check an installed package: files against the manifest, golden vectors on this machine."""
    registry, _ = _registry(config)
    try:
        package, problems = registry.verify(ref)
    except PackageError as exc:
        _fail(str(exc), as_json)
    if problems:
        _fail(f"{package.ref} failed verification: " + "; ".join(problems), as_json, problems=problems)
    if as_json:
        _out({"ok": True, "ref": package.ref, "problems": []})
    else:
        console.print(f"[green]{package.ref}: files and golden vectors OK[/green]")


@models_app.command()
def activate(ref: str = typer.Argument(..., help="NAME@VERSION to make active for its kind."),
             as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Make a package the active one of its kind (atomic; running nodes use it for the next study)."""
    registry, _ = _registry(config)
    try:
        previous, package = registry.activate(ref)
    except PackageError as exc:
        _fail(str(exc), as_json)
    if as_json:
        _out({"ok": True, "kind": package.manifest.kind, "active": package.ref, "previous": previous})
    else:
        console.print(f"[green]{package.manifest.kind}: {previous or '-'} -> {package.ref}[/green]")


@models_app.command()
def rollback(kind: Optional[str] = typer.Argument(None, help="versamammo or mammorg (default: the kind changed last)."),
             as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Re-activate the previously active version."""
    registry, _ = _registry(config)
    try:
        before, now = registry.rollback(kind)
    except PackageError as exc:
        _fail(str(exc), as_json)
    changed = registry.state()["log"][-1]["kind"]
    if as_json:
        _out({"ok": True, "kind": changed, "active": now, "rolled_back_from": before})
    else:
        console.print(f"[green]{changed}: {before} -> {now}[/green]")


@models_app.command()
def remove(ref: str = typer.Argument(..., help="NAME@VERSION to delete (never the active one)."),
           as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Delete an installed package that is not active."""
    registry, _ = _registry(config)
    try:
        package = registry.remove(ref)
    except PackageError as exc:
        _fail(str(exc), as_json)
    if as_json:
        _out({"ok": True, "removed": package.ref})
    else:
        console.print(f"removed {package.ref}")


@models_app.command("bootstrap-demo")
def bootstrap_demo(cache: Optional[Path] = typer.Option(None, "--cache", help="Where training runs and built "
                                                        "packages are kept (default DATA_DIR/cache/bootstrap-demo)."),
                   threads: Optional[int] = typer.Option(None, "--threads", help="torch threads."),
                   as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Train tiny demonstration models on phantoms, export, verify, install and activate them.

    Needs the training extras (scripts/install.sh --train). Cached: a second run reuses what the
    first built, and does nothing when the demo packages are already active. The packages are
    demonstration models trained on synthetic images, not for clinical use.
    """
    from export.bootstrap import DEMO_VERSION, NAMES  # torch-free module; the training runs in a child

    registry, settings = _registry(config)
    refs = {kind: f"{name}@{DEMO_VERSION}" for kind, name in NAMES.items()}
    active = registry.active()
    if all(active.get(kind) == ref for kind, ref in refs.items()):
        result = {"ok": True, "active": active, "built": False, "installed": []}
        _out(result) if as_json else console.print(f"demo models already active: {', '.join(refs.values())}")
        return
    try:
        import torch  # noqa: F401  (only to give a clear message; the child process trains)
    except ImportError:
        _fail("bootstrap-demo trains models and needs the training extras: scripts/install.sh --train "
              "(or install model packages built elsewhere with `mammo-node models install PATH`)", as_json)
    cache_dir = cache or settings.data_dir / "cache" / "bootstrap-demo"
    command = [sys.executable, "-m", "export.bootstrap", "--out", str(cache_dir)]
    if threads:
        command += ["--threads", str(threads)]
    if not as_json:
        console.print(f"training demonstration models on synthetic phantoms (cache: {cache_dir}); "
                      "about 6-8 minutes on 2 cores the first time")
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if as_json else None,
                          text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        _fail(f"building the demo models failed (exit {proc.returncode}); rerun to resume from its checkpoints",
              as_json)
    built = {kind: Path(path) for kind, path in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    installed = []
    for kind, path in built.items():
        ref = refs[kind]
        try:
            if ref not in {p.ref for p in registry.installed()}:
                registry.install(path)
                installed.append(ref)
            registry.activate(ref)
        except PackageError as exc:
            _fail(f"demo package {ref} refused: {exc}", as_json)
    result = {"ok": True, "active": registry.active(), "built": True, "installed": installed}
    if as_json:
        _out(result)
    else:
        console.print(f"[green]active: {', '.join(refs.values())}[/green]")
        console.print("[yellow]Demonstration models trained on synthetic images: not for clinical use.[/yellow]")
