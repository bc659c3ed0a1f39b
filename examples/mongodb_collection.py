"""MongoDB in, MongoDB out: a collection feeds a stream, a consumer writes its results to another one.

    MINIBATCH_MONGO_URL=mongodb://localhost:27017/minibatch python examples/mongodb_collection.py

Needs a MongoDB server (MINIBATCH_MONGO_URL, default mongodb://localhost:27017;
the database named in the URL, else 'minibatch_examples'). Each run uses new
collections and a new stream, and removes them at the end:

1. six orders are inserted into ``orders_<run>``;
2. a MongoSource appends them to the stream; a consumer sums windows of three
   orders and a MongoSink writes each sum into ``totals_<run>``;
3. the source is stopped, three more orders are inserted, and a *new*
   MongoSource is attached: it continues after the last order it appended
   (the position is kept in the stream's status), so only the new orders arrive;
4. a MongoReplicasetSource follows the collection's change stream, if the
   server offers one (a replica set; a standalone mongod does not).

The stream lives in the store minibatch picks by default (MINIBATCH_URL,
MINIBATCH_MONGO_URL, ... or the embedded SQLite file). It stops by itself.
"""
import os
import sys
import time
import uuid

import pymongo
import pymongo.errors

import minibatch as mb
from minibatch.contrib.mongodb import MongoReplicasetSource, MongoSink, MongoSource

URL = os.environ.get('MINIBATCH_MONGO_URL', 'mongodb://localhost:27017')
RUN = uuid.uuid4().hex[:8]


def wait_for(condition, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f'timed out waiting for {what}')
        time.sleep(0.05)


def total(window):
    # the MongoSink writes it with _id = the first order's id: a repeated window replaces, not duplicates
    return {'_id': window.data[0]['_id'], 'orders': [m['order'] for m in window.data],
            'amount': sum(m['amount'] for m in window.data)}


def follow_changes(orders):
    """Part 4: the change stream, if the server has one."""
    stream = mb.stream(f'mongodb-changes-{RUN}')
    source = MongoReplicasetSource(orders)
    stream.attach(source)
    try:
        deadline = time.monotonic() + 5
        while not source.ready.is_set():
            if source.last_error or time.monotonic() > deadline:
                print(f'4. no change stream on this server ({source.last_error}); skipped')
                return
            time.sleep(0.05)
        orders.insert_one({'order': 100, 'amount': 1})
        wait_for(lambda: stream.stats()['available'] == 1, 'the change in the stream')
        print('4. MongoReplicasetSource appended the insert:', [m.data for m in stream.buffer()])
    finally:
        stream.delete()  # also stops the source


def main():
    client = pymongo.MongoClient(URL, serverSelectionTimeoutMS=5000)
    try:
        client.admin.command('ping')
    except pymongo.errors.PyMongoError as exc:
        sys.exit(f'cannot reach MongoDB at {URL} (set MINIBATCH_MONGO_URL): {exc}')
    db = client.get_default_database(default='minibatch_examples')
    orders, totals = db[f'orders_{RUN}'], db[f'totals_{RUN}']
    stream = mb.stream(f'mongodb-orders-{RUN}')
    print(f'orders in {db.name}.{orders.name}, totals in {db.name}.{totals.name}, stream on '
          f'{stream.store.describe()}')
    try:
        orders.insert_many([{'order': i, 'amount': 10 * (i + 1)} for i in range(6)])
        print('1. inserted orders 0-5')

        consumer = mb.streaming(stream.name, size=3, executor='inline', blocking=False,
                                sink=MongoSink(totals, key='_id'))(total)
        first = stream.attach(MongoSource(orders))
        wait_for(lambda: totals.count_documents({}) == 2, 'two totals')
        first.cancel()
        first.stopped.wait(10)  # ended: it appends nothing more
        print('2. totals so far:', [(t['orders'], t['amount']) for t in totals.find().sort('orders', 1)])

        orders.insert_many([{'order': i, 'amount': 10 * (i + 1)} for i in range(6, 9)])
        stream.attach(MongoSource(orders))  # a new source object: resumes after order 5
        wait_for(lambda: totals.count_documents({}) == 3, 'the third total')
        print('3. after the restart:', [(t['orders'], t['amount']) for t in totals.find().sort('orders', 1)])
        print('   saved position:', stream.store.get_stream(stream.name).status['checkpoints'])
        consumer.stop()
        consumer.thread.join()

        follow_changes(orders)
    finally:
        stream.delete()
        orders.drop()
        totals.drop()
        client.close()


if __name__ == '__main__':
    main()
