"""How fast the ServerApp takes in a site's reply: zk0's bounded object-by-object pull
(:mod:`superlink.reply_uploads`) against Flower's own ``HttpGrid.pull_messages``, side by side.

A real SuperLink behind the labs' entry (TLS, node authentication, process isolation) and one
site; a throwaway Flower app whose ClientApp answers each query with ``MIB`` MiB of random
float32 arrays (4 MiB each: Flower cuts them into chunks, as it does an update) and whose
ServerApp takes the replies in with each method in turn, in the same run:

- ``settled``: the ServerApp waits ``SETTLE`` seconds after sending, so the upload is over
  before it pulls: the time is the pull alone (download, protobuf, rebuilding the message);
- ``end to end``: it pulls from the moment it sent, as a round does: the site's work and
  upload overlap the pulls (Flower retries a missing object after 1, 2, 4, ... 10 s; zk0 polls
  every 0.2 s while nothing moves).

The reference is Flower's ``HttpGrid.pull_messages``, which zk0 replaced because it waits up to
2 h for a reply whose upload stopped. Best of ``--repeats`` per method and mode.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench import BenchContext
from bench.results import Metric, Section
from common.settings import NodeConfig

REPO = Path(__file__).resolve().parent.parent
MIB = 64
SETTLE = 20.0

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "pullbench"
version = "1.0.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "zk0bench"

[tool.flwr.app.components]
serverapp = "pullbench.server:app"
clientapp = "pullbench.client:app"

[tool.flwr.app.config]
out-file = ""
mib = 64
repeats = 3
settle = 20.0
"""

APP_SERVER = '''\
"""Ask the one node for replies of `mib` MiB; take each in with Flower's pull and zk0's."""
import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from superlink.reply_uploads import reply_puller

app = ServerApp()


def flower(grid, mid):
    while not (got := list(grid.pull_messages([mid]))):
        time.sleep(0.2)
    return got[0]


def zk0(grid, mid):
    puller = reply_puller(grid, 120.0)
    while True:
        pulled = puller.pull([mid])
        if pulled.replies:
            return pulled.replies[0]
        if pulled.failed:
            raise RuntimeError(pulled.failed[0].reason)
        time.sleep(0.2)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    deadline = time.monotonic() + 120
    while not (nodes := list(grid.get_node_ids())) and time.monotonic() < deadline:
        time.sleep(0.5)
    rows, seed = [], 0
    for _ in range(int(cfg["repeats"])):
        for mode in ("settled", "end to end"):
            for name, pull in (("flower", flower), ("zk0", zk0)):
                seed += 1
                msg = Message(RecordDict({"q": ConfigRecord({"seed": seed,
                                                              "mib": int(cfg["mib"])})}),
                              nodes[0], "query")
                sent = time.perf_counter()
                [mid] = grid.push_messages([msg])
                if mode == "settled":
                    time.sleep(float(cfg["settle"]))
                start = time.perf_counter()
                reply = pull(grid, mid)
                done = time.perf_counter()
                size = sum(len(a.data) for a in reply.content["a"].values())
                rows.append({"method": name, "mode": mode, "seconds": done - start,
                             "since_sent": done - sent, "bytes": size})
    Path(str(cfg["out-file"])).write_text(json.dumps(rows))
'''

APP_CLIENT = '''\
"""Reply with `mib` MiB of random float32 arrays (4 MiB each)."""
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    rng = np.random.default_rng(int(msg.content["q"]["seed"]))
    arrays = {f"a{i}": Array(rng.standard_normal(1 << 20, dtype=np.float32))
              for i in range(int(msg.content["q"]["mib"]) // 4)}
    return Message(RecordDict({"a": ArrayRecord(arrays)}), reply_to=msg)
'''


def write_app(root: Path) -> Path:
    app = root / "pullbench"
    (app / "pullbench").mkdir(parents=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    (app / "pullbench" / "__init__.py").write_text("")
    (app / "pullbench" / "server.py").write_text(APP_SERVER)
    (app / "pullbench" / "client.py").write_text(APP_CLIENT)
    return app


def run(ctx: BenchContext) -> list[Section]:
    from deploy.cluster.local_cluster import LocalCluster

    # the ServerApp imports this checkout's superlink (the app's own FAB holds only its code)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="zk0-bench-pull-") as tmp:
        root = Path(tmp)
        app = write_app(root)
        node = NodeConfig(site_name="lab-a", dataset_root=str(root / "unused"))
        out = root / "rows.json"
        with LocalCluster(app, [node], root / "work", echo_run=False, workers=False,
                          metrics=False, startup_timeout=120) as cluster:
            result = cluster.run({"out-file": str(out), "mib": MIB, "repeats": ctx.repeats,
                                  "settle": SETTLE}, timeout=1800)
        if not result.ok or not out.is_file():
            raise RuntimeError(f"pull benchmark run failed: {result.status}\n"
                               f"{result.output[-2000:]}")
        rows = json.loads(out.read_text())
    if len({r["bytes"] for r in rows}) != 1 or rows[0]["bytes"] < MIB << 20:
        raise RuntimeError(f"a reply came back short: {rows}")  # (np.save headers on top)

    def best(method: str, mode: str) -> float:
        return min(r["seconds"] for r in rows if r["method"] == method and r["mode"] == mode)

    section = Section("reply-pull", f"Taking in one {MIB} MiB reply over the real SuperLink "
                                    "(TLS, 1 site): zk0's bounded pull vs Flower's")
    for mode in ("settled", "end to end"):
        ours, theirs = best("zk0", mode), best("flower", mode)
        section.add(
            Metric(f"Flower HttpGrid.pull_messages, {mode}", theirs, "s"),
            Metric(f"zk0 bounded pull, {mode}", ours, "s", ratio=ours / theirs,
                   reference=f"Flower HttpGrid.pull_messages, {mode}"),
        )
    section.details = {"mib": MIB, "settle_seconds": SETTLE, "rows": rows}
    return [section]
