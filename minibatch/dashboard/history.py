"""The figures behind the dashboard's charts: sampled, bounded, and kept in the store.

Each stream keeps its own samples in its ``status`` dict, under
``status['dashboard']['history']``, as a list of ``[time, backlog, rate]``
(time in seconds since the epoch, UTC). A sample is appended when the
newest one is older than :attr:`History.interval` seconds (30 by default),
and samples older than :attr:`History.span` (an hour) are dropped, so a
stream holds at most ``span / interval + 1`` samples (121) and the cost is
one small ``set_status`` write per stream and interval, whoever is looking.

Because the samples live in the store, a dashboard started again, or
another dashboard on the same store, draws the same chart. Two dashboards
sampling at once may each append a sample in the same interval (the write
is last-writer-wins); the bound still holds.
"""
from __future__ import annotations

import datetime
import logging
import math
from typing import Any

from minibatch.store.base import Store, StreamInfo
from minibatch.store.redaction import redact_text

logger = logging.getLogger('minibatch.dashboard')

#: where in a stream's status dict the samples are kept
STATUS_PATH = ('dashboard', 'history')

Sample = list[float]


def epoch(moment: datetime.datetime) -> float:
    """A naive UTC datetime as seconds since the epoch."""
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


class History:
    """The sampling policy: one sample per ``interval`` seconds, kept for ``span`` seconds.

    :raises minibatch.errors.ConfigurationError: an interval or span that is not a positive number,
        or a span shorter than the interval
    """

    def __init__(self, interval: float = 30.0, span: float = 3600.0) -> None:
        from minibatch.errors import ConfigurationError
        for label, value in (('interval', interval), ('span', span)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f'history {label} must be a positive number of seconds, got {value!r}')
        if span < interval:
            raise ConfigurationError(f'history span ({span}s) must be at least its interval ({interval}s)')
        self.interval = float(interval)
        self.span = float(span)

    @property
    def limit(self) -> int:
        """The most samples a stream keeps."""
        return int(self.span // self.interval) + 1

    def samples(self, info: StreamInfo, now: datetime.datetime) -> list[Sample]:
        """The samples of ``info``'s stream no older than :attr:`span` (nor in the future), oldest first. Read-only.

        Anything in the status entry that is not a ``[time, backlog, rate]``
        list of numbers is ignored, so a damaged entry draws an empty chart
        rather than breaking the page.
        """
        dashboard = info.status.get(STATUS_PATH[0]) if isinstance(info.status, dict) else None
        raw = dashboard.get(STATUS_PATH[1]) if isinstance(dashboard, dict) else None
        if not isinstance(raw, list):
            return []
        t = epoch(now)
        kept = [list(map(float, item)) for item in raw
                if isinstance(item, list) and len(item) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)]
        # samples from the future (a dashboard whose clock runs ahead) would stop sampling: dropped too
        return [sample for sample in kept if t - self.span <= sample[0] <= t + self.interval][-self.limit:]

    def record(self, store: Store, info: StreamInfo, figures: dict[str, Any],
               now: datetime.datetime) -> list[Sample]:
        """The samples of ``info``'s stream, with one of ``figures`` appended and written if one is due.

        A sample is due when there is none, or the newest is at least
        :attr:`interval` seconds old. The write is one ``set_status`` of the
        whole bounded list; a store error is logged and the samples are still
        returned (a chart must not break the page).
        """
        samples = self.samples(info, now)
        t = epoch(now)
        if samples and t - samples[-1][0] < self.interval:
            return samples
        samples = (samples + [[round(t, 1), float(figures['backlog']), float(figures['rate'])]])[-self.limit:]
        try:
            store.set_status(info.name, STATUS_PATH, samples)
        except Exception as exc:  # the figures are shown anyway; the next round tries again
            logger.warning('minibatch: dashboard history of %r not saved: %s', info.name,
                           redact_text(exc, store.url))
        return samples
