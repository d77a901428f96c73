"""zk0's ClientApp: Flower's entry point at a lab, one process per server message.

What a message asks of the site (stats / train / evaluate) is :mod:`supernode.tasks`; this
module only routes the message there and wraps the reply. It imports nothing heavy at module
level: Flower starts a fresh ``flwr-clientapp`` process for every message, and torch, LeRobot
and the dataset are loaded only when this process does the work itself.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _reply(msg: Message, context: Context) -> Message:
    from supernode import tasks

    content: RecordDict = tasks.handle(
        msg.metadata.message_type, msg.content, context.node_config, context.run_config,
        context.run_id,
    )
    return Message(content, reply_to=msg)


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context)
