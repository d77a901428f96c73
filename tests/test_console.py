"""The console of a zk0 process: each Flower line once, DEBUG only when asked.

Runs a fresh Python process, as Flower starts a ServerApp or ClientApp, because the bug lived
in process-global logging state: LeRobot's module-level ``logging.info()`` installs a bare root
handler (``logging.basicConfig``) and Flower's logger propagates to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import logging
import superlink.server_app, supernode.client_app  # what a ServerApp/ClientApp imports
from flwr.common.logger import log
logging.info("a library's root-logger message")  # what LeRobot does while building a policy
logging.warning("a library warning")
log(logging.INFO, "configure_train: probe line")
log(logging.DEBUG, "flower debug probe")
from common.logs import get_logger
get_logger("zk0.test").debug("zk0 debug probe")
get_logger("zk0.test").info("zk0 info probe")
"""


def _run(level: str | None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("ZK0_LOG_LEVEL", None)
    if level:
        env["ZK0_LOG_LEVEL"] = level
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_each_flower_line_once_and_no_debug_by_default():
    out = _run(None)
    assert out.count("configure_train: probe line") == 1, out
    assert "INFO:flwr" not in out and "DEBUG:flwr" not in out
    assert "debug probe" not in out
    assert "a library's root-logger message" not in out
    assert out.count("a library warning") == 1
    assert out.count("zk0 info probe") == 1


def test_verbose_shows_debug_once():
    out = _run("DEBUG")
    assert out.count("flower debug probe") == 1, out
    assert out.count("zk0 debug probe") == 1
    assert out.count("configure_train: probe line") == 1


def test_a_wrong_level_is_named():
    from common.logs import env_level

    os.environ["ZK0_LOG_LEVEL"] = "LOUD"
    try:
        with pytest.raises(ValueError, match=r"ZK0_LOG_LEVEL='LOUD'"):
            env_level()
    finally:
        del os.environ["ZK0_LOG_LEVEL"]
