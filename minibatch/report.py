"""What a running consumer reports with its heartbeats: its counts, rate and window durations.

``stream.stats()['consumers']`` and ``minibatch status`` show these reports; the
dashboard's ``/metrics`` sums their window durations into
``minibatch_window_duration_seconds`` (see :mod:`minibatch.dashboard.metrics`).
"""
from __future__ import annotations

import bisect
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

#: the emitter's counters a report carries
COUNTERS = ('windows', 'committed', 'failed', 'processed', 'dead')

#: upper bounds (seconds) of the buckets, as Prometheus' defaults extended to slow windows
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Durations:
    """Counts of window durations per bucket, and their sum; since the consumer started. Not thread-safe."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def add(self, seconds: float) -> None:
        """Count one window that ran ``seconds`` (negative values count as 0)."""
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def report(self) -> dict[str, Any]:
        """``{'le': bounds, 'counts': per bucket (not cumulative, +Inf last), 'sum': seconds}``, for a heartbeat."""
        return {'le': list(BOUNDS), 'counts': list(self.counts), 'sum': round(self.total, 6)}


class Reporter:
    """Builds one consumer's heartbeat reports: the rate since the previous one, and :class:`Durations`."""

    def __init__(self) -> None:
        self.durations = Durations()
        self._last = (0.0, 0)  # (monotonic time, processed) at the previous report, for the rate

    def report(self, stats: Mapping[str, int], state: str, started: Any, heartbeat: float,
               in_flight: int) -> dict[str, Any]:
        """The report of now: host, pid, state, counters of ``stats``, rate (messages/s since the last report)."""
        now = time.monotonic()
        then, processed_then = self._last
        elapsed = now - then if then else 0.0
        rate = (stats['processed'] - processed_then) / elapsed if elapsed > 0 else 0.0
        self._last = (now, stats['processed'])
        return {'host': socket.gethostname(), 'pid': os.getpid(), 'started': started, 'state': state,
                'heartbeat': heartbeat, 'in_flight': in_flight, 'rate': round(rate, 3),
                'window_seconds': self.durations.report(), **{key: stats[key] for key in COUNTERS}}
