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
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from models.package.manifest import MANIFEST, PackageError
from node.cli.common import ConfigOption, JsonOption, console, err_console, print_json, settings_from

models_app = typer.Typer(help="Install, verify, activate and roll back model packages.", no_args_is_help=True)


def _registry(config: Optional[Path]):
    from node.packages.registry import ModelRegistry

    settings = settings_from(config)
    return ModelRegistry(settings.models_dir, settings.session_settings()), settings


def _fail(message: str, as_json: bool, code: int = 1, **extra: Any) -> None:
    if as_json:
        print_json({"ok": False, "error": message, **extra})
    else:
        err_console.print(f"[red]{message}[/red]", highlight=False, soft_wrap=True)  # no line breaks in paths
    raise typer.Exit(code)


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
        print_json({"active": active, "packages": rows})
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
        print_json({"ok": True, **info})
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
        print_json({"ok": True, "ref": package.ref, "problems": []})
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
        print_json({"ok": True, "kind": package.manifest.kind, "active": package.ref, "previous": previous})
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
        print_json({"ok": True, "kind": changed, "active": now, "rolled_back_from": before})
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
        print_json({"ok": True, "removed": package.ref})
    else:
        console.print(f"removed {package.ref}")


@models_app.command("bootstrap-demo")
def bootstrap_demo(cache: Optional[Path] = typer.Option(None, "--cache", help="Where training runs and built "
                                                        "packages are kept (default DATA_DIR/cache/bootstrap-demo)."),
                   threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (training only)."),
                   retrain: bool = typer.Option(False, "--retrain", help="Train the demo packages here (same recipe "
                                                "and seed as the shipped ones) even where deploy/demo-models/ ships "
                                                "them; needs the training extras."),
                   source: Optional[Path] = typer.Option(None, "--from", help="Take the demo packages from this "
                                                         "directory (laid out like deploy/demo-models/) instead."),
                   quick: bool = typer.Option(False, "--quick", hidden=True, help="Train with export.bootstrap's "
                                              "minutes-long recipe (tests of this code path; useless models)."),
                   as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Make the demonstration models the active ones: install the packages shipped in
    deploy/demo-models/, or train them on phantoms; verify, install and activate them.

    With packages shipped for the current demo version nothing is trained and torch is not needed
    (seconds). Without them, or with --retrain, tiny models are trained on synthetic phantoms in a
    child process (needs scripts/install.sh --train; resumable and cached under --cache). Does
    nothing when the demo packages are already active. The packages are demonstration models
    trained on synthetic images, not for clinical use.
    """
    from node.packages.demo import demo_refs, demo_version, shipped_listing, shipped_packages, shipped_root

    if retrain and source is not None:
        _fail("--retrain trains the packages here and --from installs them from a directory: give one of them",
              as_json, code=2)
    registry, settings = _registry(config)
    refs = demo_refs()
    active = registry.active()
    if not retrain and all(active.get(kind) == ref for kind, ref in refs.items()):
        result = {"ok": True, "active": active, "built": False, "installed": [], "source": "cached"}
        print_json(result) if as_json else console.print(f"demo models already active: {', '.join(refs.values())}")
        return
    installed_refs = {p.ref for p in registry.installed()}
    shipped = None if retrain else shipped_packages(source)
    if source is not None and shipped is None:
        _fail(f"{source} holds no demo packages for version {demo_version()}: expected "
              + " and ".join(f"{source / ref}/manifest.json" for ref in refs.values())
              + _found(shipped_listing(source)), as_json, code=2)
    if not retrain and all(ref in installed_refs for ref in refs.values()):
        _activate_demo(registry, refs, [], "cached", False, as_json)  # installed earlier, not active now
        return
    if shipped is not None:
        if not as_json:
            console.print(f"installing the demonstration packages shipped in {shipped_root(source)}: "
                          f"{', '.join(refs.values())} (checksums and golden vectors are checked first)")
        installed = []
        for kind, ref in refs.items():
            if ref in installed_refs:
                continue
            try:
                registry.install(shipped[kind])
            except PackageError as exc:
                _fail(f"shipped demo package {shipped[kind]} refused, nothing activated: {exc}. The copy in this "
                      "checkout is damaged or incomplete: restore it from git, or train the demo packages here "
                      "with `mammo-node models bootstrap-demo --retrain` (needs scripts/install.sh --train)", as_json)
            installed.append(ref)
        _activate_demo(registry, refs, installed, "shipped", False, as_json)
        return

    if not _training_extras_installed():
        if retrain:
            _fail("bootstrap-demo --retrain trains the demo models and needs the training extras: "
                  "scripts/install.sh --train", as_json)
        _fail(f"no demonstration packages for version {demo_version()} are shipped in {shipped_root()}"
              f"{_found(shipped_listing())}, and training them needs the training extras: scripts/install.sh "
              "--train (or install model packages built elsewhere with `mammo-node models install PATH`)", as_json)
    cache_dir = cache or settings.data_dir / "cache" / "bootstrap-demo"
    command = [sys.executable, "-m", "export.bootstrap", "--out", str(cache_dir)]
    if threads:
        command += ["--threads", str(threads)]
    if quick:
        command.append("--quick")
    if not as_json:
        console.print(f"training demonstration models on synthetic phantoms (cache: {cache_dir}); about two hours "
                      "on 2 cores the first time (export/bootstrap.py states the recipe's budget), a rerun resumes")
    started = time.time()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if as_json else None,
                          text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        _fail(f"building the demo models failed (exit {proc.returncode}); rerun to resume from its checkpoints",
              as_json)
    built = {kind: Path(path) for kind, path in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    # The child reuses finished packages from its cache: then nothing was trained in this run.
    reused = all((path / MANIFEST).stat().st_mtime < started for path in built.values())
    installed = []
    for kind, path in built.items():
        ref = refs[kind]
        try:
            if ref in installed_refs:
                if not retrain or _same_files(registry, ref, path):
                    continue
                if registry.active().get(kind) == ref:
                    _fail(f"the retrained {ref} differs from the installed {ref}, which is active, so it cannot be "
                          f"replaced in place. The retrained package is {path}: activate another {kind} version, "
                          f"`mammo-node models remove {ref}`, then rerun bootstrap-demo --retrain (the training "
                          "is cached: seconds); or install it on a node with a fresh data directory", as_json)
                registry.remove(ref)  # an inactive older build of the same version: the new one replaces it
            registry.install(path)
            installed.append(ref)
        except PackageError as exc:
            _fail(f"demo package {ref} refused: {exc}", as_json)
    _activate_demo(registry, refs, installed, "cached" if reused else "trained", True, as_json)


def _training_extras_installed() -> bool:
    """Can this interpreter import torch? Asked in a child process: the node never imports torch."""
    probe = subprocess.run([sys.executable, "-c", "import torch"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def _found(names: list[str]) -> str:
    return f" (found: {', '.join(names)})" if names else ""


def _same_files(registry: Any, ref: str, path: Path) -> bool:
    from models.package.manifest import read_manifest

    return registry.get(ref).manifest.files == read_manifest(path).files


def _activate_demo(registry: Any, refs: dict[str, str], installed: list[str], source: str, built: bool,
                   as_json: bool) -> None:
    """Activate every demo package (all are installed by now) and report."""
    try:
        for ref in refs.values():
            registry.activate(ref)
    except PackageError as exc:
        _fail(f"activating the demo packages failed: {exc}", as_json)
    result = {"ok": True, "active": registry.active(), "built": built, "installed": installed, "source": source}
    if as_json:
        print_json(result)
    else:
        console.print(f"[green]active: {', '.join(refs.values())}[/green] ({source})")
        console.print("[yellow]Demonstration models trained on synthetic images: not for clinical use.[/yellow]")
