"""Heterogeneous SO-100 demo datasets (real LeRobotDatasets) for demos, tests and benchmarks."""
