"""Shared fixtures: offline environment, and small real LeRobot demo datasets on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No Hub in tests or CI: every model/dataset path must be local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def zk0_cache(tmp_path_factory) -> Path:
    """Generated presets (the tiny VLM folder) go to a per-session cache."""
    if "ZK0_CACHE" not in os.environ:
        os.environ["ZK0_CACHE"] = str(tmp_path_factory.mktemp("zk0-cache"))
    return Path(os.environ["ZK0_CACHE"])


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Four small heterogeneous SO-100 sites (6 episodes x 30 frames each)."""
    from demo_data import DemoSpec, make_demo_datasets

    root = tmp_path_factory.mktemp("demo")
    make_demo_datasets(root, DemoSpec(num_sites=4, episodes_per_site=6, frames_per_episode=30))
    return root


@pytest.fixture()
def tiny_run():
    """The run config the offline preset uses in tests."""
    from common.settings import RunConfig

    return RunConfig.with_overrides(
        {"policy": "smolvla-tiny", "local-steps": 3, "batch-size": 4, "eval-samples": 8,
         "num-server-rounds": 2}
    )


@pytest.fixture(scope="session")
def video_demo_root(tmp_path_factory) -> Path:
    """Two small sites whose cameras are AV1 video (5 episodes x 30 frames each), for the
    bad-data and dataset-check tests that damage video files."""
    from demo_data import DemoSpec, make_demo_datasets

    root = tmp_path_factory.mktemp("video-demo")
    make_demo_datasets(
        root, DemoSpec(num_sites=2, episodes_per_site=5, frames_per_episode=30, use_videos=True)
    )
    return root


@pytest.fixture(scope="session")
def nginx() -> str:
    """The nginx binary for the labs' entry proxy. Its tests skip only where nobody could
    install it here: never in CI and never as root (scripts/system-deps.sh installs it)."""
    from deploy.coordinator.entry_proxy import find_nginx

    found = find_nginx()
    if found is not None:
        return found
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail("nginx is not installed; scripts/system-deps.sh installs it (test.sh runs it)")
    pytest.skip("nginx not installed and not root: install nginx-light to test the labs' entry")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the tests that render pages headless (the summary page, the
    manual). Skips without it, except in CI (scripts/system-deps.sh installs it as root)."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; test.sh installs Debian's package when run as root")
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    return found


@pytest.fixture(scope="session")
def zk0_image():
    """The zk0 image's tag on a real Docker engine, built once per session from the top-level
    Dockerfile (or ``ZK0_TEST_IMAGE``) and shared by the compose stack's and the site
    container's tests; see tests/docker_tools.py. Skips without an engine, except in CI."""
    from docker_tools import zk0_image_session

    yield from zk0_image_session()
