"""The zk0 image and the containers made from it.

``compose_stack``: ``zk0 stack ROLE``, the zk0 roles of ``docker-compose.yml``.
``site_container`` + ``site_container_spec``: ``zk0 site-container`` (a lab's site through the
Docker SDK; the layout of ``deploy/lab/docker-compose.yml``). ``healthcheck``: the image's
``HEALTHCHECK``. ``docker/``: the image's pinned ``requirements.txt`` and stand-in images for
the tests.

May import: ``flower``, ``monitoring``, ``coordinator``, ``lab``.
"""
