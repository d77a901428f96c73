"""What the demo data is: its size and seed (:class:`DemoSpec`) and its LeRobot layout.

The layout is the real SO-100 datasets' (six joints, a top and a wrist camera, 30 fps), so that
everything downstream of the data treats demo sites as it treats a lab's recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.features import SO100_FPS, SO100_JOINTS
from demo_data.conditions import SCENARIOS, Scenario

FPS = SO100_FPS
ROBOT_TYPE = "so100"
STATE_NAMES: list[str] = list(SO100_JOINTS)
CAMERA_KEYS: tuple[str, str] = ("observation.images.top", "observation.images.wrist")


@dataclass(frozen=True)
class DemoSpec:
    """Everything that shapes the generated data; same spec -> byte-identical frames."""

    num_sites: int = 4
    episodes_per_site: int = 12
    frames_per_episode: int = 60
    image_height: int = 64
    image_width: int = 64
    seed: int = 0
    use_videos: bool = False
    # "four-tasks": a task of its own per site; "shared-tasks": one task, each site's own
    # camera, light, objects, calibration and operator (demo_data.conditions)
    scenario: Scenario = "four-tasks"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {list(SCENARIOS)}")
        if self.num_sites < 1 or self.episodes_per_site < 1:
            raise ValueError("num_sites and episodes_per_site must be >= 1")
        # Fewer frames than key poses would skip whole phases of the task.
        if self.frames_per_episode < 10:
            raise ValueError(f"frames_per_episode must be >= 10, got {self.frames_per_episode}")
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError("images must be at least 16x16 pixels for the objects to be visible")


def demo_features(spec: DemoSpec) -> dict[str, dict]:
    """The LeRobot feature spec of the demo data (the same layout as the real SO-100 sets)."""
    image_dtype = "video" if spec.use_videos else "image"
    image = {
        "dtype": image_dtype,
        "shape": (spec.image_height, spec.image_width, 3),
        "names": ["height", "width", "channels"],
    }
    return {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": list(STATE_NAMES)},
        "action": {"dtype": "float32", "shape": (6,), "names": list(STATE_NAMES)},
        **{key: dict(image) for key in CAMERA_KEYS},
    }
