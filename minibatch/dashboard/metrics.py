"""``/metrics``: the figures of every stream in Prometheus' text format, read at scrape time.

:class:`StreamCollector` is a ``prometheus_client`` custom collector: each
scrape reads :func:`minibatch.status.stream_stats` for every stream of the
store (the figures of ``stream.stats()``; nothing is cached or counted
here) and yields, labelled ``stream=``:

=================================== ========= ==============================================
``minibatch_backlog``               gauge     messages waiting (available + due for a retry)
``minibatch_in_flight``             gauge     messages claimed by a consumer now
``minibatch_processed_total``       counter   messages processed, summed over consumer reports
``minibatch_failed_total``          counter   failed window attempts, summed the same way
``minibatch_dead_letters``          gauge     dead letters
``minibatch_expired_total``         counter   messages ``max_age`` removed unprocessed
``minibatch_oldest_age_seconds``    gauge     age of the oldest waiting message (0: none)
``minibatch_rate``                  gauge     messages per second of the consumers alive
``minibatch_consumers_alive``       gauge     consumers whose last report is recent
``minibatch_window_duration_seconds`` histogram how long window functions ran
=================================== ========= ==============================================

and, labelled ``stream=`` and ``group=``, one sample per consumer group of a
stream (the ``groups`` figures of ``stream.stats()``; no samples for a stream
without groups):

=================================== ========= ==============================================
``minibatch_group_lag``             gauge     messages the group has not committed yet
``minibatch_group_lag_seconds``     gauge     age of the oldest of them (0: none)
=================================== ========= ==============================================

The histogram sums the ``window_seconds`` field of the consumer reports,
``{"le": [bounds...], "counts": [per bucket...], "sum": seconds}`` (counts
not cumulative, one more than ``le`` for ``+Inf``). A stream whose
consumers do not report it has no samples in that family.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterator
from typing import Any

from minibatch.dashboard.figures import stream_figures
from minibatch.store.base import Store, utcnow

logger = logging.getLogger('minibatch.dashboard')

#: (name, type, key of the figures, help) of the per-stream metrics
METRICS = (
    ('minibatch_backlog', 'gauge', 'backlog', 'Messages waiting to be processed (available + due for a retry).'),
    ('minibatch_in_flight', 'gauge', 'in_flight', 'Messages claimed by a consumer now.'),
    ('minibatch_processed', 'counter', 'processed', 'Messages processed, summed over the consumer reports.'),
    ('minibatch_failed', 'counter', 'failed', 'Failed window attempts, summed over the consumer reports.'),
    ('minibatch_dead_letters', 'gauge', 'dead', 'Dead letters (messages that failed too often).'),
    ('minibatch_expired', 'counter', 'expired', 'Messages removed by max_age before they were processed.'),
    ('minibatch_oldest_age_seconds', 'gauge', 'oldest_age', 'Age of the oldest waiting message (0: none waits).'),
    ('minibatch_rate', 'gauge', 'rate', 'Messages per second committed by the consumers alive.'),
    ('minibatch_consumers_alive', 'gauge', 'consumers_alive', 'Consumers whose last report is recent.'),
)
#: (name, key of a group's figures, help) of the per-group gauges
GROUP_METRICS = (
    ('minibatch_group_lag', 'lag', 'Messages of the stream the consumer group has not committed yet '
                                   '(dead letters aside).'),
    ('minibatch_group_lag_seconds', 'lag_seconds', 'Age of the oldest message the consumer group has not committed '
                                                   '(0: none).'),
)
HISTOGRAM = 'minibatch_window_duration_seconds'
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'


def merge_durations(records: list[dict[str, Any]]) -> tuple[list[float], list[int], float] | None:
    """The ``window_seconds`` histograms of consumer ``records`` summed: ``(le, cumulative, sum)``.

    Reports with other bucket bounds than the first well-formed one are
    left out (a consumer of another minibatch version), as are malformed
    ones. None when no record has one.
    """
    bounds: list[float] | None = None
    counts: list[int] = []
    total = 0.0
    for record in records:
        hist: Any = record.get('window_seconds')
        try:
            le = [float(b) for b in hist['le']]
            per_bucket = [int(c) for c in hist['counts']]
            seconds = float(hist['sum'])
        except (TypeError, KeyError, ValueError):
            continue
        if len(per_bucket) != len(le) + 1:
            continue
        if bounds is None:
            bounds, counts = le, [0] * len(per_bucket)
        if le != bounds:
            logger.debug('minibatch: window durations of consumer %r left out: other buckets', record.get('id'))
            continue
        counts = [a + b for a, b in zip(counts, per_bucket)]
        total += seconds
    if bounds is None:
        return None
    cumulative, running = [], 0
    for count in counts:
        running += count
        cumulative.append(running)
    return bounds, cumulative, total


class StreamCollector:
    """A ``prometheus_client`` collector of every stream's figures in the store ``get_store()`` returns.

    ``get_store`` is called at each scrape, so a store URL resolved late (the
    omega|ml app) is honoured. ``collect()`` reads the store; a store error
    propagates (the scrape fails, which Prometheus reports as ``up == 0``).
    """

    def __init__(self, get_store: Callable[[], Store]) -> None:
        self.get_store = get_store

    def describe(self) -> list[Any]:
        """Nothing: the families are only known at scrape time (prometheus_client then skips describing)."""
        return []

    def collect(self, now: datetime.datetime | None = None) -> Iterator[Any]:
        """The metric families, one sample per stream (or per group of a stream) each, read now from the store."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        store = self.get_store()
        now = now or utcnow()
        figures = {info.name: stream_figures(store, info.name, now) for info in store.list_streams()}
        for name, kind, key, text in METRICS:
            family_class = CounterMetricFamily if kind == 'counter' else GaugeMetricFamily
            family = family_class(name, text, labels=['stream'])
            for stream, stats in figures.items():
                family.add_metric([stream], float(stats[key]))
            yield family
        for name, key, text in GROUP_METRICS:
            gauge = GaugeMetricFamily(name, text, labels=['stream', 'group'])
            for stream, stats in figures.items():
                for group, group_figures in sorted((stats.get('groups') or {}).items()):
                    gauge.add_metric([stream, group], float(group_figures[key] or 0))
            yield gauge
        histogram = HistogramMetricFamily(HISTOGRAM, 'How long window functions ran (from the consumer reports).',
                                          labels=['stream'])
        for stream, stats in figures.items():
            merged = merge_durations(stats['consumers'])
            if merged is not None:
                bounds, cumulative, total = merged
                buckets = [(_le(b), float(c)) for b, c in zip(bounds, cumulative)] + [('+Inf', float(cumulative[-1]))]
                histogram.add_metric([stream], buckets, total)
        yield histogram


def _le(bound: float) -> str:
    return repr(float(bound))


def render(get_store: Callable[[], Store]) -> bytes:
    """The text exposition of :class:`StreamCollector` over ``get_store()``'s store, as ``/metrics`` serves it."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(get_store))
    return generate_latest(registry)
