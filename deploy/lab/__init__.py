"""A lab's box: what a lab operator runs next to its private dataset.

``launcher``: ``zk0 supernode`` (this site's SuperNode, SuperExec and worker, its settings).
``worker_supervisor``: the site worker (:mod:`supernode.worker`) as a process role, restarted
when it dies. ``rejoin``: a restarted site waits out its old node instead of failing.
``check_dataset``: ``zk0 check-dataset``. Also the lab's compose files: ``docker-compose.yml``,
``docker-compose.cpu.yml`` and ``.env.example`` (copy to ``.env``), the same container
:mod:`deploy.containers.site_container` runs through the Docker SDK.

May import: ``flower``, ``monitoring``.
"""
