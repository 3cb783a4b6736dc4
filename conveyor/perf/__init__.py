"""``conveyor perf``: a load generator for any AMQP 0-9-1 broker (Conveyor, RabbitMQ, LavinMQ, ...).

``client`` is a minimal blocking-socket AMQP client, ``run`` orchestrates producer and consumer
processes and checks every message, ``cli`` is the command-line front end.
"""
