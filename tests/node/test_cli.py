"""The admin CLI against a running node: send, echo, studies, status, phantom."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from node.assembly import COMPLETE
from tests.node.conftest import mammo_node_cmd, study_uid_of, wait_for


def _cli(*args: str, config: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    cmd = [*mammo_node_cmd(), *args]
    if config is not None:
        cmd += ["--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def _config_for(node, tmp_path: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'[node]\ndata_dir = "{node.settings.data_dir}"\n')
    return path


def test_send_echo_studies_status(start_node, phantom_dir: Path, tmp_path: Path) -> None:
    node = start_node()
    config = _config_for(node, tmp_path)
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]

    echo_ok = _cli("echo", "127.0.0.1", str(node.port), "--aec", "MAMMO_NODE", "--json")
    assert echo_ok.returncode == 0 and json.loads(echo_ok.stdout)["ok"] is True

    sent = _cli("send", "127.0.0.1", str(node.port), str(study_dir), "--json", check=True)
    report = json.loads(sent.stdout)
    assert report["sent"] == 4 and report["failed"] == 0  # labels.json / report.txt are skipped as non-DICOM
    uid = study_uid_of(study_dir)
    wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE)

    listed = json.loads(_cli("studies", "list", "--json", config=config, check=True).stdout)
    assert [s["study_uid"] for s in listed] == [uid] and listed[0]["state"] == COMPLETE
    only_receiving = json.loads(_cli("studies", "list", "--state", "RECEIVING", "--json", config=config,
                                     check=True).stdout)
    assert only_receiving == []

    shown = json.loads(_cli("studies", "show", listed[0]["key"], "--json", config=config, check=True).stdout)
    assert shown["study_uid"] == uid
    assert set(shown["selection"]["positions"]) == {"R-CC", "R-MLO", "L-CC", "L-MLO"}
    assert all(p["why"] == "only candidate" for p in shown["selection"]["positions"].values())
    assert [e["to_state"] for e in shown["events"]] == ["RECEIVING", "COMPLETE"]
    human = _cli("studies", "show", uid[:20], config=config, check=True).stdout
    assert "Four-view positions" in human and "only candidate" in human

    status = json.loads(_cli("status", "--json", config=config, check=True).stdout)
    assert status["running"] is True and status["process"]["port"] == node.port
    assert status["studies"] == {COMPLETE: 1} and status["instances"] == 4


def test_send_reports_refusals_and_closed_ports(start_node, tmp_path: Path, phantom_dir: Path) -> None:
    node = start_node(node={"min_free_mb": 1 << 40})
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    refused = _cli("send", "127.0.0.1", str(node.port), str(study_dir / "R-CC.dcm"))
    assert refused.returncode == 1
    assert "0xA700" in refused.stdout
    from tests.node.conftest import free_port

    closed = _cli("echo", "127.0.0.1", str(free_port()), "--timeout", "2")
    assert closed.returncode == 1


def test_status_of_a_stopped_node(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    status = json.loads(_cli("status", "--json", config=config, check=True).stdout)
    assert status["running"] is False and status["instances"] == 0
    assert status["device_uid"] is None  # never started: no UID yet, and status does not make one


def test_status_reports_the_installations_device_uid(tmp_path: Path) -> None:
    """Issue 18.9: the Device Observer UID is made per installation (in the data directory) when
    the node starts, and `mammo-node status` reports it."""
    from node.config import load_settings
    from node.outputs.prepare import OutputPreparer

    data = tmp_path / "var"
    data.mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\ndata_dir = "{data}"\n')
    OutputPreparer(load_settings(config))  # what the node does at its start
    uid = (data / "device-uid").read_text().strip()
    assert uid.startswith("2.25.")
    status = json.loads(_cli("status", "--json", config=config, check=True).stdout)
    assert status["device_uid"] == uid
    assert uid in _cli("status", config=config, check=True).stdout


def test_help_for_every_command() -> None:
    for args in (["--help"], ["serve", "--help"], ["send", "--help"], ["studies", "show", "--help"],
                 ["phantom", "--help"], ["config", "check", "--help"]):
        result = _cli(*args, check=True)
        assert "Usage" in result.stdout


def test_phantom_command(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    result = _cli("phantom", str(out), "--studies", "2", "--seed", "5", "--json", check=True)
    dirs = [Path(p) for p in json.loads(result.stdout)["studies"]]
    assert len(dirs) == 2
    for d in dirs:
        assert {p.name for p in d.glob("*.dcm")} == {"R-CC.dcm", "R-MLO.dcm", "L-CC.dcm", "L-MLO.dcm"}
        assert (d / "labels.json").exists() and (d / "report.txt").exists()


def test_table_output_prints_dataset_values_that_look_like_markup(start_node, phantom_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Issue 17: an AccessionNumber of "[/bold]" made `studies list` and `studies show` fail with
    rich's MarkupError, for every study."""
    from tests.node.scu_helpers import associate, load

    node = start_node()
    config = _config_for(node, tmp_path)
    ds = load(sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0] / "R-CC.dcm")
    ds.AccessionNumber = "[/bold]"
    ds.PatientID = "[red]x"
    assoc = associate(node.port)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    listed = _cli("studies", "list", config=config, check=True).stdout
    assert "[/bold]" in listed
    shown = _cli("studies", "show", str(ds.StudyInstanceUID), config=config, check=True).stdout
    assert "accession [/bold]" in shown and "patient [red]x" in shown
