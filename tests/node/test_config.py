"""Configuration: the contract keys, precedence, and errors that name the bad key."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "deploy" / "config" / "default.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAMMO_NODE_"):
            monkeypatch.delenv(key)


def test_shipped_default_file_gives_the_documented_defaults() -> None:
    s = load_settings(DEFAULT_TOML)
    assert s.node.data_dir == Path("var")
    assert (s.dicom.ae_title, s.dicom.port, s.dicom.bind) == ("MAMMO_NODE", 11112, "0.0.0.0")
    assert s.dicom.allowed_calling_aets == [] and s.dicom.allowed_hosts == []
    assert s.dicom.max_associations == 16 and s.dicom.tls.enabled is False
    assert s.dicom.tls.require_client_cert is True
    a = s.assembly
    assert (a.settle_seconds, a.quiet_seconds, a.deadline_seconds, a.incomplete_policy) == (2, 120, 3600, "report")


def test_environment_overrides_file_and_keeps_other_file_keys(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[dicom]\nport = 4000\nae_title = "FROMFILE"\n[assembly]\nquiet_seconds = 30\n')
    monkeypatch.setenv("MAMMO_NODE_DICOM__PORT", "4001")
    monkeypatch.setenv("MAMMO_NODE_DICOM__ALLOWED_CALLING_AETS", '["MODALITY1", "PACS"]')
    s = load_settings(path)
    assert s.dicom.port == 4001
    assert s.dicom.ae_title == "FROMFILE"
    assert s.dicom.allowed_calling_aets == ["MODALITY1", "PACS"]
    assert s.assembly.quiet_seconds == 30


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[dicom]\nport = 70000\n", "dicom.port"),
        ("[dicom]\nprot = 1\n", "dicom.prot: unknown key"),
        ('[dicom]\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\n', "dicom.ae_title"),
        ('[dicom]\nallowed_hosts = ["not-an-ip"]\n', "dicom.allowed_hosts"),
        ("[dicom.tls]\nenabled = true\n", "dicom.tls.cert"),
        ('[assembly]\nincomplete_policy = "drop"\n', "assembly.incomplete_policy"),
        ("[assembly]\nquiet_seconds = 100\ndeadline_seconds = 10\n", "assembly.deadline_seconds"),
        ("[nodes]\ndata_dir = 'x'\n", "nodes: unknown key"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected in str(info.value)


def test_bad_environment_value_is_named(monkeypatch) -> None:
    monkeypatch.setenv("MAMMO_NODE_ASSEMBLY__SETTLE_SECONDS", "soon")
    with pytest.raises(ConfigError, match=r"assembly\.settle_seconds"):
        load_settings(None)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[dicom\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_config_check_cli(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "node.cli.app", "config", "check", "--config", str(DEFAULT_TOML),
                         "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["valid"] is True and data["config"]["dicom"]["port"] == 11112

    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 0\n")
    res = subprocess.run([sys.executable, "-m", "node.cli.app", "config", "check", "--config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "dicom.port" in res.stderr
