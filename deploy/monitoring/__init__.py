"""Monitoring: the Prometheus endpoints zk0 serves and the Prometheus and Grafana set up on them.

``metrics_export``: the long-lived ``/metrics`` exporters (coordinator, sites).
``coordinator_metrics``: ``zk0 coordinator-metrics``. ``prometheus_server``: the project's
Prometheus config rendered for a cluster's ports, and Prometheus run on it.
``grafana_dashboards``: the Grafana dashboards, as code. Config: ``prometheus/``
(``prometheus.yml``, alert rules and their ``promtool`` tests) and ``grafana/`` (dashboards,
provisioning).

May import: ``flower``.
"""
