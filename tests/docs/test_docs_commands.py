"""Every command shown in README.md and docs/*.md is exercised, so the documentation cannot rot.

Convention (docs/README of this rule: docs/architecture.md, "Documentation checks"):

- a ```sh block holds commands a reader can paste; each one is either run here, in order, in a
  sandbox (a temporary data directory through ``MAMMO_NODE_NODE__DATA_DIR``, a live node on the
  port the default configuration uses, demo-named model packages installed), and must exit 0;
- or it ends with ``# tested by: tests/PATH.py::test_name``: commands that need hours, a GPU,
  a cluster or a Docker engine, or that another test already runs (e.g. ``make test`` is CI
  itself). Here we check the named test exists and runs that command (its source names it).
- usage synopses (``[--json]``, ``A|B``) and non-runnable examples go in ```text blocks.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.node.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TESTED_BY = re.compile(r"#\s*tested by:\s*(\S+)")
NODE_PORT = 11112  # what deploy/config/default.toml says, as the README's commands assume


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str  # without the trailing comment
    tested_by: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


def _commands(doc: Path) -> list[Command]:
    out: list[Command] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    inside = False
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            inside = line.strip() == "```sh" if not inside else False
            continue
        if not inside:
            continue
        if not pending:
            start = number
        pending += line
        if line.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1] + " "
            continue
        whole, pending = pending, ""
        tested = TESTED_BY.search(whole)
        code = _strip_comment(whole).strip()
        if code:
            out.append(Command(doc, start, code, tested.group(1) if tested else None))
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # outside quotes preceded by a space)."""
    quote = None
    for index, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


ALL = [c for doc in DOCS for c in _commands(doc)]
REFERENCED = [c for c in ALL if c.tested_by]
RUN = [c for c in ALL if not c.tested_by]


def _keyword(command: str) -> str:
    """The word that identifies what a command does: the subcommand (``mammo-train versamammo-ssl``
    -> ``versamammo-ssl``), the make target, the module, or the program."""
    words = [w for w in shlex.split(command) if "=" not in w or w.startswith("-")]
    if not words:
        return command
    program = Path(words[0]).name
    if program == "make":
        return words[1] if len(words) > 1 else "make"
    if program in ("python", "python3") and len(words) > 2 and words[1] == "-m":
        return words[2]
    if program == "torchrun":
        return "torchrun"
    if program.startswith("mammo-") and len(words) > 1:
        return words[1]
    return program


@pytest.mark.parametrize("command", REFERENCED, ids=[c.id for c in REFERENCED])
def test_referenced_test_runs_the_command(command: Command) -> None:
    path, _, name = command.tested_by.partition("::")
    source_file = ROOT / path
    assert source_file.is_file(), f"{command.id}: {path} does not exist"
    source = source_file.read_text(encoding="utf-8")
    match = re.search(rf"^(?:async )?def {re.escape(name)}\(.*?(?=^def |^@|\Z)", source, re.M | re.S)
    assert match, f"{command.id}: no test {name} in {path}"
    keyword = _keyword(command.text)
    assert keyword in match.group(0) or keyword in source.split(f"def {name}(")[0][-3000:], (
        f"{command.id}: {path}::{name} does not appear to run {keyword!r}")


def test_every_sh_block_command_is_covered() -> None:
    """Guard against the parser silently dropping commands (an empty list would pass vacuously)."""
    assert len(RUN) >= 20 and len(REFERENCED) >= 5


# --------------------------------------------------------------------------------------------------
# The sandbox the runnable commands share


class Sandbox:
    def __init__(self, root: Path, packages: dict[str, Path]) -> None:
        self.root = root
        self.data = root / "var"
        self.packages = packages
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
        self.env.update({"MAMMO_NODE_NODE__DATA_DIR": str(self.data), "MAMMO_NODE_DICOM__BIND": "127.0.0.1",
                         "MAMMO_NODE_HTTP__PORT": "0", "MAMMO_NODE_ASSEMBLY__SETTLE_SECONDS": "0.5",
                         "MAMMO_NODE_NODE__MIN_FREE_MB": "1",
                         "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
        self.node: subprocess.Popen | None = None

    def start_node(self) -> None:
        from node.dicom.scu import echo

        self.node = subprocess.Popen([sys.executable, "-m", "node.cli.app", "serve", "--config",
                                      "deploy/config/default.toml"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.node.poll() is None and echo("127.0.0.1", NODE_PORT, timeout=1)[0], timeout=60,
                 interval=0.3)

    def stop(self) -> None:
        if self.node is not None:
            self.node.terminate()
            self.node.wait(timeout=30)

    def study_key(self) -> str:
        """The key of the first study the node processed (for ``studies show KEY`` examples)."""
        from node.journal import Journal
        from node.logref import study_ref

        journal = Journal(self.data / "journal.sqlite3")
        try:
            study = wait_for(lambda: (s := journal.list_studies()) and all(x.state in ("DONE", "FAILED") for x in s)
                             and s[-1], timeout=180, interval=0.5)
            return study_ref(study.study_uid)
        finally:
            journal.close()

    def substitute(self, text: str) -> str:
        replacements = {
            "s-1234abcd56": self.study_key,
            "PACKAGE_DIR_OR_TAR": lambda: str(self.packages["vm2"]),
            "versamammo-demo-2.1.0.tar": lambda: str(self.packages["vm2"]),
            "=STUDENT": lambda: f"={self.root}/runs/versamammo-tiny/distill/student_best.pt",
            "reports.jsonl": lambda: str(self.reports()),
            "reference.jsonl": lambda: str(self.reports()),
            "ref.jsonl": lambda: str(self.reports()),
            "pred.jsonl": lambda: str(self.reports()),
            "generated.jsonl": lambda: str(self.reports()),
        }
        for placeholder, value in replacements.items():
            if placeholder in text:
                text = text.replace(placeholder, value())
        return text

    def reports(self) -> Path:
        """A JSON Lines file of phantom reference reports (what `mammo-eval` examples read)."""
        import json

        path = self.root / "reports.jsonl"
        if not path.exists():
            studies = sorted(p for p in Path("/tmp/phantoms").glob("study-*") if (p / "report.txt").exists())
            if not studies:
                from phantoms.study import PhantomOptions, write_phantom_studies

                write_phantom_studies(self.root / "ph", 3, seed=5, options=PhantomOptions(size="small"))
                studies = sorted((self.root / "ph").glob("study-*"))
            path.write_text("".join(json.dumps({"id": p.name, "text": (p / "report.txt").read_text()}) + "\n"
                                    for p in studies))
        return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, model_packages_demo) -> Sandbox:
    from node.packages.registry import ModelRegistry

    box = Sandbox(tmp_path_factory.mktemp("docs"), model_packages_demo)
    registry = ModelRegistry(box.data / "models")
    for key in ("vm1", "rg1"):
        registry.install(model_packages_demo[key], activate=True)
    box.start_node()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def model_packages_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random packages under the demo names, so the docs' commands about the demo models apply."""
    from tests.packages import build_mammorg_package, build_versamammo_package

    from export.bootstrap import DEMO_VERSION

    root = tmp_path_factory.mktemp("demo-packages")
    return {"vm1": build_versamammo_package(root / "vm1", DEMO_VERSION, seed=0, name="versamammo-demo"),
            "vm2": build_versamammo_package(root / "vm2", "2.1.0", seed=1, tar=True, name="versamammo-demo"),
            "rg1": build_mammorg_package(root / "rg1", DEMO_VERSION, seed=0, name="mammorg-demo")}


# Training commands run for real, shrunk by overrides to seconds of work, into the sandbox.
SHRINK = {
    "versamammo_tiny.toml": ["data.phantom_studies=10", "ssl.epochs=1", "ssl.iterations_per_epoch=2",
                             "ssl.batch_size_per_rank=4", "distill.epochs=1", "eval.bootstrap=10"],
    "mammorg_tiny.toml": ["data.phantom_studies=12", "knowledge.epochs=1", "align.epochs=1", "sft.epochs=1",
                          "knowledge.batch_size_per_rank=4", "align.batch_size_per_rank=4", "sft.batch_size_per_rank=4",
                          "generate.max_new_tokens=8", "eval.bootstrap=10"],
}


def _shrunk(line: str, root: Path) -> str:
    for config, sets in SHRINK.items():
        if f"training/configs/{config}" in line:
            name = config.removesuffix(".toml").replace("_", "-")
            extra = [f"run.out_dir={root}/runs/{name}", f"data.cache_dir={root}/cache", *sets]
            return line + "".join(f" --set {x}" for x in extra)
    return line


_ALREADY_RUN: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted({c.doc for c in RUN}), ids=lambda p: p.name)
def test_runnable_commands_succeed(doc: Path, sandbox: Sandbox) -> None:
    """Each ```sh block of ``doc`` runs as one bash script (so variables carry over), its commands
    in order; a command already run from another document is not run twice."""
    for block in _blocks(doc):
        lines: list[str] = []
        for command in block:
            if command.tested_by or command.text in _ALREADY_RUN:
                continue
            if LAZY in command.text:  # needs the state the commands before it create: run those first
                _run_lines(lines, block, sandbox)
                lines = []
            text = RELATIVE_RUNS.sub(f"{sandbox.root}/runs/", sandbox.substitute(command.text))
            lines.append(f"echo '>>> {command.id}' >&2\n{_shrunk(text, sandbox.root)}")
            _ALREADY_RUN.add(command.text)
        _run_lines(lines, block, sandbox)


RELATIVE_RUNS = re.compile(r"(?<![\w/.-])runs/")  # the docs' relative run directories, into the sandbox
LAZY = "s-1234abcd56"  # a study key: exists only once the block's earlier commands sent studies


def _run_lines(lines: list[str], block: list[Command], sandbox: Sandbox) -> None:
    if not lines:
        return
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(lines)], cwd=ROOT, env=sandbox.env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (f"{block[0].id}: block exited {proc.returncode} after "
                                  f"{time.monotonic() - started:.1f} s\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _blocks(doc: Path) -> list[list[Command]]:
    """The commands of each ```sh block of ``doc``."""
    commands = _commands(doc)
    text = doc.read_text(encoding="utf-8").splitlines()
    fences = [i + 1 for i, line in enumerate(text) if line.startswith("```")]
    out: list[list[Command]] = []
    for opening, closing in zip(fences[::2], fences[1::2]):
        block = [c for c in commands if opening < c.line < closing]
        if block:
            out.append(block)
    return out
