"""The same work done with the raw drivers (pymongo, sqlite3): the ceiling minibatch is compared with.

The documents and rows carry what minibatch stores for a message (stream,
created, data, processed, state, attempts) and use the same index, so the
ratio shows the library's own cost, not a different data layout.
"""
import datetime
import json
import sqlite3
import time
import uuid

from common import rate


def _docs(n):
    return [{'i': i, 'payload': 'x' * 64} for i in range(n)]


# -- MongoDB ----------------------------------------------------------------
class _Mongo:
    def __init__(self, url):
        import pymongo
        self.client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
        self.coll = self.client.get_default_database('minibatch')['rawbench_' + uuid.uuid4().hex[:8]]
        self.coll.create_index([('stream', 1), ('processed', 1), ('_id', 1)])

    def __enter__(self):
        return self.coll

    def __exit__(self, *exc):
        self.coll.drop()
        self.client.close()


def _record(data):
    return {'stream': 's', 'created': datetime.datetime.utcnow(), 'data': data, 'processed': False,
            'state': 'available', 'attempts': 0}


def mongo_append_one(url, n):
    with _Mongo(url) as coll:
        docs = _docs(n)
        started = time.perf_counter()
        for doc in docs:
            coll.insert_one(_record(doc))
        seconds = time.perf_counter() - started
    return {'rate': rate(n, seconds), 'n': n, 'seconds': seconds, 'what': 'insert_one per message'}


def mongo_append_batch(url, n, batch=1000):
    with _Mongo(url) as coll:
        docs = _docs(n)
        started = time.perf_counter()
        for k in range(0, n, batch):
            coll.insert_many([_record(doc) for doc in docs[k:k + batch]], ordered=True)
        seconds = time.perf_counter() - started
    return {'rate': rate(n, seconds), 'n': n, 'batch': batch, 'seconds': seconds,
            'what': f'insert_many of {batch}'}


def mongo_ceiling(url, n, size=100):
    """insert_many (not timed), then find ``size`` sorted by _id + delete_many of those, until empty."""
    with _Mongo(url) as coll:
        docs = _docs(n)
        for k in range(0, n, 1000):
            coll.insert_many([_record(doc) for doc in docs[k:k + 1000]])
        started = time.perf_counter()
        done = 0
        while True:
            batch = list(coll.find({'stream': 's', 'processed': False}).sort('_id', 1).limit(size))
            if not batch:
                break
            coll.delete_many({'_id': {'$in': [d['_id'] for d in batch]}})
            done += len(batch)
        seconds = time.perf_counter() - started
    return {'rate': rate(done, seconds), 'n': done, 'size': size, 'seconds': seconds,
            'what': f'find {size} sorted + delete_many $in, in a loop'}


# -- SQLite -----------------------------------------------------------------
def _sqlite(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute('PRAGMA journal_mode=WAL')
    conn.execute('PRAGMA synchronous=NORMAL')  # what our store uses by default
    conn.execute('CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT, '
                 'created REAL, data TEXT, state TEXT DEFAULT \'available\', processed INTEGER DEFAULT 0, '
                 'attempts INTEGER DEFAULT 0)')
    conn.execute('CREATE INDEX IF NOT EXISTS raw_available ON raw (stream, processed, id)')
    return conn


INSERT = 'INSERT INTO raw (stream, created, data) VALUES (?, ?, ?)'


def sqlite_append_one(path, n):
    conn = _sqlite(path)
    try:
        docs = _docs(n)
        started = time.perf_counter()
        for doc in docs:
            conn.execute(INSERT, ('s', time.time(), json.dumps(doc)))  # autocommit: one transaction each
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {'rate': rate(n, seconds), 'n': n, 'seconds': seconds, 'what': 'execute per message (autocommit)'}


def sqlite_append_batch(path, n, batch=1000):
    conn = _sqlite(path)
    try:
        docs = _docs(n)
        started = time.perf_counter()
        for k in range(0, n, batch):
            conn.execute('BEGIN IMMEDIATE')
            now = time.time()
            conn.executemany(INSERT, [('s', now, json.dumps(doc)) for doc in docs[k:k + batch]])
            conn.execute('COMMIT')
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {'rate': rate(n, seconds), 'n': n, 'batch': batch, 'seconds': seconds,
            'what': f'executemany of {batch} in one transaction'}


def sqlite_ceiling(path, n, size=100):
    """executemany (not timed), then select ``size`` by id (decoded) + delete them, until empty."""
    conn = _sqlite(path)
    try:
        docs = _docs(n)
        conn.execute('BEGIN IMMEDIATE')
        conn.executemany(INSERT, [('s', time.time(), json.dumps(doc)) for doc in docs])
        conn.execute('COMMIT')
        started = time.perf_counter()
        done = 0
        while True:
            rows = conn.execute('SELECT id, data FROM raw WHERE stream = ? AND processed = 0 ORDER BY id LIMIT ?',
                                ('s', size)).fetchall()
            if not rows:
                break
            [json.loads(data) for _, data in rows]
            conn.execute(f'DELETE FROM raw WHERE id IN ({",".join("?" * len(rows))})', [r[0] for r in rows])
            done += len(rows)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {'rate': rate(done, seconds), 'n': done, 'size': size, 'seconds': seconds,
            'what': f'select {size} by id + delete, in a loop'}
