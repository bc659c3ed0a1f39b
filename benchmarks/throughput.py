"""Append and end-to-end throughput, next to the raw driver measured in the same run.

    python benchmarks/throughput.py [--mongo URL] [-n N]

Prints msgs/s and the ratio minibatch / raw driver for each store. The
machine is shared and noisy: compare ratios, not absolute figures.
"""
import argparse
import os
import sqlite3
import tempfile
import time
import uuid

import minibatch as mb
from minibatch.tests.util import LocalExecutor


def rate(n, seconds):
    return n / seconds if seconds else float('inf')


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def noop(window):
    return None


def consume_all(name, url, n, size=100, executor='inline'):
    """Run a blocking consumer until ``n`` messages were committed; the sink counts them."""
    class Counter:
        done = 0

        def put(self, data):  # runs in the consumer process after each window (data = window.data)
            Counter.done += len(data)
            if Counter.done >= n:
                em.stop()
    em = mb.streaming(name, size=size, url=url, executor=executor, sink=Counter()).make(noop)
    em.run()
    return Counter.done


def bench_minibatch(url, n):
    name = 'bench-' + uuid.uuid4().hex[:8]
    stream = mb.stream(name, url=url)
    docs = [{'i': i, 'payload': 'x' * 64} for i in range(n)]
    one = min(n, 500)
    results = {'append one': rate(one, timed(lambda: [stream.append(d) for d in docs[:one]]))}
    stream.clear()
    results['append batch'] = rate(n, timed(lambda: [stream.append(docs[k:k + 1000]) for k in range(0, n, 1000)]))
    results['end-to-end inline'] = rate(n, timed(lambda: consume_all(name, url, n)))
    stream.append(docs)
    results['end-to-end process pool'] = rate(n, timed(lambda: consume_all(name, url, n, executor='process')))
    stream.delete()
    return results


def bench_raw_mongo(url, n):
    import pymongo
    client = pymongo.MongoClient(url)
    coll = client.get_default_database('minibatch')['rawbench_' + uuid.uuid4().hex[:8]]
    coll.create_index([('stream', 1), ('processed', 1), ('_id', 1)])
    docs = [{'stream': 's', 'processed': False, 'data': {'i': i, 'payload': 'x' * 64}} for i in range(n)]
    one = min(n, 500)
    results = {'append one': rate(one, timed(lambda: [coll.insert_one(dict(d)) for d in docs[:one]]))}
    coll.delete_many({})
    results['append batch'] = rate(n, timed(lambda: [coll.insert_many([dict(d) for d in docs[k:k + 1000]])
                                                     for k in range(0, n, 1000)]))

    def drain():
        while True:
            batch = list(coll.find({'stream': 's', 'processed': False}).sort('_id', 1).limit(100))
            if not batch:
                return
            coll.delete_many({'_id': {'$in': [d['_id'] for d in batch]}})
    results['end-to-end inline'] = rate(n, timed(drain))
    coll.drop()
    return results


def bench_raw_sqlite(path, n):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute('PRAGMA journal_mode=WAL')
    conn.execute('PRAGMA synchronous=NORMAL')
    conn.execute('CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY AUTOINCREMENT, stream, processed, data)')
    conn.execute('CREATE INDEX IF NOT EXISTS raw_i ON raw (stream, processed, id)')
    import json
    docs = [{'i': i, 'payload': 'x' * 64} for i in range(n)]
    one = min(n, 500)

    def insert_one():
        for d in docs[:one]:
            conn.execute('INSERT INTO raw (stream, processed, data) VALUES (?, 0, ?)', ('s', json.dumps(d)))
    results = {'append one': rate(one, timed(insert_one))}
    conn.execute('DELETE FROM raw')

    def insert_many():
        for k in range(0, n, 1000):
            conn.execute('BEGIN IMMEDIATE')
            conn.executemany('INSERT INTO raw (stream, processed, data) VALUES (?, 0, ?)',
                             [('s', json.dumps(d)) for d in docs[k:k + 1000]])
            conn.execute('COMMIT')
    results['append batch'] = rate(n, timed(insert_many))

    def drain():
        while True:
            rows = conn.execute('SELECT id, data FROM raw WHERE stream=? AND processed=0 ORDER BY id LIMIT 100',
                                ('s',)).fetchall()
            if not rows:
                return
            [json.loads(r[1]) for r in rows]
            conn.execute(f'DELETE FROM raw WHERE id IN ({",".join("?" * len(rows))})', [r[0] for r in rows])
    results['end-to-end inline'] = rate(n, timed(drain))
    conn.close()
    return results


def report(title, ours, raw):
    print(f'\n{title}')
    print(f'{"scenario":<24}{"minibatch msg/s":>18}{"raw msg/s":>14}{"ratio":>8}')
    for key in ours:
        ref = raw.get(key, raw['end-to-end inline'])
        print(f'{key:<24}{ours[key]:>18,.0f}{ref:>14,.0f}{ours[key] / ref:>8.2f}')


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--mongo', default=os.environ.get('MINIBATCH_MONGO_URL'))
    parser.add_argument('-n', type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_minibatch('sqlite:///' + os.path.join(tmp, 'mb.db'), args.n)
        raw = bench_raw_sqlite(os.path.join(tmp, 'raw.db'), args.n)
        report(f'SQLite (embedded), n={args.n}', ours, raw)
    if args.mongo:
        ours = bench_minibatch(args.mongo, args.n)
        raw = bench_raw_mongo(args.mongo, args.n)
        report(f'MongoDB {args.mongo.split("@")[-1]}, n={args.n}', ours, raw)


if __name__ == '__main__':
    main()
