"""The consumer-group scenario (docs/groups.rst): end to end per group, and appends with groups registered.

End to end: ``n`` messages already in the stream, one consumer process per
named group (``size=100``, inline, no-op function), all released together; a
group's rate is ``n`` over the seconds from the release to its last window.
Measured with one named group and with two; the issue's target is the rate per
group with two >= 0.8 x the rate with one. Both runs register their groups
before the stream is filled, so that each group sees every message.

Appends: ``stream.append(list of batch)`` into a stream with no group and into
one with 5 groups registered (no consumers), alternately ``repeats`` times,
the best of each counting; target: with 5 groups >= 0.9 x without.
"""
import os
import sys
import time
import uuid

from common import ROOT, rate, read_lines, start, stop, wait_for

if ROOT not in sys.path:
    sys.path.append(ROOT)

import minibatch as mb  # noqa: E402
from ours import _consumer_cmd, _docs, fill  # noqa: E402


def _name(what):
    return f'bench-{what}-{uuid.uuid4().hex[:8]}'


def end_to_end(url, n, groups, outdir_factory, size=100, timeout=600.0):
    """Rates per group of ``groups`` named groups, one consumer process each, over ``n`` pre-filled messages."""
    name = _name(f'groups{groups}')
    stream = mb.stream(name, url=url)
    names = [f'g{k}' for k in range(groups)]
    procs = []
    try:
        for group in names:
            stream.store.register_group(name, group, 'earliest')
        fill(stream, n)
        outdirs = {group: outdir_factory(f'groups{groups}-{group}') for group in names}
        for group, outdir in outdirs.items():
            cmd = _consumer_cmd({'impl': 'ours', 'role': 'memory', 'url': url, 'stream': name, 'size': size,
                                 'executor': 'inline', 'outdir': outdir, 'group': group})
            procs.append(start(cmd, os.path.join(outdir, 'consumer.log')))
        wait_for(lambda: all(any(f.startswith('ready-') for f in os.listdir(d)) for d in outdirs.values()), 60,
                 'group consumers ready', procs)
        released = time.time()
        for outdir in outdirs.values():
            with open(os.path.join(outdir, 'go'), 'w'):
                pass

        def progress(outdir):
            rows = read_lines(outdir, 'done-')
            return sum(int(count) for count, _ in rows), max((float(t) for _, t in rows), default=None)

        wait_for(lambda: all(progress(d)[0] >= n for d in outdirs.values()), timeout, f'{n} messages per group',
                 procs, interval=0.02)
        seconds = {group: progress(outdir)[1] - released for group, outdir in outdirs.items()}
        rates = {group: rate(n, s) for group, s in seconds.items()}
        return {'rate': sum(rates.values()) / groups, 'rates': rates, 'seconds': seconds, 'n': n, 'size': size,
                'groups': groups}
    finally:
        for proc in procs:
            stop(proc)
        try:
            stream.delete()
        except Exception:  # noqa: BLE001 - cleanup only
            pass


def append_with_groups(url, n, groups, batch=1000):
    """``stream.append(list)`` of ``batch`` messages at a time into a stream with ``groups`` groups registered."""
    name = _name(f'append-g{groups}')
    stream = mb.stream(name, url=url)
    try:
        for k in range(groups):
            stream.store.register_group(name, f'g{k}', 'earliest')
        docs = _docs(n)
        started = time.perf_counter()
        for k in range(0, n, batch):
            stream.append(docs[k:k + batch])
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'batch': batch, 'groups': groups, 'seconds': seconds}
    finally:
        stream.delete()
