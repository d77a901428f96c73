"""A strategy's state next to a checkpoint: ``strategy_state.npz`` (plain named arrays).

Strategies expose what they carry from round to round beyond the global weights as
``state_arrays()`` (SCAFFOLD's ``c`` and its per-site counts, ...); saved with every global
checkpoint so a resumed run continues with the same state (``load_state_arrays``). Written
atomically, 0600 (control variates are derived from the sites' data), no pickle on reading.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common import atomic

STATE_FILE = "strategy_state.npz"


def save_state(checkpoint: Path, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Write ``arrays`` into ``checkpoint``/strategy_state.npz; nothing for a stateless one."""
    if not arrays:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **dict(arrays))
    return atomic.write_bytes(Path(checkpoint) / STATE_FILE, buffer.getvalue(), mode=0o600)


def load_state(checkpoint: Path) -> dict[str, np.ndarray]:
    """The arrays :func:`save_state` wrote (empty if the strategy had none)."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
