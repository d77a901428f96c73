"""What a lab member looks at after a run: per-joint plots, the summary page, W&B, the export.

One federated run, zk0's unchanged ServerApp driving zk0's unchanged ClientApp in this process
(:mod:`harness.inprocess_grid`) on real LeRobot datasets with the real (tiny) SmolVLA, with
trajectories on, W&B tracking in offline mode, one site that keeps its trajectories to itself
and fails one round. Every check reads the files the run wrote.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.settings import RunConfig
from harness.inprocess_grid import run_inprocess

SHARING = ["site-0", "site-1"]
PRIVATE = "site-2"  # share-trajectories = false, and its round-2 training fails
ROUNDS = 2
FRAMES = 25  # fewer than an episode's 30: the plot is the episode's first 25 frames
SEED = 3
FAKE_KEY = "zk0-fake-wandb-key-that-must-never-be-written-0123456789"
RUN = {
    "policy": "smolvla-tiny", "num-server-rounds": ROUNDS, "local-steps": 2, "batch-size": 4,
    "eval-samples": 4, "eval-batch-size": 4, "min-sites": 3, "seed": SEED,
    # float32 on the wire: the sites evaluate exactly the weights the checkpoint holds
    "wire-dtype": "float32",
    "trajectory-every": 1, "trajectory-frames": FRAMES, "tracking": "wandb",
}


class FailPrivateSiteInRound2:
    """zk0's ClientApp, except that the private site's round-2 training raises."""

    def __init__(self):
        from supernode.client_app import app

        self.app = app

    def __call__(self, msg, context):
        from common.protocol import CONFIG

        config = msg.content.config_records.get(CONFIG)
        if (context.node_config["site-name"] == PRIVATE and msg.metadata.message_type == "train"
                and config is not None and int(config["server-round"]) == 2):
            raise RuntimeError("simulated <b>crash</b> & burn")
        return self.app(msg, context)


@pytest.fixture(scope="module")
def run(demo_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("outputs")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR")}
    os.environ.update({"WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_KEY})
    try:
        config = RunConfig.with_overrides({**RUN, "output-dir": str(work / "runs")}).to_flwr()
        nodes = [{"site-name": s, "dataset-root": str(demo_root / s), "torch-threads": 1,
                  "state-dir": str(work / "state" / s)} for s in [*SHARING, PRIVATE]]
        nodes[-1]["share-trajectories"] = False
        run_dir = run_inprocess(config, nodes, 77, client_app=FailPrivateSiteInRound2())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return run_dir, work, demo_root


def _json(path: Path):
    return json.loads(path.read_text())


def _episode_actions(root: Path, episode: int) -> np.ndarray:
    """The recorded actions of one episode, read straight from the dataset's parquet files."""
    table = pq.read_table(sorted((root / "data").glob("*/*.parquet")),
                          columns=["episode_index", "frame_index", "action"]).to_pandas()
    rows = table[table.episode_index == episode].sort_values("frame_index")
    return np.stack(rows["action"].to_numpy()).astype(np.float32)


# -- per-joint plots -------------------------------------------------------------------------


def test_a_plot_per_sharing_site_per_evaluated_model(run):
    run_dir, work, _ = run
    history = _json(run_dir / "eval_history.json")
    assert history["rounds"] == [0, 1, 2]
    for r in (0, 1, 2):
        plotted = history["trajectories"][str(r)]
        assert sorted(plotted["plots"]) == SHARING
        for site in SHARING:
            png = run_dir / f"plots/round_{r:03d}/{site}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        assert not (run_dir / f"plots/round_{r:03d}/{PRIVATE}.png").exists()
    # the private site: a note at the SuperLink, the plot on its own disk, owner-only
    assert history["trajectories"]["0"]["notes"] == {
        PRIVATE: "kept at the site (share-trajectories = false)"}
    kept = sorted((work / "state" / PRIVATE / "run-77" / "plots").iterdir())
    assert [p.name for p in kept] == ["round_000.png", "round_002.png"]  # round 2 failed
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert not (run_dir / "trajectories" / "round_000" / f"{PRIVATE}.json").exists()


def test_plotted_recording_is_the_held_out_episode_of_the_dataset(run):
    from common.plotting import trajectory_figure
    from common.trajectory import Trajectory
    from supernode.local_site import Site
    from supernode.trajectory import plotted_episode

    run_dir, _, demo_root = run
    for site_name in SHARING:
        site = Site.open({"site-name": site_name, "dataset-root": str(demo_root / site_name)},
                         RunConfig.with_overrides(RUN).to_flwr())
        traj = Trajectory.from_json(_json(run_dir / f"trajectories/round_002/{site_name}.json"))
        assert traj.episode == plotted_episode(site.split.eval, SEED)
        assert traj.episode in site.split.eval and traj.episode not in site.split.train
        recorded = _episode_actions(demo_root / site_name, traj.episode)[:FRAMES]
        np.testing.assert_array_equal(traj.recorded, recorded)
        np.testing.assert_array_equal(traj.frame_index, np.arange(FRAMES))
        np.testing.assert_array_equal(traj.chunk_starts, [0, 10, 20])  # n_action_steps = 10
        info = _json(demo_root / site_name / "meta" / "info.json")
        assert list(traj.names) == info["features"]["action"]["names"]
        assert traj.units == ("deg",) * 5 + ("% of range",)

        fig = trajectory_figure(traj, "t")
        panels = [ax for ax in fig.axes if ax.lines]
        assert len(panels) == recorded.shape[1] == 6
        for j, ax in enumerate(panels):
            lines = {line.get_label(): line for line in ax.lines}
            np.testing.assert_array_equal(lines["recorded"].get_ydata(), recorded[:, j])
            np.testing.assert_array_equal(lines["predicted"].get_ydata(), traj.predicted[:, j])
            assert ax.get_title().startswith(traj.names[j]) and ax.get_ylabel() == traj.units[j]


def test_plotted_prediction_is_what_the_published_checkpoint_predicts(run):
    """The final model's plot, recomputed from the LeRobot checkpoint loaded from disk."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from common.policy_factory import LoadedPolicy
    from common.trajectory import Trajectory
    from supernode.local_site import Site
    from supernode.trajectory import predict_trajectory

    run_dir, _, demo_root = run
    ckpt = run_dir / "checkpoints" / "last" / "pretrained_model"
    policy = SmolVLAPolicy.from_pretrained(ckpt)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(ckpt))
    site = Site.open({"site-name": "site-0", "dataset-root": str(demo_root / "site-0")},
                     RunConfig.with_overrides(RUN).to_flwr())
    plotted = Trajectory.from_json(_json(run_dir / "trajectories/round_002/site-0.json"))
    again = predict_trajectory(LoadedPolicy(policy, pre, post), site.eval_dataset(),
                               plotted.episode, FRAMES, RUN["eval-batch-size"], SEED)
    np.testing.assert_allclose(again.predicted, plotted.predicted, rtol=1e-4, atol=1e-3)
    # and the model moved: the starting model's plot differs
    first = Trajectory.from_json(_json(run_dir / "trajectories/round_000/site-0.json"))
    assert np.abs(first.predicted - plotted.predicted).max() > 1.0


def test_trajectory_seconds_are_reported_per_site(run):
    run_dir, _, _ = run
    round_2 = _json(run_dir / "rounds" / "round_002.json")
    for site in SHARING:  # round 2's train replies carry the eval of the model after round 1
        assert 0 < round_2["sites"][site]["trajectory_seconds"] < 120


# -- summary page ----------------------------------------------------------------------------


def test_summary_page_renders_in_a_browser(run, tmp_path, chromium):
    from PIL import Image

    run_dir, _, _ = run
    page = run_dir / "summary.html"
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 1 + len(SHARING)  # chart + plots
    assert "simulated &lt;b&gt;crash&lt;/b&gt; &amp; burn" in html and "<b>crash" not in html
    assert "kept at the site" in html and "finished in" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html

    shot = tmp_path / "summary.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,2000", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "screenshot is blank"
    assert (pixels < 200).mean() > 0.03, "screenshot shows almost nothing"
    # the plots are drawn: dark ink in the lower half of the page, where the panels are
    assert (pixels[1000:] < 128).mean() > 0.005


def test_summary_page_of_a_failed_run_says_why(tmp_path):
    from superlink.summary import render_summary

    (tmp_path / "run.json").write_text(json.dumps({
        "run_id": 5, "run_config": {"num-server-rounds": 3}, "failed": "ValueError: <oops>"}))
    html = render_summary(tmp_path)
    assert "failed: ValueError: &lt;oops&gt;" in html and "<oops>" not in html
    assert "http-equiv" not in html  # no auto-refresh once the run is over


# -- W&B -------------------------------------------------------------------------------------


def _wandb_records(run_dir: Path) -> list:
    """Every record of the offline W&B run, read with wandb's own transaction-log reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    store = DataStore()
    store.open_for_scan(str(log))
    records = []
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        records.append(record)
    return records


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def _media(row: dict, key: str) -> dict:
    """A logged media object (image, table): W&B stores its fields as nested keys."""
    return {k[len(key) + 1:]: v for k, v in row.items() if k.startswith(f"{key}/")}


def test_wandb_offline_run_holds_config_metrics_plots_and_failures(run):
    run_dir, _, _ = run
    records = _wandb_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.run_id == "zk0-77" and start.project == "zk0"
    config = _items(start.config.update)
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config |= _items(r.config.update)
    assert config["local-steps"] == 2 and config["strategy"] == "diloco"
    assert set(config["sites"]) == {*SHARING, PRIVATE}

    rows: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = _items(r.history.item)
            rows.setdefault(int(row["_step"]), {}).update(row)
    history = _json(run_dir / "eval_history.json")
    for i, step in enumerate(history["rounds"]):
        assert rows[step]["eval/mse"] == pytest.approx(history["weighted"][i])
        for site, values in history["per_site"].items():
            if values[i] is not None:
                assert rows[step][f"eval/mse/{site}"] == pytest.approx(values[i])
        for site in SHARING:
            image = _media(rows[step], f"trajectory/{site}")
            media = next(run_dir.glob("wandb/offline-run-*/files")) / image["path"]
            assert image["_type"] == "image-file" and media.is_file()
    for r in (1, 2):
        entry = _json(run_dir / "rounds" / f"round_{r:03d}.json")
        assert rows[r]["train/loss"] == pytest.approx(entry["train_loss"])
        assert rows[r]["bytes/uplink"] == entry["uplink_bytes"] > 0
        for site, report in entry["sites"].items():
            assert rows[r][f"train/loss/{site}"] == pytest.approx(report["train_loss"])
    assert rows[1]["sites/failed"] == 0
    assert rows[2]["sites/failed"] == 1 and rows[2][f"failed/{PRIVATE}"] == "error"
    assert _media(rows[2], "failures")["_type"] == "table-file"
    assert kinds[-1] == "exit"


def test_wandb_records_neither_the_api_key_nor_the_command_line(run):
    """Flower starts the ServerApp with its run token on the command line (``--token``)."""
    run_dir, work, _ = run
    for path in work.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    for record in _wandb_records(run_dir):
        if record.WhichOneof("record_type") == "environment":
            assert list(record.environment.args) == [] and not record.environment.program


def test_tracking_needs_a_key_online_and_says_so(tmp_path, monkeypatch):
    from common.settings import SettingsError
    from superlink.tracking import open_tracker

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    run = RunConfig.with_overrides({"tracking": "wandb"})
    with pytest.raises(SettingsError, match=r"tracking.*WANDB_API_KEY"):
        open_tracker(run, tmp_path, 1, {})
    assert not open_tracker(RunConfig.with_overrides({}), tmp_path, 1, {}).active


# -- export ----------------------------------------------------------------------------------


def _card_table(card: str) -> dict[str, list[float | None]]:
    lines = [line for line in card.splitlines() if line.startswith("| model after round")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    start = card.splitlines().index(lines[0]) + 2
    columns: dict[str, list] = {h: [] for h in head}
    for line in card.splitlines()[start:]:
        if not line.startswith("|"):
            break
        for h, cell in zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True):
            columns[h].append(None if cell == "-" else cell)
    return columns


def test_export_writes_a_lerobot_folder_with_a_model_card(run, tmp_path, capsys):
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from deploy.cli import main

    run_dir, _, _ = run
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    for needed in ("README.md", "config.json", "model.safetensors", "policy_preprocessor.json",
                   "policy_postprocessor.json", "eval_mse.png", "zk0_run.json"):
        assert needed in names, names
    assert not any(n.startswith("plots") or n.startswith("trajectories") for n in names)

    policy = SmolVLAPolicy.from_pretrained(out)
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(out))
    ckpt = run_dir / "checkpoints" / "last" / "pretrained_model"
    ckpt_pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(ckpt))

    def stats(processor):
        step = next(s for s in processor.steps if type(s).__name__ == "NormalizerProcessorStep")
        return step.stats

    assert set(stats(pre)) >= {"action", "observation.state"}
    for feature, values in stats(ckpt_pre).items():
        for key, value in values.items():
            np.testing.assert_array_equal(np.asarray(stats(pre)[feature][key]),
                                          np.asarray(value))
    original = SmolVLAPolicy.from_pretrained(ckpt).state_dict()
    for name, value in policy.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), original[name].numpy())

    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: lerobot" in front and "- federated-learning" in front
    assert "base_model" not in front  # the tiny preset has no Hub base model
    history = _json(run_dir / "eval_history.json")
    table = _card_table(card)
    assert [c.split()[0].strip("*") for c in table["model after round"]] == ["0", "1", "2"]
    for site, values in history["per_site"].items():
        assert table[site] == [None if v is None else f"{v:.2f}" for v in values]
    assert table["weighted"] == [f"{v:.2f}" for v in history["weighted"]]
    assert "| strategy | diloco (server lr 0.7, momentum 0.9)" in card and "float32" in card
    for site in (*SHARING, PRIVATE):
        assert f"| {site} |" in card

    # --push-to-hub --dry-run: lists the upload, sends nothing, needs no token
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out), "--force", "--round", "1",
                 "--push-to-hub", "lab/zk0-smolvla", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload 9 files" in printed and "https://huggingface.co/lab/zk0-smolvla" in printed
    assert "model.safetensors" in printed and "nothing uploaded" in printed
    assert _json(out / "zk0_run.json")["round"] == 1


def test_export_refuses_what_it_cannot_do(run, tmp_path, capsys, monkeypatch):
    from deploy.cli import main

    run_dir, _, _ = run
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--out", str(occupied)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert (occupied / "keep.txt").read_text() == "mine"
    assert main(["export", str(run_dir), "--out", str(tmp_path / "x"), "--round", "9"]) == 1
    assert "kept rounds: ['000001', '000002']" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "y"),
                 "--push-to-hub", "lab/zk0"]) == 1
    assert "set HF_TOKEN" in capsys.readouterr().err
