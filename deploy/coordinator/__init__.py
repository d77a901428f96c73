"""The coordinator's tools, run next to the SuperLink.

``site_registry``: ``zk0 site`` (register a site's key under its name, revoke, list).
``entry_proxy``: nginx as the labs' only entry (template in ``proxy/nginx.conf.template``,
shipped as package data). ``run_follow``: submit the app and follow the run to its end.
``export`` + ``model_card``: ``zk0 export`` (a run's checkpoint as a Hub-ready policy folder).

May import: ``flower``, ``monitoring``.
"""
