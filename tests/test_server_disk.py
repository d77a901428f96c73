"""The server's disk: an unwritable or full output folder is a clear error before any site is
contacted, and a write that fails mid-run leaves the last good checkpoint and the reports
intact (and the run resumable).

Faults are real: a path through a file, a 1 MiB tmpfs mounted in a private mount namespace,
and RLIMIT_FSIZE in a child process (the kernel refuses the checkpoint's write with EFBIG).
As root, permission bits do not stop writes, so none of these rely on them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, server_context
from superlink import disk

REPO = Path(__file__).resolve().parent.parent


def _config(output_dir: Path, **overrides) -> dict:
    return RunConfig.with_overrides({"policy": "smolvla-tiny", "num-server-rounds": 3,
                                     "min-sites": 2, "output-dir": str(output_dir),
                                     **overrides}).to_flwr()


def _counting():
    calls: list[str] = []

    def app(msg, context):
        calls.append(msg.metadata.message_type)
        raise AssertionError("no site should be contacted")

    return app, calls


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.mark.parametrize("where", ["file-as-parent", "file-as-folder"])
def test_an_unwritable_output_folder_fails_before_any_site_is_contacted(tmp_path, where):
    from superlink.federation import run_federation

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    output = blocker / "runs" if where == "file-as-parent" else blocker
    config = _config(output)
    app, calls = _counting()
    grid = InProcessGrid(app, [{"site-name": "s0"}, {"site-name": "s1"}], config, 81)
    with pytest.raises(disk.OutputDirError, match=r"not-a-folder is a file, not a folder"):
        run_federation(grid, server_context(config, 81))
    assert calls == []


_FULL_CHILD = """
import json, subprocess, sys
from pathlib import Path
mount = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
try:
    from common.settings import RunConfig
    from harness.inprocess_grid import InProcessGrid, server_context
    from superlink.federation import run_federation
    calls = []
    def app(msg, context):
        calls.append(msg.metadata.message_type)
    config = RunConfig.with_overrides({"policy": "smolvla-tiny", "min-sites": 1,
                                       "output-dir": str(mount / "runs")}).to_flwr()
    try:
        run_federation(InProcessGrid(app, [{"site-name": "s0"}], config, 82),
                       server_context(config, 82))
        print(json.dumps({"error": None, "calls": calls}))
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}", "calls": calls}))
finally:
    subprocess.run(["umount", str(mount)], check=False)
"""


def test_a_full_output_folder_fails_before_any_site_is_contacted(tmp_path):
    """A real 1 MiB filesystem (tmpfs in a private mount namespace, so nothing outside the
    child sees it): the ServerApp refuses to start on it."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private mount namespace")
    mount = tmp_path / "small"
    mount.mkdir()
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run(["unshare", "--mount", *user, "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()[:200]}")
    proc = subprocess.run(
        ["unshare", "--mount", *user, sys.executable, "-c", _FULL_CHILD, str(mount)],
        env=_env(), capture_output=True, text=True, timeout=300, check=False)
    if "mount: " in proc.stderr and "permission denied" in proc.stderr.lower():
        pytest.skip("tmpfs cannot be mounted here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["calls"] == []
    assert result["error"].startswith("OutputDirError: output folder")
    assert "GB free, the run needs at least" in result["error"]
    assert list(mount.iterdir()) == []  # the mount was private to the child


def test_room_for_checkpoints_is_checked_against_the_real_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    disk.check_room_for_checkpoints(tmp_path, 1000, rounds_left=3, keep=0)
    with pytest.raises(disk.OutputDirError, match=r"one checkpoint of this policy needs"):
        disk.check_room_for_checkpoints(tmp_path, free * 2, rounds_left=3, keep=0)


def test_early_estimate_reads_the_pretrained_weights_size(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((1000, 250), np.float16)}, tmp_path / "model.safetensors")
    run = RunConfig.with_overrides({"policy": "smolvla", "pretrained-path": str(tmp_path)})
    assert disk.early_estimate(run) == 4 * 250_000 + disk.MIN_FREE_BYTES  # saved as float32
    tiny = RunConfig.with_overrides({"policy": "smolvla-tiny"})
    assert disk.early_estimate(tiny) == disk.MIN_FREE_BYTES


_WRITE_FAILS_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from common.settings import RunConfig
from harness.inprocess_grid import InProcessGrid, server_context
from harness.synthetic_sites import SyntheticSites
from superlink.federation import run_federation

demo, out = Path(sys.argv[1]), Path(sys.argv[2])
LIMIT = 512 * 1024  # bytes per file: reports fit, a checkpoint's weights do not
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG


class DiskFillsInRound2(InProcessGrid):
    def push_messages(self, messages):
        messages = list(messages)
        if any(m.metadata.group_id == "2" for m in messages):
            resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        return super().push_messages(messages)


config = RunConfig.with_overrides({"policy": "smolvla-tiny", "num-server-rounds": 3,
                                   "min-sites": 2, "output-dir": str(out)}).to_flwr()
nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo / f"site-{i}")} for i in range(2)]
try:
    run_federation(DiskFillsInRound2(SyntheticSites(), nodes, config, 83),
                   server_context(config, 83))
    print(json.dumps({"error": None}))
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
"""


def test_a_write_failure_mid_run_keeps_the_last_checkpoint_and_reports(demo_root, tmp_path):
    from harness.inprocess_grid import run_inprocess
    from harness.synthetic_sites import SyntheticSites
    from superlink import server_state
    from superlink.checkpoints import latest_checkpoint

    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", _WRITE_FAILS_CHILD, str(demo_root), str(out)],
                          env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error.startswith("CheckpointWriteError: could not write the checkpoint of round 2")
    assert "checkpoints/000001" in error and "resume-from" in error

    run_dir = out / "run-83"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"].startswith("failed: CheckpointWriteError")
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000001", "last"]  # no debris
    assert (checkpoints / "last").resolve().name == "000001"
    state = server_state.read(checkpoints / "000001" / server_state.STATE_FILE)
    assert state.server_round == 1
    assert (checkpoints / "000001" / "pretrained_model" / "model.safetensors").stat().st_size > 0
    assert json.loads((run_dir / "rounds" / "round_001.json").read_text())["status"] == "ok"
    assert not (run_dir / "rounds" / "round_002.json").exists()

    # once the disk has room again, the run resumes from round 1's checkpoint
    config = {**_config(out), "resume-from": str(run_dir)}
    nodes = [{"site-name": f"site-{i}", "dataset-root": str(demo_root / f"site-{i}")}
             for i in range(2)]
    run_inprocess(config, nodes, 84, client_app=SyntheticSites())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and latest_checkpoint(run_dir)[0] == 3
    assert [r["resumed_after_round"] for r in meta["runs"][1:]] == [1]
