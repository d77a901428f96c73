"""Synthetic SO-100 demonstrations, one task archetype per site, written as LeRobot v3 datasets.

Real lab data cannot ship with the repo and the Hub is not always reachable, yet a federation
needs data with two properties to be worth testing: it must be *learnable* (the next actions
follow from what the policy observes) and *heterogeneous* (a policy trained on one lab's data
alone does badly on another lab's), while sharing enough structure (same robot, same dynamics)
that pooling the labs' knowledge helps.

The simulated world: a table seen from a fixed top camera, an SO-100 arm with a wrist camera.
The arm's joints are a fixed smooth function of an end-effector pose ``(x, y, h, roll, grip)``
(lateral position, reach, height, wrist roll, gripper opening) shared by every site. Each site
runs one task archetype: its objects (colours, where they lie), its key poses (approach path,
wrist roll, gripper timing) and its table colour differ. An episode draws the object positions
at random from the site's distribution, interpolates the site's key poses with minimum-jerk
segments (the operator's commands), and the follower arm tracks the commands with a lag plus
noise. ``action[t]`` is the command for step t+1, ``observation.state[t]`` the measured joints.
Objects are drawn at their positions in the top camera (and move once grasped, pushed or pulled),
so the goal can be read from the pixels; the wrist camera shows the objects relative to the
gripper and the gripper jaws, so it changes with the arm pose, the gripper and the progress.

Modules, one job each: :mod:`~demo_data.spec` (DemoSpec, the LeRobot layout),
:mod:`~demo_data.kinematics` (pose <-> joints, minimum-jerk moves), :mod:`~demo_data.tasks`
(the per-site archetypes), :mod:`~demo_data.conditions` (the two scenarios: a task per site, or
one shared task under each site's own camera, light, objects, calibration and operator),
:mod:`~demo_data.rendering` (the two cameras),
:mod:`~demo_data.episodes` (one simulated episode, one site's episodes),
:mod:`~demo_data.writer` (LeRobotDataset folders, all or nothing), :mod:`~demo_data.cli`
(``zk0 demo-data``).
"""

from demo_data.conditions import SCENARIOS, Scenario, SiteConditions, site_conditions
from demo_data.episodes import DemoEpisode, simulate_site
from demo_data.kinematics import joints_to_pose, pose_to_joints
from demo_data.rendering import COLOURS
from demo_data.spec import CAMERA_KEYS, FPS, ROBOT_TYPE, STATE_NAMES, DemoSpec, demo_features
from demo_data.tasks import SITE_TASKS, site_task
from demo_data.writer import make_demo_datasets, make_demo_site, quiet_progress_bars

__all__ = [
    "CAMERA_KEYS",
    "COLOURS",
    "FPS",
    "ROBOT_TYPE",
    "SCENARIOS",
    "SITE_TASKS",
    "STATE_NAMES",
    "DemoEpisode",
    "DemoSpec",
    "Scenario",
    "SiteConditions",
    "demo_features",
    "joints_to_pose",
    "make_demo_datasets",
    "make_demo_site",
    "pose_to_joints",
    "quiet_progress_bars",
    "simulate_site",
    "site_conditions",
    "site_task",
]
