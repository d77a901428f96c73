"""A whole federation on this machine (127.0.0.1, production security settings): both sides at
once, for ``zk0 cluster``, ``./demo.sh``, the end-to-end tests and the benchmarks.

``local_cluster``: :class:`~deploy.cluster.local_cluster.LocalCluster` (SuperLink behind the
entry proxy, SuperExecs, SuperNodes with their site workers, metrics). ``cli``: ``zk0 cluster``.

May import: ``flower``, ``monitoring``, ``coordinator``, ``lab``.
"""
