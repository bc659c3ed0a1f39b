"""Competing consumers: three processes share the work of one stream.

    python examples/competing_consumers.py

Each consumer process runs the same ``@streaming`` function on the same
stream. Claims are atomic, so every window goes to exactly one of them; the
script checks that every message was processed once. The processes could as
well run on different machines, given a store they all reach (MongoDB).

Each consumer stops when ``True`` arrives on its own queue (``queue=``); a
consumer also stops on SIGTERM or Ctrl-C, finishing the window it holds.
"""
import collections
import multiprocessing
import os
import time

import minibatch as mb

STREAM = 'competing-consumers'
CONSUMERS = 3
MESSAGES = 60


class QueueSink:
    """A sink: minibatch calls ``put(result)`` after each successful window."""

    def __init__(self, queue):
        self.queue = queue

    def put(self, data):
        self.queue.put(data)


def consumer(stop_queue, results):
    # runs in a child process; blocks until True arrives on stop_queue
    @mb.streaming(STREAM, size=5, executor='inline', queue=stop_queue, sink=QueueSink(results))
    def work(window):
        time.sleep(0.1)  # pretend to work, so that the windows spread over the consumers
        return {'pid': os.getpid(), 'ids': [message['id'] for message in window.data]}


def main():
    stream = mb.stream(STREAM)
    stream.clear()

    results = multiprocessing.Queue()
    stops = [multiprocessing.Queue() for _ in range(CONSUMERS)]
    processes = [multiprocessing.Process(target=consumer, args=(stop, results)) for stop in stops]
    for process in processes:
        process.start()

    # the producer: ten batches of six messages, one write per batch
    for batch in range(MESSAGES // 6):
        stream.append([{'id': batch * 6 + i} for i in range(6)])
        time.sleep(0.05)

    seen = []
    per_consumer = collections.Counter()
    deadline = time.monotonic() + 15
    while len(seen) < MESSAGES and time.monotonic() < deadline:
        try:
            result = results.get(timeout=0.5)
        except Exception:  # queue.Empty: nothing yet
            continue
        seen += result['ids']
        per_consumer[result['pid']] += 1

    for stop in stops:
        stop.put(True)  # each consumer finishes its window and returns
    for process in processes:
        process.join(timeout=30)

    for pid, windows in sorted(per_consumer.items()):
        print(f'consumer {pid}: {windows} windows')
    duplicates = len(seen) - len(set(seen))
    missing = set(range(MESSAGES)) - set(seen)
    print(f'{len(set(seen))} of {MESSAGES} messages processed, {duplicates} twice, {len(missing)} missing')
    if duplicates or missing:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
