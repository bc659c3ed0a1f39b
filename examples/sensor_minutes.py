"""Average per sensor per minute, by the time each reading was taken: keyed event-time windows.

Readings of three sensors arrive out of order (up to 20 s late, inside the
grace of 30 s), one arrives far too late and lands in the dead letters with a
reason. Replaying history, only the watermark closes windows; then the stream
is quiet, and the wall clock closes the last minute (its end is long past).
Runs with the embedded store in a temporary folder and ends by itself::

    python examples/sensor_minutes.py
"""
import datetime
import os
import random
import tempfile

import minibatch as mb
from minibatch import tumbling

START = datetime.datetime(2026, 5, 1, 12, 0)


def readings():
    """Five minutes of readings every 10 s for three sensors, shuffled by up to 20 s, and one very late."""
    rng = random.Random(7)
    out = []
    for sensor in ('north', 'south', 'east'):
        for i in range(30):
            taken = START + datetime.timedelta(seconds=10 * i)
            out.append((taken + datetime.timedelta(seconds=rng.uniform(0, 20)),
                        {'sensor': sensor, 'ts': taken.isoformat(), 'celsius': round(rng.gauss(20, 2), 1)}))
    out.sort(key=lambda pair: pair[0])  # the order they arrive in
    late = {'sensor': 'north', 'ts': START.isoformat(), 'celsius': 99.0}  # the first minute, long closed
    return [doc for _, doc in out] + [late]


def main():
    folder = tempfile.mkdtemp(prefix='minibatch-sensors-')
    url = 'sqlite:///' + os.path.join(folder, 'sensors.db')
    stream = mb.stream('readings', url=url)
    stream.append(readings())

    results = []

    def per_minute(window):
        mean = sum(r['celsius'] for r in window.data) / len(window.data)
        results.append((window.start, window.key, len(window.data), round(mean, 2)))

    def consume(close_by_clock):
        consumer = mb.streaming('readings', url=url, window=tumbling(60), key='sensor', time='ts', grace=30,
                                close_by_clock=close_by_clock, executor='inline').make(per_minute)
        while True:  # one round at a time, until a round emits nothing
            before = consumer.stats['windows']
            consumer.run(blocking=False)
            if consumer.stats['windows'] == before:
                break
        consumer.close()

    # replaying history: the watermark (latest reading - 30 s) closes the first four minutes
    consume(close_by_clock=False)
    stats = stream.stats()
    print(f"replayed: {len(results)} windows, watermark {stats['watermark']}, open windows "
          f"{stats['open_windows']}, late {stats['late']}")
    # the stream is quiet now: the clock closes the last minute of each sensor
    consume(close_by_clock=True)
    for start, sensor, count, mean in sorted(results):
        print(f'{start:%H:%M}  {sensor:6} {count:2} readings  mean {mean:5.2f} C')
    print(f"open windows {stream.stats()['open_windows']}")
    for dead in stream.store.dead_letters('readings'):
        print('dead letter:', dead.data, '-', dead.error)


if __name__ == '__main__':
    main()
