"""Helpers shared by every benchmark process, in our venv and in minibatch 0.6.0's alike.

Nothing here imports minibatch: the same file serves both libraries. Only the
standard library is needed (pymongo where a MongoDB helper is called).
"""
import json
import os
import platform
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- numbers ---------------------------------------------------------------
def rate(n, seconds):
    """Messages per second; ``None`` when nothing was measured."""
    if not n or not seconds:
        return None
    return n / seconds


def percentile(values, p):
    """Nearest-rank percentile of ``values`` (``None`` when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(p / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def latency_summary(seconds):
    """p50/p95/p99/max/mean in milliseconds of a list of latencies in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {'p50_ms': percentile(ms, 50), 'p95_ms': percentile(ms, 95), 'p99_ms': percentile(ms, 99),
            'max_ms': max(ms) if ms else None, 'mean_ms': sum(ms) / len(ms) if ms else None, 'samples': len(ms)}


# -- processes -------------------------------------------------------------
def proc_status_kib(pid, field):
    """A ``VmRSS``/``VmHWM``-style field of /proc/PID/status in KiB, or None (process gone, not Linux)."""
    try:
        with open(f'/proc/{pid}/status') as status:
            for line in status:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child_env(legacy=False):
    """Environment for a benchmark child process.

    The store is always passed explicitly, so the MINIBATCH_* variables are
    dropped. minibatch 0.6.0's processes also lose PYTHONPATH: a PYTHONPATH
    naming this repository (as the test suite sets it) would shadow the old
    release with our code.
    """
    env = dict(os.environ)
    for var in ('MINIBATCH_URL', 'MINIBATCH_MONGO_URL', 'MONGO_URL'):
        env.pop(var, None)
    if legacy:
        env.pop('PYTHONPATH', None)
    env['PYTHONUNBUFFERED'] = '1'
    return env


def start(cmd, log_path, legacy=False):
    """Start ``cmd`` in its own process group (its pool workers die with it), output to ``log_path``."""
    log = open(log_path, 'ab')
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(legacy), start_new_session=True)
    finally:
        log.close()


def stop(proc, grace=10.0):
    """SIGTERM the process started by :func:`start`, then SIGKILL its group if it lingers. Idempotent."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # the group id is the child's pid (start_new_session): its pool workers go too
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def wait_for(condition, timeout, what, procs=(), interval=0.01):
    """Poll ``condition()`` until truthy and return it; TimeoutError at the deadline or if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f'process {proc.args!r} exited with {proc.returncode} while waiting for {what}')
        if time.monotonic() > deadline:
            raise TimeoutError(f'{what} not reached within {timeout:g} s')
        time.sleep(interval)


def log_tail(path, lines=30):
    try:
        with open(path, errors='replace') as log:
            return ''.join(log.readlines()[-lines:])
    except OSError:
        return ''


# -- MongoDB URLs ----------------------------------------------------------
def with_database(url, dbname):
    """``url`` naming database ``dbname`` instead, query string kept, ``retryWrites=false`` added if absent."""
    base, _, query = url.partition('?')
    scheme, _, rest = base.partition('://')
    hosts = rest.split('/', 1)[0]
    params = [p for p in query.split('&') if p]
    if not any(p.lower().startswith('retrywrites=') for p in params):
        params.append('retryWrites=false')
    return f'{scheme}://{hosts}/{dbname}?' + '&'.join(params)


def database_of(url):
    return url.partition('?')[0].partition('://')[2].partition('/')[2] or 'minibatch'


# -- files written by consumers ---------------------------------------------
def read_lines(outdir, prefix):
    """All lines of the files ``outdir/prefix*`` (one per writing process), split on whitespace."""
    rows = []
    for name in os.listdir(outdir):
        if name.startswith(prefix):
            with open(os.path.join(outdir, name)) as f:
                for line in f:
                    if line.endswith('\n'):  # a half-written last line is read next time
                        rows.append(line.split())
    return rows


def append_line(path, text):
    # one write() of a short line on an O_APPEND file: lines of concurrent writers never interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + '\n').encode())
    finally:
        os.close(fd)


# -- the latency scenario, for either library ---------------------------------
def run_latency(append, consumer_cmd, outdir, n, period, legacy=False, warmup=3, timeout=60.0):
    """Latency from ``append`` to the start of the consumer's function, one message every ``period`` s.

    ``consumer_cmd`` runs a consumer (benchmarks/consumer.py, role ``latency``)
    that writes ``i latency_seconds`` lines to ``outdir/lat-<pid>``. A few
    warm-up messages are sent and awaited first, so that process start-up,
    connections and the pool are not measured. Returns the summary in ms.
    """
    log = os.path.join(outdir, 'consumer.log')
    proc = start(consumer_cmd, log, legacy=legacy)
    try:
        wait_for(lambda: any(f.startswith('ready-') for f in os.listdir(outdir)), 60, 'consumer ready', [proc])
        for i in range(warmup):
            append({'i': -1 - i, 't': time.time()})
        try:
            wait_for(lambda: len(read_lines(outdir, 'lat-')) >= warmup, timeout, 'warm-up messages', [proc])
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f'{exc}; consumer log:\n{log_tail(log)}') from exc
        start_at = time.perf_counter()
        for i in range(n):
            # a fixed schedule: a slow append does not shift the messages after it
            delay = start_at + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            append({'i': i, 't': time.time()})
        produce_seconds = time.perf_counter() - start_at
        try:
            wait_for(lambda: len(read_lines(outdir, 'lat-')) >= warmup + n, timeout, 'all messages', [proc])
        except TimeoutError:
            pass  # reported as missing below
    finally:
        stop(proc)
    seen = {}
    for i, latency in read_lines(outdir, 'lat-'):
        if int(i) >= 0:
            seen.setdefault(int(i), float(latency))
    summary = latency_summary(list(seen.values()))
    summary.update(n=n, period_ms=period * 1000, missing=n - len(seen), produce_seconds=produce_seconds)
    return summary


def machine_info():
    info = {
        'nproc': os.cpu_count(),
        'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'python_implementation': platform.python_implementation(),
    }
    try:
        with open('/proc/meminfo') as meminfo:
            for line in meminfo:
                if line.startswith('MemTotal:'):
                    info['ram_gib'] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info['loadavg'] = os.getloadavg()
    except OSError:
        pass
    return info


def dump(obj):
    """JSON on one line (for results passed between processes on stdout)."""
    return json.dumps(obj, default=str)


def emit_result(obj):
    """Print the result line the orchestrator looks for (the last stdout line starting with RESULT)."""
    sys.stdout.write('RESULT ' + dump(obj) + '\n')
    sys.stdout.flush()
