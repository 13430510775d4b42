"""Kill the node process mid-study and restart it: nothing lost, each study closes once."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from node.journal import Journal
from tests.node.conftest import free_port, mammo_node_cmd, run_storescu, study_files, study_uid_of, wait_for
from node.dicom.scu import echo


def _config(tmp_path: Path, port: int, settle: float, close_on_release: bool = False, grace: float = 0.2) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "var"}"\nmin_free_mb = 1\n'
        f'[dicom]\nport = {port}\nbind = "127.0.0.1"\n'
        f"[assembly]\nsettle_seconds = {settle}\nquiet_seconds = 60\ndeadline_seconds = 600\n"
        f"close_on_release = {'true' if close_on_release else 'false'}\nrelease_grace_seconds = {grace}\n"
        "[http]\nport = 0\n"
    )
    return path


def _serve(config: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
    proc = subprocess.Popen([*mammo_node_cmd(), "serve", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode()
        return echo("127.0.0.1", port, timeout=2)[0]

    wait_for(up, timeout=30, interval=0.2)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_kill_mid_study_then_restart(tmp_path: Path, phantom_dir: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port, settle=0.5)
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[1]
    uid = study_uid_of(study_dir)
    files = study_files(study_dir)

    proc = _serve(config)
    _wait_listening(port, proc)
    assert run_storescu(port, files[:2]).returncode == 0
    _kill(proc)

    journal = Journal(tmp_path / "var" / "journal.sqlite3")
    study = journal.get_study(uid)
    assert study.state == "RECEIVING" and study.instance_count == 2

    proc = _serve(config)
    try:
        _wait_listening(port, proc)
        assert run_storescu(port, files[2:]).returncode == 0
        study = wait_for(lambda: (s := journal.get_study(uid, with_events=True)) and s.state == "COMPLETE" and s)
        assert study.instance_count == 4
        assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]
        for instance in journal.study_instances(uid):
            assert (tmp_path / "var" / instance.path).stat().st_size == instance.size
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_kill_during_settle_completes_once_after_restart(tmp_path: Path, phantom_dir: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port, settle=3.0)
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[2]
    uid = study_uid_of(study_dir)
    journal = Journal(tmp_path / "var" / "journal.sqlite3")

    proc = _serve(config)
    _wait_listening(port, proc)
    # A transfer interrupted by the crash leaves a partial file; the restart must clear it.
    incoming = tmp_path / "var" / "spool" / ".incoming"
    assert run_storescu(port, study_files(study_dir)).returncode == 0
    (incoming / "tmp-partial.dcm").write_bytes(b"\0" * 1000)
    _kill(proc)
    assert journal.get_study(uid).state == "RECEIVING"

    for _ in range(2):  # restart twice: the second start must not close it again
        proc = _serve(config)
        try:
            _wait_listening(port, proc)
            study = wait_for(lambda: (s := journal.get_study(uid, with_events=True)) and s.state == "COMPLETE" and s,
                             timeout=10)
            assert not (incoming / "tmp-partial.dcm").exists()
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
    study = journal.get_study(uid, with_events=True)
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]
    assert study.instance_count == 4


def test_kill_with_the_association_open_does_not_close_early_after_restart(tmp_path: Path, phantom_dir: Path) -> None:
    """The node dies while the sender's association is still open (four views in): no release was
    recorded, so after the restart the study settles; it does not close on the release rule."""
    from tests.node.scu_helpers import associate

    port = free_port()
    config = _config(tmp_path, port, settle=2.5, close_on_release=True, grace=0.1)
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    uid = study_uid_of(study_dir)
    journal = Journal(tmp_path / "var" / "journal.sqlite3")
    proc = _serve(config)
    _wait_listening(port, proc)
    assoc = associate(port)
    for path in study_files(study_dir):
        assert assoc.send_c_store(path).Status == 0
    _kill(proc)
    assoc.abort()
    study = journal.get_study(uid)
    assert study.state == "RECEIVING" and study.released_at is None
    proc = _serve(config)
    try:
        _wait_listening(port, proc)
        study = wait_for(lambda: (s := journal.get_study(uid, with_events=True)) and s.state == "COMPLETE" and s,
                         timeout=15)
        assert study.closed_at - study.last_received_at >= 2.5
        assert "no new image" in study.close_reason
        assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_kill_during_the_release_grace_closes_once_after_restart(tmp_path: Path, phantom_dir: Path) -> None:
    """Released, then killed before the grace ended: the release is in the journal, so the study
    closes at the next start (not after a full settle), and only once over two restarts."""
    port = free_port()
    config = _config(tmp_path, port, settle=60, close_on_release=True, grace=3.0)
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[1]
    uid = study_uid_of(study_dir)
    journal = Journal(tmp_path / "var" / "journal.sqlite3")
    proc = _serve(config)
    _wait_listening(port, proc)
    assert run_storescu(port, study_files(study_dir)).returncode == 0
    _kill(proc)
    study = journal.get_study(uid)
    assert study.state == "RECEIVING" and study.released_at is not None
    for _ in range(2):
        proc = _serve(config)
        try:
            _wait_listening(port, proc)
            study = wait_for(lambda: (s := journal.get_study(uid, with_events=True)) and s.state == "COMPLETE" and s,
                             timeout=15)
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
    study = journal.get_study(uid, with_events=True)
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]
    assert study.closed_at - study.released_at >= 3.0
    assert "was released" in study.close_reason
