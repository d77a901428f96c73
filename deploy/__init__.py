"""Running zk0: the ``zk0`` command and everything it starts, in rooms by job.

``cli``: the ``zk0`` command, one table of sub-commands (each names the module that runs it).

Rooms (sub-packages); each ``__init__`` says what lives there and which rooms it may import,
and ``tests/test_layout.py`` holds the same table and fails on an import it does not allow:

``flower``       Flower glue: Flower's command lines, environment, logs and ``flwr`` CLI, a
                 SuperNode's runtime TLS, and the process plumbing every role shares (a child
                 process stopped by PID, signals, ``/health``). Imports no other room.
``monitoring``   ``/metrics`` exporters, ``zk0 coordinator-metrics``, Prometheus and Grafana
                 (their config folders too). May import ``flower``.
``coordinator``  The coordinator's tools: ``zk0 site`` (site registry), the labs' entry proxy,
                 submitting and following a run, ``zk0 export``. May import ``flower``,
                 ``monitoring``.
``lab``          A lab's box: ``zk0 supernode``, the site worker's supervision, rejoining after a
                 restart, ``zk0 check-dataset``, and the lab's compose files. May import
                 ``flower``, ``monitoring``.
``cluster``      A whole federation on 127.0.0.1 (``zk0 cluster``, tests, demo, benchmarks): both
                 sides at once. May import ``flower``, ``monitoring``, ``coordinator``, ``lab``.
``containers``   The zk0 image and its roles: ``zk0 stack`` (``docker-compose.yml``),
                 ``zk0 site-container``, the image's ``HEALTHCHECK``, ``docker/``. May import
                 ``flower``, ``monitoring``, ``coordinator``, ``lab``.

Only ``cli`` imports (by name) every room; no room imports ``cli``.
"""
