"""What a broker user may do: each operation in a connection of its own, with publisher confirms, so that a refusal
(the broker closes the channel with 403) is seen. Prints one JSON object: operation -> "allowed" or "refused <code>".

    broker_roles.py AMQP_URL ITS_ENV_ID OTHER_ENV_ID
"""
import json
import sys

import pika
import pika.exceptions


def attempt(url, action):
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError as error:
        return f"refused connection: {error!r}"
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        action(channel)
        return "allowed"
    except pika.exceptions.ChannelClosedByBroker as error:
        return f"refused {error.reply_code}"
    finally:
        if connection.is_open:
            connection.close()


def main():
    url, env, other = sys.argv[1], sys.argv[2], sys.argv[3]
    operations = {
        "publish job.submitted": lambda c: c.basic_publish("batch.events", "job.submitted", b"{}"),
        "publish env.deletion-requested": lambda c: c.basic_publish("batch.events", "env.deletion-requested", b"{}"),
        "publish a kill to another node": lambda c: c.basic_publish("batch.commands", "node.node-other", b"{}"),
        "publish a run to an environment": lambda c: c.basic_publish("batch.commands", "env.env-other", b"{}"),
        "consume the scheduler's queue": lambda c: c.basic_get("batch.scheduler"),
        "consume the dead-letter queue": lambda c: c.basic_get("batch.dead-letter"),
        "declare an exchange": lambda c: c.exchange_declare("batch.events", "topic", durable=True),
        "declare a queue of its own": lambda c: c.queue_declare("batch.stolen"),
        "publish node.heartbeat": lambda c: c.basic_publish("batch.events", "node.heartbeat", b"{}"),
        "publish a log reply": lambda c: c.basic_publish("batch.replies", "reply.nobody", b"{}"),
        "consume its environment's work queue": lambda c: c.basic_get(f"batch.env.{env}"),
        "consume another environment's work queue": lambda c: c.basic_get(f"batch.env.{other}"),
        "declare a node queue of its environment":
            lambda c: c.queue_declare(f"batch.node.{env}.node-probe", auto_delete=True),
        "declare a node queue of another environment":
            lambda c: c.queue_declare(f"batch.node.{other}.node-probe", auto_delete=True),
    }
    print(json.dumps({name: attempt(url, action) for name, action in operations.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
