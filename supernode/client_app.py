"""zk0's ClientApp: Flower's entry point at a lab, one process per server message.

What a message asks of the site (stats / train / evaluate) is :mod:`supernode.tasks`. With a
``worker-socket`` in the node config this ClientApp is a thin relay: it hands the message to
the site's long-lived worker (:mod:`supernode.worker`, which keeps torch, LeRobot, the policy
and the dataset loaded across rounds) and returns the worker's reply. Without one it runs the
task in its own process, as a plain Flower SuperNode does. It imports nothing heavy at module
level: Flower starts a fresh ``flwr-clientapp`` process for every message.

Every instruction is checked for the coordinator's signature and every reply signed with the
node's key (:mod:`supernode.authenticity`), here in the ClientApp whichever process computed
the reply.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from common.logs import get_logger
from common.protocol import METRICS, NOTICE, ExclusionNotice, SiteReport
from supernode.authenticity import authenticity_mod
from supernode.metrics import observed, record_report, site_label

app = ClientApp(mods=[authenticity_mod])
log = get_logger("zk0.supernode")


def _reply(msg: Message, context: Context) -> Message:
    args = (msg.metadata.message_type, msg.content, context.node_config, context.run_config,
            context.run_id)
    worker = str(context.node_config.get("worker-socket", "") or "")
    content: RecordDict
    if worker:
        from supernode.relay import relay

        content = relay(worker, *args)
    else:
        from supernode import tasks

        content = tasks.handle(*args)
    if METRICS in content.metric_records:  # the site's own series (supernode.metrics)
        record_report(site_label(context.node_config),
                      SiteReport.from_record(content.metric_records[METRICS]))
    return Message(content, reply_to=msg)


@app.query("stats")
@observed("stats")
def stats(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.query("excluded")
def excluded(msg: Message, context: Context) -> Message:
    """The server left this site out at stage 0: say why in this site's own log."""
    notice = ExclusionNotice.from_record(msg.content.config_records[NOTICE])
    log.error("excluded_from_federation", site=notice.site_name, reason=notice.reason,
              hint="make this dataset's features match the federation's, then restart the "
                   "SuperNode; the other sites go on without this one")
    return Message(RecordDict(), reply_to=msg)


@app.train()
@observed("train")
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.evaluate()
@observed("evaluate")
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context)
