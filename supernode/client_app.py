"""zk0's ClientApp: Flower's entry point at a lab.

What a message asks of the site (stats / train / evaluate) is :mod:`supernode.tasks`. Two kinds
of process run this same ClientApp: the site worker (:mod:`supernode.worker`, the default),
which takes each message from the SuperNode itself and keeps torch, LeRobot, the policy and the
dataset loaded across rounds; or, on a plain Flower SuperNode (``--no-worker``), a fresh
``flwr-clientapp`` process per message. :func:`supernode.runtime.for_message` gives each the
runtime its lifetime allows. It imports nothing heavy at module level: a per-message process
loads torch only when a message needs it.

Every instruction is checked for the coordinator's signature and every reply signed with the
node's key (:mod:`supernode.authenticity`, a mod of this ClientApp), whichever process runs it.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from common.logs import get_logger
from common.packing import packing_mod
from common.protocol import METRICS, NOTICE, ExclusionNotice, SiteReport
from supernode.authenticity import authenticity_mod
from supernode.metrics import observed, record_report, site_label

# outermost first: the packing is undone before the signature is checked, redone after signing
app = ClientApp(mods=[packing_mod, authenticity_mod])
log = get_logger("zk0.supernode")


def _reply(msg: Message, context: Context) -> Message:
    from supernode import tasks
    from supernode.runtime import for_message

    content = tasks.handle(msg.metadata.message_type, msg.content, context.node_config,
                           context.run_config, context.run_id, for_message())
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
