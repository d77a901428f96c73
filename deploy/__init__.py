"""Process orchestration for a real Flower deployment (SuperLink, SuperExec, SuperNodes).

``processes``: one child process, started in its own process group and stopped by PID.
``flower``: the exact Flower 1.42 command lines and the ``flwr`` CLI helpers.
``local_cluster``: a whole federation on 127.0.0.1 (tests, demos, benchmarks).
"""
