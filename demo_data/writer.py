"""Writing the simulated sites as LeRobot v3 datasets, all or nothing.

A site is built in a temporary sibling folder and renamed into place only once finalised, so
an interrupted run never leaves a half-written dataset that looks whole; existing data is
replaced only when asked, and every target is checked before minutes go into generating.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from common import atomic
from demo_data.conditions import site_conditions
from demo_data.episodes import simulate_site
from demo_data.spec import CAMERA_KEYS, FPS, ROBOT_TYPE, DemoSpec, demo_features
from demo_data.tasks import task_text

# PNG encoding releases the GIL: two writer threads overlap it with simulation (~20% faster).
_IMAGE_WRITER_THREADS = 2

# Receives one line per site written (``print`` on a terminal); None: write silently.
Progress = Callable[[str], object] | None


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence the per-episode ``Map:`` bars of HF datasets while writing (two per episode and
    camera: noise on a terminal, pages of it in a CI log), and restore them afterwards."""
    import datasets

    were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()


def _prepare_target(root: Path, overwrite: bool) -> None:
    """Refuse to clobber data unless asked; fail before spending time generating."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{root} already exists and is not empty; pass overwrite=True (--overwrite) to "
            "replace it"
        )


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(top.iterdir()):
        top.rmdir()


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Give the calling thread back its scheduling policy after video encoding.

    SVT-AV1 (LeRobot's AV1 encoder, through PyAV) moves the calling thread to SCHED_FIFO
    priority 99 when it runs as root. Every process started from that thread afterwards
    inherits the real-time policy: a Go binary (docker compose, promtool) then spins at 100 %
    CPU starving its own threads, and a federation's processes starve each other. Checked
    against lerobot 0.6.1's default encoder on these machines.
    """
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        now = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
        if now != (policy, param.sched_priority):
            os.sched_setscheduler(0, policy, param)


def _write_site(folder: Path, site_index: int, spec: DemoSpec) -> None:
    """Fill the empty ``folder`` with site ``site_index``'s finalised dataset."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    build = folder / "dataset"  # LeRobotDataset.create insists on creating its root itself
    with quiet_progress_bars(), keep_scheduling():
        dataset = LeRobotDataset.create(
            repo_id=f"local/site-{site_index}",
            fps=FPS,
            features=demo_features(spec),
            root=build,
            robot_type=ROBOT_TYPE,
            use_videos=spec.use_videos,
            video_backend="pyav",  # the default probes torchcodec and may print a traceback
            image_writer_threads=_IMAGE_WRITER_THREADS,
        )
        try:
            for episode in simulate_site(site_index, spec):
                for t in range(len(episode.action)):
                    dataset.add_frame(
                        {
                            "observation.state": episode.state[t],
                            "action": episode.action[t],
                            CAMERA_KEYS[0]: episode.top[t],
                            CAMERA_KEYS[1]: episode.wrist[t],
                            "task": episode.task,
                        }
                    )
                # Encoding in-process: tiny clips gain nothing from forking a process that
                # runs image-writer threads (which risks deadlocks in the child).
                dataset.save_episode(parallel_encoding=False)
        except BaseException:
            # Close lerobot's writers now: left to garbage collection, they flush their
            # parquet files into the staging folder after it has been removed.
            with contextlib.suppress(Exception):
                dataset.finalize()
            raise
        dataset.finalize()
    _remove_empty_dirs(build / "images")  # lerobot's per-frame scratch folders
    for child in build.iterdir():
        child.rename(folder / child.name)
    build.rmdir()


def make_demo_site(root: Path, site_index: int, spec: DemoSpec, overwrite: bool = False) -> Path:
    """Write site ``site_index`` as a LeRobotDataset (repo_id ``local/site-{i}``) at ``root``.

    The dataset is built in a temporary sibling folder and swapped into place only once
    finalised (:func:`common.atomic.write_dir`), so an interrupted run never leaves a
    half-written dataset that looks whole, nor the temporary folder.
    """
    root = Path(root)
    _prepare_target(root, overwrite)
    atomic.write_dir(root, lambda folder: _write_site(folder, site_index, spec))
    return root


def make_demo_datasets(
    out_root: Path,
    spec: DemoSpec | None = None,
    overwrite: bool = False,
    progress: Progress = None,
) -> list[Path]:
    """Write every site to ``out_root/site-{i}`` (default spec: ``DemoSpec()``); returns the
    dataset roots in site order.

    ``progress`` gets one line per site as it is written (which folder, how much, which task),
    so a terminal shows steady progress instead of the libraries' per-episode bars.
    """
    spec = spec or DemoSpec()
    out_root = Path(out_root)
    roots = [out_root / f"site-{i}" for i in range(spec.num_sites)]
    for root in roots:  # check all targets first: failing at site 3 after minutes is worse
        _prepare_target(root, overwrite)
    import lerobot.datasets.lerobot_dataset  # noqa: F401  (seconds: not site-0's time)

    for i, root in enumerate(roots):
        start = time.perf_counter()
        make_demo_site(root, i, spec, overwrite)
        if progress is not None:
            progress(
                f"site-{i}: {root}  ({spec.episodes_per_site} episodes x "
                f"{spec.frames_per_episode} frames, task: "
                f"{task_text(site_conditions(i, spec.scenario, spec.seed))!r}, "
                f"{time.perf_counter() - start:.1f} s)"
            )
    return roots
