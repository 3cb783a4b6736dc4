"""Order service: publishes food orders to the 'order_queue' queue.

Run the broker (`conveyor serve`), start `python examples/kitchen.py` in one terminal, then
`python examples/order_service.py` in another. Orders are persistent and published with publisher
confirms, so once this script prints "confirmed", the broker has accepted the order.

Usage: python examples/order_service.py [--host HOST] [--port PORT] [--count N]
"""

from __future__ import annotations

import argparse

import pika

MENU = ["Pizza", "Pasta", "Salad", "Soup", "Burger", "Tacos"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Publish food orders to the kitchen.")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--count", type=int, default=5, help="how many orders to send (default 5)")
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.ConnectionParameters(args.host, args.port))
    channel = connection.channel()
    channel.queue_declare(queue="order_queue")
    channel.confirm_delivery()  # basic_publish now waits for the broker's ack
    for number in range(1, args.count + 1):
        body = f"Order #{number}: {MENU[(number - 1) % len(MENU)]}"
        channel.basic_publish(
            exchange="",
            routing_key="order_queue",
            body=body,
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="text/plain"),
        )
        print(f"confirmed: {body}")
    connection.close()


if __name__ == "__main__":
    main()
