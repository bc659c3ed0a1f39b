"""The window functions and the sink of the benchmark consumers.

They live in an importable module (not in a ``__main__`` script) so that both
libraries ship them to pool workers by reference. Settings come from
environment variables, which fork and spawn both pass on:

* ``MB_BENCH_OUTDIR``: where to write result lines;
* ``MB_BENCH_WORK``: loop iterations of pure-Python work per window (``burn``).
"""
import os
import time

from common import append_line


def noop(window):
    """Does nothing: the consumer's own cost is what is measured."""
    return None


def record_latency(window):
    """Write ``i seconds_since_append`` per message, taken when the function starts."""
    started = time.time()
    lines = '\n'.join(f"{m['i']} {started - m['t']:.6f}" for m in window.data)
    append_line(os.path.join(os.environ['MB_BENCH_OUTDIR'], f'lat-{os.getpid()}'), lines)


def burn(window):
    """CPU-bound work of a fixed size (not a fixed duration: contention must show as slower windows)."""
    x = 0
    for i in range(int(os.environ['MB_BENCH_WORK'])):
        x += i * i % 7
    return None


def calibrate(milliseconds):
    """Iterations of :func:`burn`'s loop that take about ``milliseconds`` on this machine, unloaded."""
    n = 200_000
    best = float('inf')
    for _ in range(3):
        started = time.perf_counter()
        x = 0
        for i in range(n):
            x += i * i % 7
        best = min(best, time.perf_counter() - started)
    return max(1, int(n * milliseconds / 1000.0 / best))


class ProgressSink:
    """Appends ``messages unix_time`` to ``outdir/done-<pid>`` after each window (before its commit)."""

    def __init__(self, outdir):
        self.outdir = outdir

    def put(self, data):
        count = len(data) if isinstance(data, list) else 1
        append_line(os.path.join(self.outdir, f'done-{os.getpid()}'), f'{count} {time.time():.6f}')
