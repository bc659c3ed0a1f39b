"""Dead letters: a message that keeps failing is set aside, not retried forever.

    python examples/dead_letters.py

The function below cannot digest a 'poison' message. minibatch retries its
window with a growing pause (``retry_backoff``); after ``max_attempts``
failed deliveries the message becomes a dead letter. The other messages are
processed normally. Once the function is fixed, ``stream.requeue()`` puts the
dead letters back into the stream and they are processed.
"""
import logging
import time

import minibatch as mb

STREAM = 'dead-letters'

# minibatch logs each failed attempt as a warning; show them briefly
logging.basicConfig(level=logging.WARNING, format='  log: %(message)s')


def wait_until_settled(stream, timeout=15):
    """Wait until no message is waiting, held or due for a retry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = stream.stats()
        if counts['available'] == counts['claimed'] == counts['retry'] == 0:
            return counts
        time.sleep(0.1)
    raise TimeoutError(f'stream {stream.name!r} did not settle: {stream.stats()}')


def consume(stream, fn):
    """Run ``fn`` on the stream until every message is settled, then stop."""
    emitter = mb.streaming(stream.name, size=1, executor='inline', blocking=False,
                           max_attempts=3,      # deliveries before a message is dead-lettered
                           retry_backoff=0.2,   # pause before the 1st retry; doubles each time
                           )(fn)
    try:
        return wait_until_settled(stream)
    finally:
        emitter.stop()
        emitter.thread.join()


def fragile(window):
    for message in window.data:
        if message.get('poison'):
            raise ValueError(f'cannot digest {message}')
    print('processed', window.data)


def robust(window):
    print('processed after requeue', window.data)


def main():
    stream = mb.stream(STREAM)
    stream.clear()
    stream.append([{'n': 1}, {'n': 2}, {'poison': True}, {'n': 3}])

    print('1. consuming with a function that fails on the poison message')
    counts = consume(stream, fragile)
    print('   stream counts:', counts)

    print('2. the dead letters')
    for message in stream.dead_letters():
        last_line = (message.error or '').strip().splitlines()[-1:]
        print(f'   id={message.id} data={message.data} attempts={message.attempts} error={last_line}')

    print('3. requeue them and consume with a fixed function')
    print('   requeued', stream.requeue())
    counts = consume(stream, robust)
    print('   stream counts:', counts)


if __name__ == '__main__':
    main()
