"""Baseline for `floe bench --queue`: the same workload on RabbitMQ.

Preloads N persistent 1 KiB messages into a durable classic queue (publisher confirms,
not timed), then C consumer processes with manual acks (prefetch = batch, one
`multiple=True` ack per batch) drain it. Prints acked/s.

    python3 bench/rabbitmq_queue.py --records 50000 --consumers 5 --batch 100
"""

import argparse
import multiprocessing as mp
import time

import pika

QUEUE = "floe-bench-baseline"


def params(url):
    return pika.URLParameters(url)


def preload(url, n, size):
    conn = pika.BlockingConnection(params(url))
    ch = conn.channel()
    ch.queue_delete(queue=QUEUE)
    ch.queue_declare(queue=QUEUE, durable=True)
    ch.confirm_delivery()
    body = ("x" * size).encode()
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(n):
        ch.basic_publish(exchange="", routing_key=QUEUE, body=body, properties=props)
    conn.close()


def consume(url, batch, total, counter, done):
    conn = pika.BlockingConnection(params(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=batch)
    pending = 0
    last_tag = None
    for method, _props, _body in ch.consume(QUEUE, inactivity_timeout=0.2):
        if method is None:
            if pending:
                ch.basic_ack(delivery_tag=last_tag, multiple=True)
                with counter.get_lock():
                    counter.value += pending
                pending = 0
            if done.is_set() or counter.value >= total:
                break
            continue
        pending += 1
        last_tag = method.delivery_tag
        if pending >= batch:
            ch.basic_ack(delivery_tag=last_tag, multiple=True)
            with counter.get_lock():
                counter.value += pending
                if counter.value >= total:
                    done.set()
            pending = 0
        if done.is_set():
            break
    ch.cancel()
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--records", type=int, default=50000)
    ap.add_argument("--consumers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--record-bytes", type=int, default=1024)
    a = ap.parse_args()
    preload(a.url, a.records, a.record_bytes)
    counter = mp.Value("q", 0)
    done = mp.Event()
    procs = [mp.Process(target=consume, args=(a.url, a.batch, a.records, counter, done)) for _ in range(a.consumers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    while counter.value < a.records:
        time.sleep(0.005)
    secs = time.monotonic() - t0
    done.set()
    for p in procs:
        p.join(timeout=5)
    rate = a.records / secs
    mib = a.records * a.record_bytes / 1048576 / secs
    print(f"rabbitmq: {a.consumers} consumers, batch {a.batch}: {a.records} acked in {secs:.2f} s = {rate:.0f} acked/s ({mib:.1f} MiB/s)")


if __name__ == "__main__":
    main()
