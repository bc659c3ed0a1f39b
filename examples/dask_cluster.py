"""Windows of a stream processed on a Dask cluster (a LocalCluster of 2 worker processes here).

Run: python examples/dask_cluster.py   (needs: pip install "minibatch[dask]")
Uses the embedded store in a temporary folder; pass a store URL as the first argument to use another.
"""
import os
import sys
import tempfile

from distributed import Client, LocalCluster, get_worker

import minibatch as mb


def word_lengths(window):
    """Runs on a Dask worker."""
    return {'worker': get_worker().name, 'lengths': [len(m['word']) for m in window.data]}


class PrintSink:
    def __init__(self):
        self.count = 0

    def put(self, result):
        self.count += len(result['lengths'])
        print(f"worker {result['worker']}: {result['lengths']}", flush=True)


def main():
    url = sys.argv[1] if len(sys.argv) > 1 else 'sqlite:///' + os.path.join(tempfile.mkdtemp(), 'dask.db')
    words = 'the quick brown fox jumps over the lazy dog and keeps on running far away'.split()
    stream = mb.stream('words', url=url)
    stream.append([{'word': w} for w in words])

    with LocalCluster(n_workers=2, threads_per_worker=1, host='127.0.0.1', dashboard_address='127.0.0.1:0') as cluster, \
            Client(cluster) as client:
        sink = PrintSink()
        emitter = mb.streaming('words', size=3, url=url, executor=client, sink=sink, blocking=False)(word_lengths)
        while stream.stats()['backlog'] or stream.stats()['in_flight']:
            emitter.thread.join(0.1)
        emitter.stop()
        emitter.thread.join()
    print(f'{sink.count} of {len(words)} words processed on the cluster; left: {stream.stats()["backlog"]}')


if __name__ == '__main__':
    main()
