"""Flower glue: how zk0 starts, talks to and reads Flower 1.42's own processes, and the process
plumbing every ``zk0`` role shares.

``commands``: the exact command lines (TLS, node auth, process isolation). ``env``: Flower's
executables and every Flower child's environment. ``flwr_cli``: the ``flwr`` CLI (``--format
json``): runs, node registration, connection config. ``logs``: what only Flower's logs say (exit
reasons, a SuperNode's node id). ``runtime_tls``: TLS for a SuperNode's own Runtime API.
``processes``: one child process in its own process group, stopped by PID. ``signals``: SIGTERM
and SIGHUP unwind like Ctrl-C. ``health``: ``/health`` over HTTPS.

May import: no other room (every other room builds on this one).
"""
