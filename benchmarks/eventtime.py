"""The event-time scenario: keyed tumbling windows next to ``size=100`` count windows, in one run.

``n`` readings of ``keys`` sensors, their event times spread over one minute
of the past and out of order by up to the grace, then one reading an hour
later whose watermark closes that minute (history replayed:
``close_by_clock=False``). The consumer (inline, no-op function) indexes
them, closes ``tumbling(60)`` windows per key and commits them; the rate
counts messages from its start until the last window is committed. The count windows consume the same number of messages
with ``size=100``; bench.py runs the two alternately and keeps the best of each: the issue's target
is a ratio >= 0.5.

The memory run samples the consumer's RSS (this process) while it works
through ``n`` messages of many keys: the figure to watch is the growth from
10% of the run to the end, which stays flat because a consumer never holds
the events of the open windows.
"""
import random
import sys
import threading
import time
import uuid

from common import ROOT, proc_status_kib, rate

if ROOT not in sys.path:
    sys.path.append(ROOT)

import minibatch as mb  # noqa: E402
import workload  # noqa: E402
from ours import _Counter  # noqa: E402 (the sink of the count windows' run: the same stop rule)
from minibatch.eventtime import tumbling  # noqa: E402

GRACE = 10.0


def readings(n, keys, seed=13):
    """``n`` readings of ``keys`` sensors in the minute that ended 10 minutes ago, out of order by up to GRACE.

    Each sensor's readings fall in one window (``n / keys`` of them), as a count window holds ``size``.
    """
    rng = random.Random(seed)
    base = (time.time() // 60) * 60 - 600
    span = 60.0 - GRACE
    return [{'sensor': f's{i % keys}', 'ts': base + GRACE + span * i / n - rng.uniform(0, GRACE), 'v': i}
            for i in range(n)]


def keyed_tumbling(url, n, keys, sample=False):
    """Rate of ``@streaming(window=tumbling(60), key='sensor', time='ts', grace=10)`` over ``n`` readings."""
    name = f'bench-eventtime-{uuid.uuid4().hex[:8]}'
    stream = mb.stream(name, url=url)
    samples = []
    try:
        docs = readings(n, keys)
        for k in range(0, n, 1000):
            stream.append(docs[k:k + 1000])
        stream.append([{'sensor': 'later', 'ts': docs[-1]['ts'] + 3600, 'v': -1}])  # its window stays open
        del docs
        sink = _Counter(n)
        em = mb.streaming(name, url=url, window=tumbling(60), key='sensor', time='ts', grace=GRACE,
                          close_by_clock=False, executor='inline', sink=sink).make(workload.noop)
        sink.emitter = em
        em.stream  # connected before the clock starts
        stop = threading.Event()

        def sampler():
            import os
            while not stop.wait(0.05):
                samples.append((sink.done, proc_status_kib(os.getpid(), 'VmRSS')))
        thread = threading.Thread(target=sampler, daemon=True)
        if sample:
            thread.start()
        started = time.perf_counter()
        em.run()
        seconds = time.perf_counter() - started
        stop.set()
        left = stream.stats()
        if sink.done < n or left.get('available', 0) != 1 or left['late']:
            raise RuntimeError(f'consumed {sink.done} of {n}; left in the store: {left}')
        result = {'rate': rate(n, seconds), 'n': n, 'keys': keys, 'seconds': seconds,
                  'windows': em.stats['windows'], 'late': left['late']}
        if sample:
            def rss_at(fraction):
                for done, kib in samples:
                    if done >= fraction * n and kib:
                        return kib / 1024
                return None
            early, end = rss_at(0.1), rss_at(1.0) or (samples[-1][1] / 1024 if samples else None)
            result.update(peak_rss_mib=max(k for _, k in samples if k) / 1024 if samples else None,
                          rss_at_10pct_mib=early, rss_at_end_mib=end,
                          growth_mib=(end - early) if early is not None and end is not None else None)
        return result
    finally:
        stream.delete()
