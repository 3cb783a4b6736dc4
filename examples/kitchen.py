"""Kitchen: consumes orders from 'order_queue', "cooks" them, and acks each one when done.

Manual acknowledgements with a prefetch of 1: the broker hands this kitchen one order at a time, and
an order whose kitchen crashes before the ack goes back to the queue for another kitchen. Start two
kitchens to see orders shared between them round-robin.

Usage: python examples/kitchen.py [--host HOST] [--port PORT] [--max-orders N]
"""

from __future__ import annotations

import argparse

import pika


def main() -> None:
    parser = argparse.ArgumentParser(description="Consume and acknowledge food orders.")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--max-orders", type=int, default=0, help="stop after N orders (default: run until Ctrl-C)")
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.ConnectionParameters(args.host, args.port))
    channel = connection.channel()
    channel.queue_declare(queue="order_queue")
    channel.basic_qos(prefetch_count=1)  # one order in the kitchen at a time
    served = 0

    def on_order(ch, method, properties, body: bytes) -> None:  # type: ignore[no-untyped-def]
        nonlocal served
        print(f"cooking {body.decode()}", flush=True)
        ch.basic_ack(delivery_tag=method.delivery_tag)  # done: the broker can forget the order
        served += 1
        if args.max_orders and served >= args.max_orders:
            ch.stop_consuming()

    channel.basic_consume(queue="order_queue", on_message_callback=on_order)
    print("kitchen open, waiting for orders (Ctrl-C to close)", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        channel.stop_consuming()
    connection.close()


if __name__ == "__main__":
    main()
