"""omega|ml datasets in and out: a dataset feeds a stream, a consumer appends its results to another one.

    MINIBATCH_MONGO_URL=mongodb://localhost:27017/minibatch python examples/omegaml_dataset.py

Needs omega|ml (``pip install 'minibatch[omegaml]'``) and the MongoDB server
omega|ml keeps its datasets in (MINIBATCH_MONGO_URL, default
mongodb://localhost:27017; the database named in the URL, else
'minibatch_examples'). Nothing else of omega|ml (runtime, broker) is needed.
Each run uses new datasets and a new stream, and removes them at the end:

1. eight sensor readings are put into the dataset ``readings_<run>`` as a DataFrame;
2. a DatasetSource appends each row to the stream as a dict;
3. a consumer averages windows of four readings, and a DatasetSink appends
   each average as a row of the dataset ``averages_<run>``;
4. four more readings are put while it runs; their average follows;
5. ``om.datasets.get('averages_<run>')`` reads the result back as a DataFrame.

The stream lives in the store minibatch picks by default (MINIBATCH_URL,
MINIBATCH_MONGO_URL, ... or the embedded SQLite file). It stops by itself.
"""
import os
import sys
import time
import uuid
import warnings

import pymongo.errors
import pymongo.uri_parser

import minibatch as mb
from minibatch.contrib.omegaml import DatasetSink, DatasetSource

warnings.filterwarnings('ignore', module='omegaml')  # omega|ml's notes about its pandas shims

try:
    import pandas as pd
    from omegaml import Omega
except ImportError:
    sys.exit("this example needs omega|ml: pip install 'minibatch[omegaml]'")

URL = os.environ.get('MINIBATCH_MONGO_URL', 'mongodb://localhost:27017')
RUN = uuid.uuid4().hex[:8]
READINGS, AVERAGES = f'readings_{RUN}', f'averages_{RUN}'


def omega(url):
    """An omega|ml instance on ``url``'s database ('minibatch_examples' if the URL names none)."""
    if not pymongo.uri_parser.parse_uri(url)['database']:
        base, _, query = url.partition('?')
        url = base.rstrip('/') + '/minibatch_examples' + (f'?{query}' if query else '')
    return Omega(mongo_url=url)


SEEN = []  # the rows the consumer received (it runs inline, in this process)


def average(window):
    SEEN.extend(window.data)
    values = [row['value'] for row in window.data]
    return {'sensors': ','.join(row['sensor'] for row in window.data), 'mean': sum(values) / len(values)}


def wait_for(condition, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f'timed out waiting for {what}')
        time.sleep(0.1)


def count(om, dataset):
    df = om.datasets.get(dataset)
    return 0 if df is None else len(df)


def readings(first, n):
    return pd.DataFrame({'sensor': [f's{i}' for i in range(first, first + n)],
                         'value': [float(i) for i in range(first, first + n)]})


def main():
    try:
        om = omega(URL)
        om.datasets.put(readings(0, 8), READINGS, append=True)
    except pymongo.errors.PyMongoError as exc:
        sys.exit(f'cannot use MongoDB at {URL} (set MINIBATCH_MONGO_URL): {exc}')
    print(f'1. put 8 readings into dataset {READINGS!r}')
    stream = mb.stream(f'omegaml-readings-{RUN}')
    source = DatasetSource(om, READINGS)
    try:
        consumer = mb.streaming(stream.name, size=4, executor='inline', blocking=False, source=source,
                                sink=DatasetSink(om, AVERAGES))(average)
        wait_for(lambda: count(om, AVERAGES) == 2, 'two averages')
        print(f'2./3. the consumer received {len(SEEN)} rows as dicts, e.g. {SEEN[0]}, and wrote 2 averages')
        om.datasets.put(readings(8, 4), READINGS, append=True)
        print('4. put 4 more readings')
        wait_for(lambda: count(om, AVERAGES) == 3, 'the third average')
        consumer.stop()
        consumer.thread.join()
        print(f'5. om.datasets.get({AVERAGES!r}):')
        print(om.datasets.get(AVERAGES).to_string())
    finally:
        source.cancel()  # the consumer attached it to its own Stream object; stop it here
        source.stopped.wait(10)
        stream.delete()
        om.datasets.drop(READINGS, force=True)
        om.datasets.drop(AVERAGES, force=True)


if __name__ == '__main__':
    main()
