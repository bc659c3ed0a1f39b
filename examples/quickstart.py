"""minibatch quick start: a producer and a consumer, no server needed.

    pip install -e .
    python examples/quickstart.py

With no store configured, minibatch keeps the stream in its embedded SQLite
file (~/.local/share/minibatch/minibatch.db; set MINIBATCH_HOME to move it).
A producer thread appends a message every 0.1 s; the consumer receives them
five at a time. After about five seconds the script stops both and exits.
"""
import datetime
import threading
import time

import minibatch as mb

STREAM = 'quickstart'
RUN_SECONDS = 5


def produce(stream, stop):
    """Append a small dict to the stream every 0.1 s until ``stop`` is set."""
    n = 0
    while not stop.is_set():
        stream.append({'n': n, 'at': datetime.datetime.now().isoformat(timespec='milliseconds')})
        n += 1
        time.sleep(0.1)


def main():
    stream = mb.stream(STREAM)
    stream.clear()  # start from an empty stream on every run
    print(f'stream {STREAM!r} on {stream.store.describe()}', flush=True)

    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(stream, stop), daemon=True)
    producer.start()

    # size=5: a window of five messages as soon as five are waiting.
    # blocking=False: the consumer runs in a background thread and the
    # decorator returns its emitter, so this script can stop it later.
    # executor='inline': the function runs in the consumer's thread; leave it
    # out to get the default, a pool of worker processes.
    @mb.streaming(STREAM, size=5, executor='inline', blocking=False)
    def show(window):
        numbers = [message['n'] for message in window.data]
        print(f'window {numbers} (first appended at {window.data[0]["at"]})', flush=True)

    time.sleep(RUN_SECONDS)

    stop.set()          # no more messages
    producer.join()
    show.stop()         # finish the window in flight, start no new one
    show.thread.join()

    print(f'{show.stats["committed"]} windows processed, {show.stats["messages"]} messages; '
          f'left in the stream: {stream.stats()["available"]}', flush=True)
    if not show.stats['committed']:
        raise SystemExit('no window was processed; see the errors above')


if __name__ == '__main__':
    main()
