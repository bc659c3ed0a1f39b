"""minibatch benchmark suite: our stores next to the raw drivers and to minibatch 0.6.0, in one run.

    python benchmarks/bench.py [--quick] [--json OUT] [--mongo URL] [--legacy-python PY | --no-legacy]
                               [--only SCENARIO,...] [--stores sqlite,mongodb]

``bash benchmarks/run`` sets everything up (virtualenvs, a SecantusDB server)
and calls this; this file only measures. Without ``--mongo`` the MongoDB
scenarios are skipped; without ``--legacy-python`` those of 0.6.0 are.

Scenarios (see docs/performance.rst): append one by one and batched; end to
end (pre-filled stream, ``size=100``, inline and process pool); latency from
append to function start; database operations of an idle consumer; competing
consumers with a CPU-bound function; peak RSS of a consumer; ``async def``
functions waiting on a slow local HTTP service, next to the process pool; consumer
groups (end to end per group with one and two groups, appends with five groups
registered and none). Prints a table
and the target ratios, writes everything to JSON. The machine is noisy:
compare ratios measured in the same run, and run twice.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

from common import (ROOT, child_env, database_of, machine_info, stop, start, wait_for, with_database)

HERE = os.path.dirname(os.path.abspath(__file__))
CONSUMER = os.path.join(HERE, 'consumer.py')
LEGACY = os.path.join(HERE, 'legacy.py')

SCENARIOS = ('append_one', 'append_batch', 'append_buffered', 'e2e_inline', 'e2e_process', 'latency_inline',
             'latency_process', 'idle', 'scale_out', 'memory', 'async_io', 'eventtime', 'groups')
# with minibatch 0.6.0, e2e_inline/e2e_process also give e2e_inline_060n/e2e_process_060n (MongoDB, 0.6.0's n)

# A key suffixed _mongodb overrides the plain key for the MongoDB store. The MongoDB-wire test server
# (SecantusDB) sorts a window's candidates in memory, so its cost per window grows with the backlog:
# 20,000 pre-filled messages take minutes there and measure the server, not minibatch.
FULL = dict(append_one_n=2000, append_one_n_mongodb=1000, append_batch_n=20000, append_batch_n_mongodb=10000,
            batch=1000, append_repeats=3, e2e_repeats=3, e2e_n=20000, e2e_n_mongodb=5000, size=100, legacy_e2e_n=1000,
            legacy_append_one_n=1000, latency_n=300, period=0.02, idle_warmup=3.0, idle_duration=10.0,
            scale_n=20000, scale_n_mongodb=1500, scale_counts=[1, 2, 4], scale_work_ms=20.0,
            scale_work_ms_mongodb=300.0, memory_n=100000, memory_n_mongodb=10000, memory_backlog=2000,
            async_n=100, async_delay=1.0,
            et_n=100000, et_keys=1000, et_n_mongodb=5000, et_keys_mongodb=50, et_memory_n=100000,
            et_memory_keys=10000, et_memory_n_mongodb=2000, et_memory_keys_mongodb=200, et_repeats=3,
            et_repeats_mongodb=1,
            groups_n=100000, groups_n_mongodb=1000, groups_append_n=20000, groups_append_n_mongodb=5000,
            groups_repeats=3, groups_append_repeats=5)
# On the wire server a window costs the server (one Python process) ~0.2 s: a function must do more
# than that to be the bottleneck, hence more work per window for the MongoDB scale-out.
QUICK = dict(append_one_n=100, append_batch_n=2000, batch=1000, append_repeats=1, e2e_repeats=1, e2e_n=500, e2e_n_mongodb=300,
             size=100, legacy_e2e_n=100, legacy_append_one_n=50, latency_n=20, period=0.02, idle_warmup=0.5,
             idle_duration=1.5, scale_n=300, scale_n_mongodb=200, scale_counts=[1, 2, 4], scale_work_ms=5.0,
             scale_work_ms_mongodb=20.0, memory_n=1000, memory_n_mongodb=500, memory_backlog=500,
             async_n=20, async_delay=0.5,
             et_n=10000, et_keys=100, et_n_mongodb=1000, et_keys_mongodb=10, et_memory_n=10000,
             et_memory_keys=2000, et_memory_n_mongodb=500, et_memory_keys_mongodb=100, et_repeats=1,
             groups_n=1000, groups_n_mongodb=300, groups_append_n=2000, groups_repeats=1, groups_append_repeats=2)


class Bench:
    def __init__(self, args):
        self.args = args
        self.p = dict(QUICK if args.quick else FULL)
        for setting in args.set or ():
            key, _, value = setting.partition('=')
            if not value:
                raise SystemExit(f'--set needs KEY=VALUE, got {setting!r}')
            self.p[key] = json.loads(value)
        self.only = set(args.only.split(',')) if args.only else set(SCENARIOS)
        unknown = self.only - set(SCENARIOS)
        if unknown:
            raise SystemExit(f'unknown scenario(s) {sorted(unknown)}; known: {", ".join(SCENARIOS)}')
        self.stores = [s for s in args.stores.split(',') if s]
        self.mongo = with_database(args.mongo, database_of(args.mongo)) if args.mongo else None
        if self.mongo is None and 'mongodb' in self.stores:
            self.stores.remove('mongodb')
        self.legacy = None if args.no_legacy else args.legacy_python
        self.legacy_url = with_database(self.mongo, database_of(self.mongo) + '_v060') if self.mongo else None
        self.tmp = tempfile.mkdtemp(prefix='minibatch-bench-')
        self.results = []
        self.errors = []
        self.timings = {}  # scenario -> wall seconds spent on it
        self._files = 0

    # -- plumbing ---------------------------------------------------------
    def url(self, store):
        """A fresh SQLite file per scenario (no leftovers from the last one), or the MongoDB database."""
        if store == 'mongodb':
            return self.mongo
        self._files += 1
        return 'sqlite:///' + os.path.join(self.tmp, f'ours-{self._files}.db')

    def sqlite_path(self):
        self._files += 1
        return os.path.join(self.tmp, f'raw-{self._files}.db')

    def outdir(self, label):
        self._files += 1
        path = os.path.join(self.tmp, f'{label}-{self._files}')
        os.makedirs(path)
        return path

    def record(self, scenario, store, impl, variant, value, unit, **details):
        row = {'scenario': scenario, 'store': store, 'impl': impl, 'variant': variant, 'value': value,
               'unit': unit, 'details': details}
        self.results.append(row)
        shown = f'{value:,.1f}' if isinstance(value, (int, float)) else value
        print(f'  {scenario:<16} {store:<8} {impl:<5} {variant:<18} {shown} {unit}', flush=True)
        return row

    def attempt(self, scenario, store, impl, fn):
        """Run one measurement; an exception is recorded (and printed) instead of ending the run."""
        started = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
            self.errors.append({'scenario': scenario, 'store': store, 'impl': impl, 'error': repr(exc),
                                'traceback': traceback.format_exc()})
            print(f'  {scenario:<16} {store:<8} {impl:<5} ERROR after {time.perf_counter() - started:.1f} s: '
                  f'{exc!r}', flush=True)
            return None
        finally:
            self.timings[scenario] = round(self.timings.get(scenario, 0) + time.perf_counter() - started, 2)
            _reset_our_stores()

    def run_legacy(self, scenario, timeout=900, **opts):
        cmd = [self.legacy, LEGACY, json.dumps({'scenario': scenario, 'url': self.legacy_url, **opts})]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(legacy=True))
        lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f'minibatch 0.6.0 {scenario} failed (exit {proc.returncode}): '
                               f'{(proc.stderr or proc.stdout)[-2000:]}')
        return json.loads(lines[-1][len('RESULT '):])

    def param(self, key, store):
        return self.p.get(f'{key}_{store}', self.p[key])

    def wanted(self, scenario):
        return scenario in self.only

    # -- scenarios --------------------------------------------------------
    def run(self):
        import ours
        p = self.p
        print(f'minibatch benchmarks ({"quick" if self.args.quick else "full"}), stores: {", ".join(self.stores)}'
              f'{", minibatch 0.6.0" if self.legacy and self.mongo else ""}; scratch: {self.tmp}', flush=True)

        for scenario, what in (('append_one', 'append(dict)'), ('append_batch', f'append(list of {p["batch"]})')):
            if not self.wanted(scenario):
                continue
            for store in self.stores:
                self.append_pair(scenario, store, what)
            if self.legacy and self.mongo:
                if scenario == 'append_one':
                    r = self.attempt(scenario, 'mongodb', 'v060',
                                     lambda: self.run_legacy('append_one', n=p['legacy_append_one_n']))
                    r and self.record(scenario, 'mongodb', 'v060', 'append(dict)', r['rate'], 'msgs/s', **r)
                else:
                    n = self.param('append_batch_n', 'mongodb')
                    r = self.attempt(scenario, 'mongodb', 'v060',
                                     lambda: self.run_legacy('append_batch', n=n, batch=p['batch']))
                    r and self.record(scenario, 'mongodb', 'v060', f'batchsize={p["batch"]}', r['rate'], 'msgs/s', **r)

        if self.wanted('append_buffered'):
            n, batch = p['append_batch_n'], p['batch']
            for store in self.stores:
                r = self.attempt('append_buffered', store, 'ours',
                                 lambda: ours.append_buffered(self.url(store), n, batch))
                r and self.record('append_buffered', store, 'ours', f'batchsize={batch}', r['rate'], 'msgs/s', **r)

        for executor in ('inline', 'process'):
            scenario = f'e2e_{executor}'
            if not self.wanted(scenario):
                continue
            size = p['size']
            for store in self.stores:
                n = self.param('e2e_n', store)
                if executor == 'inline':
                    self.e2e_pair(store, n, size)
                    continue
                r = self.attempt(scenario, store, 'ours', lambda: ours.end_to_end(self.url(store), n, executor, size))
                r and self.record(scenario, store, 'ours', f'size={size}, {executor}', r['rate'], 'msgs/s', **r)
            if self.legacy and self.mongo:
                # 0.6.0 gets a smaller stream (it is slow): ours is measured again on the same size,
                # since the wire server's cost per window grows with the backlog
                n, same = p['legacy_e2e_n'], f'{scenario}_060n'
                r = self.attempt(same, 'mongodb', 'ours', lambda: ours.end_to_end(self.mongo, n, executor, size))
                r and self.record(same, 'mongodb', 'ours', f'size={size}, {executor}, n={n}', r['rate'], 'msgs/s', **r)
                r = self.attempt(same, 'mongodb', 'v060',
                                 lambda: self.run_legacy('end_to_end', n=n, executor=executor, size=size))
                r and self.record(same, 'mongodb', 'v060', f'size={size}, {executor}, n={n}', r['rate'], 'msgs/s', **r)

        for executor in ('inline', 'process'):
            scenario = f'latency_{executor}'
            if not self.wanted(scenario):
                continue
            n, period = p['latency_n'], p['period']
            for store in self.stores:
                r = self.attempt(scenario, store, 'ours',
                                 lambda: ours.latency(self.url(store), n, period, executor, self.outdir(scenario)))
                r and self.record(scenario, store, 'ours', f'size=1, {executor}', r['p50_ms'], 'ms p50', **r)
            if self.legacy and self.mongo:
                r = self.attempt(scenario, 'mongodb', 'v060',
                                 lambda: self.run_legacy('latency', n=n, period=period, executor=executor,
                                                         outdir=self.outdir(scenario + '-v060')))
                r and self.record(scenario, 'mongodb', 'v060', f'size=1, {executor}', r['p50_ms'], 'ms p50', **r)

        if self.wanted('idle'):
            self.idle()

        if self.wanted('scale_out'):
            import workload
            for store in self.stores:
                work_ms = self.param('scale_work_ms', store)
                work = workload.calibrate(work_ms)
                r = self.attempt('scale_out', store, 'ours',
                                 lambda: ours.scale_out(lambda: self.url(store), self.param('scale_n', store),
                                                        p['scale_counts'], work, self.outdir))
                for consumers, figures in (r or {}).items():
                    self.record('scale_out', store, 'ours', f'{consumers} consumer(s)', figures['rate'], 'msgs/s',
                                consumers=consumers, work_iterations=work, work_ms_per_window=work_ms, **figures)

        if self.wanted('memory'):
            for store in self.stores:
                n = self.param('memory_n', store)
                r = self.attempt('memory', store, 'ours', lambda: ours.memory(self.url(store), n, p['memory_backlog'],
                                                                               self.outdir('memory')))
                r and self.record('memory', store, 'ours', f'{n:,} msgs, inline', r['peak_rss_mib'],
                                  'MiB peak RSS', **r)

        if self.wanted('async_io'):
            n, delay = p['async_n'], p['async_delay']
            for store in self.stores:
                for mode in ('async', 'process'):
                    r = self.attempt('async_io', store, 'ours', lambda: ours.async_io(self.url(store), n, delay, mode))
                    what = f'{n} x {delay:g} s call, ' + ('async def' if mode == 'async' else 'process pool')
                    r and self.record('async_io', store, 'ours', what, r['seconds'], 's', **r)

        if self.wanted('eventtime'):
            self.eventtime()

        if self.wanted('groups'):
            self.groups()

    def groups(self):
        """End to end per group with one and with two named groups; appends with 5 groups registered and none.

        Each measured alternately ``groups_repeats`` (appends: ``groups_append_repeats``) times, the best of
        each counting (benchmarks/groups.py).
        """
        import groups
        p = self.p
        for store in self.stores:
            n = self.param('groups_n', store)
            runs = {1: [], 2: []}
            for _ in range(p['groups_repeats']):
                for count in (1, 2):
                    r = self.attempt('groups', store, 'ours',
                                     lambda: groups.end_to_end(self.url(store), n, count, self.outdir))
                    r and runs[count].append(r)
            for count, results in runs.items():
                if results:
                    best = max(results, key=lambda r: r['rate'])
                    self.record('groups', store, 'ours', f'e2e, {count} group(s)', best['rate'], 'msgs/s per group',
                                **best, tries=[r['rate'] for r in results])
            n = self.param('groups_append_n', store)
            runs = {0: [], 5: []}
            for _ in range(p['groups_append_repeats']):  # short runs: more tries take the noise out
                for count in (0, 5):
                    r = self.attempt('groups', store, 'ours',
                                     lambda: groups.append_with_groups(self.url(store), n, count, p['batch']))
                    r and runs[count].append(r)
            for count, results in runs.items():
                if results:
                    best = max(results, key=lambda r: r['rate'])
                    self.record('groups', store, 'ours', f'append, {count} groups', best['rate'], 'msgs/s',
                                **best, tries=[r['rate'] for r in results])

    def eventtime(self):
        """Keyed tumbling(60) windows (event times out of order by up to the grace) and size=100 count windows,
        same number of messages, alternately ``et_repeats`` times, the best of each counting (as e2e_pair: a
        single run of either moved by a third on this shared machine); then the RSS of a consumer through many
        keys."""
        import eventtime
        import ours
        for store in self.stores:
            n, keys = self.param('et_n', store), self.param('et_keys', store)
            runs = {'keyed': [], 'count': []}
            for _ in range(self.param('et_repeats', store)):
                r = self.attempt('eventtime', store, 'ours', lambda: eventtime.keyed_tumbling(self.url(store), n, keys))
                r and runs['keyed'].append(r)
                r = self.attempt('eventtime', store, 'ours', lambda: ours.end_to_end(self.url(store), n, 'inline', 100))
                r and runs['count'].append(r)
            for kind, what in (('keyed', f'tumbling(60), {keys:,} keys'), ('count', 'size=100, inline')):
                if runs[kind]:
                    best = max(runs[kind], key=lambda r: r['rate'])
                    self.record('eventtime', store, 'ours', what, best['rate'], 'msgs/s', **best,
                                tries=[r['rate'] for r in runs[kind]])
            n, keys = self.param('et_memory_n', store), self.param('et_memory_keys', store)
            r = self.attempt('eventtime', store, 'ours',
                             lambda: eventtime.keyed_tumbling(self.url(store), n, keys, sample=True))
            r and self.record('eventtime', store, 'ours', f'RSS growth, {keys:,} keys', r['growth_mib'],
                              'MiB 10%->end', **r)

    def e2e_pair(self, store, n, size):
        """End to end inline and the raw loop, alternately ``e2e_repeats`` times; the best rate of each counts.

        A run takes a fraction of a second: as for appends, alternating and keeping
        the best of a few tries takes most of the machine's noise out of the ratio.
        """
        import ours
        import raw
        runs = {'ours': [], 'raw': []}
        for _ in range(self.p['e2e_repeats']):
            mine = lambda: ours.end_to_end(self.url(store), n, 'inline', size)  # noqa: E731
            theirs = ((lambda: raw.sqlite_ceiling(self.sqlite_path(), n, size)) if store == 'sqlite'
                      else (lambda: raw.mongo_ceiling(self.mongo, n, size)))
            for impl, fn in (('ours', mine), ('raw', theirs)):
                r = self.attempt('e2e_inline', store, impl, fn)
                if r:
                    runs[impl].append(r)
        for impl, results in runs.items():
            if results:
                best = max(results, key=lambda r: r['rate'])
                what = f'size={size}, inline' if impl == 'ours' else best['what']
                self.record('e2e_inline', store, impl, what, best['rate'], 'msgs/s', **best,
                            rates=[r['rate'] for r in results])

    def append_pair(self, scenario, store, what):
        """Ours and the raw driver, alternately ``append_repeats`` times; the best rate of each counts.

        Appends are short: alternating and keeping the best of a few tries
        takes most of the machine's noise out of the ratio.
        """
        import ours
        import raw
        p = self.p
        one = scenario == 'append_one'
        n = self.param('append_one_n' if one else 'append_batch_n', store)
        runs = {'ours': [], 'raw': []}
        for _ in range(p['append_repeats']):
            if one:
                mine = lambda: ours.append_one(self.url(store), n)  # noqa: E731
                theirs = ((lambda: raw.sqlite_append_one(self.sqlite_path(), n)) if store == 'sqlite'
                          else (lambda: raw.mongo_append_one(self.mongo, n)))
            else:
                mine = lambda: ours.append_batch(self.url(store), n, p['batch'])  # noqa: E731
                theirs = ((lambda: raw.sqlite_append_batch(self.sqlite_path(), n, p['batch'])) if store == 'sqlite'
                          else (lambda: raw.mongo_append_batch(self.mongo, n, p['batch'])))
            for impl, fn in (('ours', mine), ('raw', theirs)):
                r = self.attempt(scenario, store, impl, fn)
                if r:
                    runs[impl].append(r)
        for impl, results in runs.items():
            if results:
                best = max(results, key=lambda r: r['rate'])
                self.record(scenario, store, impl, what if impl == 'ours' else best['what'], best['rate'], 'msgs/s',
                            **best, rates=[r['rate'] for r in results])

    def idle(self):
        """One idle consumer per store (and 0.6.0's), all at once: nothing else runs, only operations are counted."""
        import minibatch as mb
        p = self.p
        specs = [(store, 'ours', self.url(store), sys.executable) for store in self.stores]
        if self.legacy and self.mongo:
            specs.append(('mongodb', 'v060', self.legacy_url, self.legacy))
        running = []
        try:
            for store, impl, url, python in specs:
                name = f'bench-idle-{uuid.uuid4().hex[:8]}'
                if impl == 'ours':
                    mb.stream(name, url=url)
                outdir = self.outdir(f'idle-{impl}-{store}')
                opts = {'impl': impl, 'role': 'idle', 'url': url, 'stream': name, 'size': 1, 'executor': 'process',
                        'outdir': outdir, 'warmup': p['idle_warmup'], 'duration': p['idle_duration']}
                proc = start([python, CONSUMER, json.dumps(opts)], os.path.join(outdir, 'consumer.log'),
                             legacy=impl == 'v060')
                running.append((store, impl, url, name, outdir, proc))
            for store, impl, url, name, outdir, proc in running:
                def result(outdir=outdir):
                    files = [f for f in os.listdir(outdir) if f.startswith('idle-') and f.endswith('.json')]
                    return files and os.path.join(outdir, files[0])

                def measure(outdir=outdir, proc=proc, result=result):
                    path = wait_for(result, 60 + p['idle_warmup'] + p['idle_duration'], 'idle measurement', [proc])
                    with open(path) as f:
                        return json.load(f)
                r = self.attempt('idle', store, impl, measure)
                r and self.record('idle', store, impl, 'size=1, default pool', r['ops_per_s'], 'db ops/s', **r)
        finally:
            for store, impl, url, name, outdir, proc in running:
                stop(proc)
                if impl == 'ours':
                    try:
                        mb.stream(name, url=url).delete()
                    except Exception:  # noqa: BLE001 - cleanup only
                        pass

    # -- report -----------------------------------------------------------
    def find(self, scenario, store, impl, variant=None):
        for row in self.results:
            if (row['scenario'], row['store'], row['impl']) == (scenario, store, impl) and \
                    (variant is None or row['variant'] == variant):
                return row
        return None

    def targets(self):
        out = []

        def ratio(name, num, den, op, bound, note=''):
            value = num / den if (num is not None and den) else None
            met = None if value is None else (value >= bound if op == '>=' else value <= bound)
            out.append({'target': name, 'value': value, 'op': op, 'bound': bound, 'met': met, 'note': note})

        def value(scenario, store, impl, variant=None, key=None):
            row = self.find(scenario, store, impl, variant)
            if row is None:
                return None
            return row['details'].get(key) if key else row['value']

        for store, raw_name in (('sqlite', 'executemany'), ('mongodb', 'insert_many')):
            ratio(f'append batched / raw {raw_name} ({store})', value('append_batch', store, 'ours'),
                  value('append_batch', store, 'raw'), '>=', 0.8)
        for store in ('sqlite', 'mongodb'):
            ratio(f'end-to-end inline / raw ceiling ({store})', value('e2e_inline', store, 'ours'),
                  value('e2e_inline', store, 'raw'), '>=', 0.5)
        ratio('end-to-end inline / minibatch 0.6.0 inline, same n (mongodb)',
              value('e2e_inline_060n', 'mongodb', 'ours'), value('e2e_inline_060n', 'mongodb', 'v060'), '>=', 20)
        ratio('latency p50, default pool / minibatch 0.6.0 (mongodb)', value('latency_process', 'mongodb', 'ours'),
              value('latency_process', 'mongodb', 'v060'), '<=', 0.5)
        ratio('latency p50, inline / minibatch 0.6.0 inline (mongodb)', value('latency_inline', 'mongodb', 'ours'),
              value('latency_inline', 'mongodb', 'v060'), '<=', 0.5)
        for executor in ('process', 'inline'):
            v = value(f'latency_{executor}', 'sqlite', 'ours')
            out.append({'target': f'latency p50 ms, {"default pool" if executor == "process" else "inline"} (sqlite)',
                        'value': v, 'op': '<', 'bound': 10, 'met': None if v is None else v < 10, 'note': ''})
        for store in ('sqlite', 'mongodb'):
            v = value('idle', store, 'ours')
            out.append({'target': f'idle consumer db ops/s ({store})', 'value': v, 'op': '<=', 'bound': 2,
                        'met': None if v is None else v <= 2, 'note': ''})
        for store in ('sqlite', 'mongodb'):
            ratio(f'2 consumers / 1 consumer, CPU-bound ({store})', value('scale_out', store, 'ours', '2 consumer(s)'),
                  value('scale_out', store, 'ours', '1 consumer(s)'), '>=', 1.6)
        for store in ('sqlite', 'mongodb'):
            row = self.find('async_io', store, 'ours')
            mine = next((r for r in self.results if r['scenario'] == 'async_io' and r['store'] == store
                         and r['details'].get('mode') == 'async'), None)
            pool = next((r for r in self.results if r['scenario'] == 'async_io' and r['store'] == store
                         and r['details'].get('mode') == 'process'), None)
            if row is not None:
                bound = 3 * self.p['async_delay']
                v = mine and mine['value']
                out.append({'target': f'async def: {self.p["async_n"]} windows of a {self.p["async_delay"]:g} s '
                                      f'call, seconds ({store})', 'value': v, 'op': '<=', 'bound': bound,
                            'met': None if v is None else v <= bound,
                            'note': f'process pool: {pool["value"]:.1f} s' if pool else ''})
        self.eventtime_targets(ratio, value)
        for store in self.stores:
            if self.wanted('groups'):
                ratio(f'end to end per group, 2 groups / 1 group ({store})',
                      value('groups', store, 'ours', 'e2e, 2 group(s)'),
                      value('groups', store, 'ours', 'e2e, 1 group(s)'), '>=', 0.8)
                ratio(f'append batched, 5 groups registered / none ({store})',
                      value('groups', store, 'ours', 'append, 5 groups'),
                      value('groups', store, 'ours', 'append, 0 groups'), '>=', 0.9)
        return out

    def eventtime_targets(self, ratio, value):
        for store in self.stores:
            keys = self.param('et_keys', store)
            ratio(f'keyed tumbling, {keys:,} keys / size=100 count windows ({store})',
                  value('eventtime', store, 'ours', f'tumbling(60), {keys:,} keys'),
                  value('eventtime', store, 'ours', 'size=100, inline'), '>=', 0.5)

    def table(self, meta, targets):
        lines = []
        versions = meta['versions']
        lines.append(f"minibatch benchmarks, {meta['mode']} mode, {meta['started']}")
        lines.append(f"machine: {meta['machine']['nproc']} cores, {meta['machine'].get('ram_gib')} GiB RAM, "
                     f"Python {meta['machine']['python']}, SQLite {versions.get('sqlite')}, "
                     f"SecantusDB {versions.get('secantusdb')}, pymongo {versions.get('pymongo')}, "
                     f"mongoengine {versions.get('mongoengine')}; minibatch {versions.get('minibatch')} "
                     f"({versions.get('git')})"
                     + (f"; 0.6.0 venv: {versions['v060']}" if versions.get('v060') else ''))
        header = (f"{'scenario':<17}{'store':<9}{'ours':>12}{'raw':>12}{'ours/raw':>10}{'0.6.0':>11}"
                  f"{'ours/0.6.0':>12}  unit")
        lines.append(header)
        lines.append('-' * len(header))
        seen = []
        for row in self.results:
            per_variant = row['scenario'] in ('scale_out', 'eventtime', 'groups')
            key = (row['scenario'], row['store'], row['variant'] if per_variant else None)
            if key in seen or row['impl'] != 'ours':
                continue
            seen.append(key)
            ours_row = row
            raw_row = self.find(row['scenario'], row['store'], 'raw')
            old_row = self.find(row['scenario'], row['store'], 'v060')
            label = row['scenario'] + (f" x{row['details']['consumers']}" if row['scenario'] == 'scale_out' else '')
            if row['scenario'] == 'eventtime':
                label = 'et ' + row['variant'].split(',')[0].replace('RSS growth', 'RSS')
            if row['scenario'] == 'groups':
                label = {'e2e, 1 group(s)': 'groups e2e x1', 'e2e, 2 group(s)': 'groups e2e x2',
                         'append, 0 groups': 'groups append 0', 'append, 5 groups': 'groups append 5'}.get(
                             row['variant'], 'groups')
            lines.append(self._line(label, row['store'], ours_row, raw_row, old_row, row['unit']))
            if row['scenario'].startswith('latency'):
                for pct in ('p95_ms', 'p99_ms'):
                    lines.append(self._line(f"  {pct[:3]}", '', _pick(ours_row, pct), _pick(raw_row, pct),
                                            _pick(old_row, pct), 'ms ' + pct[:3]))
            if row['scenario'] == 'memory':
                lines.append(self._line('  growth 10%->end', '', _pick(ours_row, 'growth_mib'), None, None, 'MiB'))
            if row['scenario'] == 'idle' and row['store'] == 'sqlite':
                polls = row['details'].get('waiter_polls_per_s')
                lines.append(f"  (SQLite waiter: {polls:.0f} file polls/s, each 2 stat() + one 48-byte read; "
                             f"not database operations)" if polls is not None else '')
        for row in self.results:  # 0.6.0-only rows (ours failed)
            if row['impl'] == 'v060' and not self.find(row['scenario'], row['store'], 'ours'):
                lines.append(self._line(row['scenario'], row['store'], None, None, row, row['unit']))
        lines.append('')
        lines.append('targets:')
        for t in targets:
            v = t['value']
            shown = '   n/a' if v is None else f'{v:8.2f}'
            verdict = {True: 'met', False: 'MISSED', None: 'not measured'}[t['met']]
            lines.append(f"  {t['target']:<58} {shown}  (target {t['op']} {t['bound']:g})  {verdict}")
        if self.errors:
            lines.append('')
            lines.append('errors:')
            for e in self.errors:
                lines.append(f"  {e['scenario']} {e['store']} {e['impl']}: {e['error']}")
        return '\n'.join(lines)

    @staticmethod
    def _line(label, store, ours_row, raw_row, old_row, unit):
        def fmt(row):
            return f"{row['value']:>12,.1f}" if row and row['value'] is not None else f"{'-':>12}"

        def ratio(a, b, width):
            if a and b and a['value'] is not None and b['value']:
                return f"{a['value'] / b['value']:>{width}.2f}"
            return f"{'-':>{width}}"
        return (f"{label:<17}{store:<9}{fmt(ours_row)}{fmt(raw_row)}{ratio(ours_row, raw_row, 10)}"
                f"{fmt(old_row)[1:]}{ratio(ours_row, old_row, 12)}  {unit}")

    def versions(self):
        from importlib.metadata import PackageNotFoundError, version
        import sqlite3
        out = {'sqlite': sqlite3.sqlite_version}
        for pkg in ('minibatch', 'pymongo', 'mongoengine', 'SecantusDB', 'cloudpickle'):
            try:
                out[pkg.lower()] = version(pkg)
            except PackageNotFoundError:
                out[pkg.lower()] = None
        try:
            out['git'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out['git'] = None
        if self.mongo:
            try:
                import pymongo
                client = pymongo.MongoClient(self.mongo, serverSelectionTimeoutMS=5000)
                out['mongodb_server'] = client.admin.command('buildInfo').get('version')
                client.close()
            except Exception as exc:  # noqa: BLE001 - informational
                out['mongodb_server'] = f'unknown ({exc})'
        if self.legacy and self.mongo:
            try:
                out['v060'] = self.run_legacy('versions', timeout=60)
            except Exception as exc:  # noqa: BLE001 - informational
                out['v060'] = f'unknown ({exc})'
        return out

    def cleanup(self):
        if self.legacy_url:
            try:
                import pymongo
                client = pymongo.MongoClient(self.legacy_url, serverSelectionTimeoutMS=5000)
                client.drop_database(database_of(self.legacy_url))
                client.close()
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pick(row, key):
    if row is None or row['details'].get(key) is None:
        return None
    return {'value': row['details'][key]}


def _reset_our_stores():
    # close the connections of the scenario's stores (a new SQLite file per scenario)
    try:
        from minibatch.store import reset_stores
    except ImportError:
        return
    try:
        reset_stores()
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small sizes, short durations (CI smoke run)')
    parser.add_argument('--json', help='write the results here (default: a file in the temp dir)')
    parser.add_argument('--mongo', help='MongoDB URL of a server to use (retryWrites=false is added)')
    parser.add_argument('--legacy-python', help="python of a virtualenv with minibatch==0.6.0")
    parser.add_argument('--no-legacy', action='store_true', help='skip minibatch 0.6.0')
    parser.add_argument('--only', help=f'comma-separated subset of: {", ".join(SCENARIOS)}')
    parser.add_argument('--stores', default='sqlite,mongodb', help='comma-separated: sqlite,mongodb')
    parser.add_argument('--set', action='append', metavar='KEY=JSON',
                        help='override a size, e.g. --set e2e_n_mongodb=20000 (see FULL/QUICK in bench.py)')
    args = parser.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.append(ROOT)  # a fresh clone without an install still finds our minibatch
    bench = Bench(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    try:
        bench.run()
        meta = {'mode': 'quick' if args.quick else 'full', 'started': started.isoformat(timespec='seconds'),
                'seconds': None, 'machine': machine_info(), 'versions': bench.versions(), 'params': bench.p,
                'stores': bench.stores, 'legacy': bool(bench.legacy and bench.mongo), 'timings': bench.timings}
    finally:
        bench.cleanup()
    meta['seconds'] = round(time.perf_counter() - wall, 1)
    targets = bench.targets()
    report = {'meta': meta, 'results': bench.results, 'targets': targets, 'errors': bench.errors}
    print()
    print(bench.table(meta, targets))
    path = args.json or os.path.join(tempfile.gettempdir(),
                                     f'minibatch-bench-{started.strftime("%Y%m%dT%H%M%S")}.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=2, default=str)
    print(f'\nresults: {path} ({meta["seconds"]} s; per scenario: '
          + ', '.join(f'{k} {v:.0f}' for k, v in bench.timings.items()) + ')')
    return 1 if bench.errors else 0


if __name__ == '__main__':
    sys.exit(main())
