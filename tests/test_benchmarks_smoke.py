"""The benchmark suite runs end to end in quick mode and reports every scenario.

No timing is asserted (CI machines are noisy): only that each scenario
produced a number for each store, that the raw-driver references and the
target ratios are there, and that the JSON is well-formed. minibatch 0.6.0
is included only when ``benchmarks/run`` already created its virtualenv; the
test suite never installs it.
"""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_PYTHON = os.path.join(ROOT, 'benchmarks', '.venv', 'minibatch-0.6.0', 'bin', 'python')

SCENARIOS = ('append_one', 'append_batch', 'append_buffered', 'e2e_inline', 'e2e_process', 'latency_inline',
             'latency_process', 'idle', 'scale_out', 'memory')
STORES = ('sqlite', 'mongodb')
RAW = ('append_one', 'append_batch', 'e2e_inline')  # scenarios measured with the raw driver too
# minibatch 0.6.0 (MongoDB): its end to end is compared with ours on the same, smaller stream (*_060n)
LEGACY = ('append_one', 'append_batch', 'e2e_inline_060n', 'e2e_process_060n', 'latency_inline', 'latency_process',
          'idle')


def legacy_available():
    if not os.access(LEGACY_PYTHON, os.X_OK):
        return False
    # -I: this repository's minibatch (current directory, PYTHONPATH) must not answer for 0.6.0
    probe = subprocess.run([LEGACY_PYTHON, '-I', '-c', 'import minibatch, mongoengine, dill, sys; '
                            'sys.exit(minibatch._version.version != "0.6.0")'], capture_output=True, timeout=60)
    return probe.returncode == 0


def test_quick_benchmark_reports_every_scenario(mongo_url, tmp_path):
    out = tmp_path / 'bench.json'
    legacy = legacy_available()
    cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', 'bench.py'), '--quick', '--mongo', mongo_url,
           '--json', str(out)] + (['--legacy-python', LEGACY_PYTHON] if legacy else ['--no-legacy'])
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f'benchmark failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'

    report = json.loads(out.read_text())
    assert report['errors'] == []
    meta = report['meta']
    assert meta['mode'] == 'quick'
    assert meta['machine']['nproc'] >= 1 and meta['machine']['python']
    for key in ('sqlite', 'pymongo', 'minibatch', 'mongodb_server'):
        assert meta['versions'].get(key), f'version of {key} missing: {meta["versions"]}'

    def rows(scenario, store, impl):
        return [r for r in report['results']
                if (r['scenario'], r['store'], r['impl']) == (scenario, store, impl)]

    def number(value):
        return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0

    for scenario in SCENARIOS:
        for store in STORES:
            found = rows(scenario, store, 'ours')
            assert found, f'no result for {scenario} on {store}'
            assert all(number(r['value']) for r in found), found
            if scenario in RAW:
                assert [r for r in rows(scenario, store, 'raw') if number(r['value'])], f'no raw {scenario} on {store}'
    for scenario in LEGACY if legacy else ():
        for impl in ('ours', 'v060'):
            assert [r for r in rows(scenario, 'mongodb', impl) if number(r['value'])], f'no {impl} {scenario}'

    for store in STORES:
        scale = {r['details']['consumers'] for r in rows('scale_out', store, 'ours')}
        assert scale == {1, 2, 4}
        for executor in ('inline', 'process'):
            latency = rows(f'latency_{executor}', store, 'ours')[0]['details']
            assert latency['missing'] == 0 and latency['samples'] == latency['n']
            assert latency['p50_ms'] <= latency['p95_ms'] <= latency['p99_ms']
        memory = rows('memory', store, 'ours')[0]['details']
        assert memory['samples'] > 0 and memory['peak_rss_mib'] > 0
        idle = rows('idle', store, 'ours')[0]['details']
        assert idle['seconds'] > 0 and isinstance(idle['by_kind'], dict)

    # every target names its bound and, with all scenarios run, has a value and a verdict
    assert report['targets']
    for target in report['targets']:
        assert target['op'] in ('>=', '<=', '<') and number(target['bound'])
        if 'minibatch 0.6.0' in target['target'] and not legacy:
            continue
        assert number(target['value']) and target['met'] in (True, False), target

    # the table was printed, with the targets
    assert 'targets:' in proc.stdout and 'scale_out x2' in proc.stdout
