"""Real faults in real LeRobot datasets on disk, for the bad-data and dataset-check tests.

Each helper damages a copy of a generated demo dataset the way lab data breaks: bytes of a
video's packets overwritten (an undecodable stretch), a file deleted or truncated, metadata
rewritten (7-D state, duplicated timestamps). Nothing is mocked: the code under test reads
these files with LeRobot, PyArrow and PyAV exactly as it reads a lab's recordings.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def copy_site(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def video_file(root: Path, key: str) -> Path:
    [path] = sorted((root / "videos" / key).glob("chunk-*/file-*.mp4"))
    return path


def episode_span(root: Path, key: str, episode: int) -> tuple[float, float]:
    """(from, to) timestamps of ``episode`` inside its camera's video file."""
    table = pq.read_table(next((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")))
    row = table.filter(pa.compute.equal(table["episode_index"], episode)).to_pylist()[0]
    return float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])


def corrupt_video_frames(
    root: Path, key: str, episode: int, frames: Iterable[int], fps: int = 30, seed: int = 0
) -> Path:
    """Overwrite the payload bytes of the video packets of ``frames`` of ``episode`` with noise
    (the container stays intact: the decoder, not the demuxer, hits the damage). Returns the
    damaged file."""
    import av

    path = video_file(root, key)
    start, _ = episode_span(root, key, episode)
    wanted = {round((start + f / fps) * fps) for f in frames}
    spans = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.pos is None or packet.size == 0:
                continue
            if round(float(packet.pts * stream.time_base) * fps) in wanted:
                spans.append((packet.pos, packet.size))
    assert spans, f"no packets for episode {episode} frames {sorted(wanted)} in {path}"
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for pos, size in spans:
        for i in range(pos, pos + size):
            data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def data_file(root: Path) -> Path:
    [path] = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    return path


def rewrite_table(path: Path, edit) -> None:
    """Replace the parquet table at ``path`` by ``edit(table)`` (same schema metadata)."""
    table = pq.read_table(path)
    pq.write_table(edit(table), path)


def duplicate_timestamps(root: Path, episode: int, frame: int, fps: int = 30) -> None:
    """Give ``frame`` of ``episode`` the timestamp of the frame before it (a recorder that
    wrote one clock reading twice)."""
    set_value(root, episode, frame, "timestamp", (frame - 1) / fps)


def widen_state(root: Path, extra: float = 0.0) -> None:
    """Make ``observation.state`` 7-D (a seventh joint) in the table and in meta/info.json."""
    path = data_file(root)

    def edit(table: pa.Table) -> pa.Table:
        rows = table.to_pydict()
        rows["observation.state"] = [[*v, extra] for v in rows["observation.state"]]
        field = pa.field("observation.state", pa.list_(pa.float32(), 7))
        schema = table.schema.set(table.schema.get_field_index("observation.state"), field)
        return pa.Table.from_pydict(rows, schema=schema)

    rewrite_table(path, edit)

    def seventh(info: dict) -> None:
        state = info["features"]["observation.state"]
        state["shape"] = [7]
        state["names"] = [*state["names"], "seventh_joint.pos"]

    edit_info(root, seventh)


def edit_rows(root: Path, edit_row) -> None:
    """Apply ``edit_row(rows, i)`` (rows: the table's columns as lists) to every row."""
    path = data_file(root)

    def edit(table: pa.Table) -> pa.Table:
        rows = table.to_pydict()
        for i in range(table.num_rows):
            edit_row(rows, i)
        return pa.Table.from_pydict(rows, schema=table.schema)

    rewrite_table(path, edit)


def set_value(root: Path, episode: int, frame: int, column: str, value) -> None:
    """Set one cell of the data table (``value`` may be a callable of the old value)."""

    def edit_row(rows: dict, i: int) -> None:
        if rows["episode_index"][i] == episode and rows["frame_index"][i] == frame:
            old = rows[column][i]
            rows[column][i] = value(old) if callable(value) else value

    edit_rows(root, edit_row)


def edit_info(root: Path, edit) -> None:
    """Rewrite meta/info.json through ``edit(info: dict)``."""
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info, indent=4))
