"""Process orchestration for a real Flower deployment (SuperLink, SuperExec, SuperNodes).

``cli``: the ``zk0`` command (one table of sub-commands).
``processes``: one child process, started in its own process group and stopped by PID.
``flower_env``: Flower's executables and the environment of every Flower child process.
``flower_commands``: the exact Flower 1.42 command lines (TLS, node auth, process isolation).
``runtime_tls``: TLS for a SuperNode's own Runtime API.
``flwr_cli``: the ``flwr`` CLI (``--format json``): runs, node registration, connection config.
``flower_logs``: what only Flower's logs say (exit reasons, a SuperNode's node id).
``health``: ``/health`` over HTTPS.
``entry_proxy``: nginx as the labs' only entry (``/v1/fleet/*`` and ``/health``; template in
``proxy/nginx.conf.template``).
``site_registry``: ``zk0 site`` (register a site's key under its name, revoke, list).
``local_cluster``: a whole federation on 127.0.0.1 (tests, demos, benchmarks).
``cluster_cli``: ``zk0 cluster``. ``site_launcher``: ``zk0 supernode`` (a lab's box).
``metrics_export``: the long-lived Prometheus endpoints (coordinator, sites).
``coordinator_metrics``: ``zk0 coordinator-metrics``. ``prometheus_server``: the project's
Prometheus config rendered for a cluster, and Prometheus run for it. ``grafana_dashboards``:
the Grafana dashboards, as code.
"""
