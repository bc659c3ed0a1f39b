"""A custom window strategy: emit the even values, smallest first.

    python examples/custom_emitter.py

This is the ``SortedWindow`` of the original minibatch README, written for
the current API: it looks at the stream through ``self.buffer()``, which works
on every store (``Buffer.objects`` works on MongoDB only). The emitter is built
with ``.make(fn)`` and driven by hand with ``run(blocking=False)``, which does
exactly one round: at most one window, returned once it is committed.
"""
import random

import minibatch as mb
from minibatch import WindowEmitter

STREAM = 'custom-emitter'


class SortedWindow(WindowEmitter):
    """Windows of ``interval`` even values, smallest value first.

    ``@streaming(emitter=SortedWindow, size=N)`` passes N as ``interval``.
    Odd values are never taken: they stay in the stream.
    """

    def window_ready(self):
        evens = [m for m in self.buffer() if m.data['value'] % 2 == 0]
        evens.sort(key=lambda m: m.data['value'])
        # (ready, query args): query() gets the chosen messages
        return len(evens) >= self.interval, (evens[:self.interval],)

    def query(self, messages):
        # the base class's process() then claims them atomically, so that a
        # competing consumer cannot take the same messages
        return messages


def main():
    stream = mb.stream(STREAM)
    stream.clear()
    values = random.Random(42).sample(range(100), 20)
    stream.append([{'value': v} for v in values])  # a list is one write
    print('appended', values)

    def show(window):
        print('window', [message['value'] for message in window.data])

    # .make(fn) builds the emitter without running it; 'inline' runs the
    # function in this process, which suits a step-by-step demo
    emitter = mb.streaming(STREAM, emitter=SortedWindow, size=3, executor='inline').make(show)
    for _ in range(10):
        before = emitter.stats['windows']
        emitter.run(blocking=False)  # one round
        if emitter.stats['windows'] == before:
            break  # fewer than three even values left

    left = sorted(message.data['value'] for message in stream.buffer(processed=False))
    print('left in the stream:', left)


if __name__ == '__main__':
    main()
