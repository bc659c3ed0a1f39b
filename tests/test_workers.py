"""Process pool workers: they die with their consumer, obey SIGTERM, and a worker's crash fails only its window.

Issue 12, item 8 (orphaned workers) and its siblings: ``os._exit`` in a worker,
an exception that cannot travel back from the worker.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import types

import pytest

import minibatch as mb
from tests.helpers import wait_until
from tests.test_reliability import CONSUMER, delivered, events, start_consumer, stop_all
from tests.test_timeouts import consume_until, process_alive


def worker_pids(outdir, consumer):
    return {pid for pid, _ in events(outdir, 'start') if pid != consumer.pid}


def test_pool_workers_die_with_a_killed_consumer(store_url, tmp_path):
    stream = mb.stream('orphans', url=store_url)
    stream.append([{'i': i} for i in range(2)])
    proc = start_consumer(store_url, 'orphans', tmp_path, size=1, executor='process', workers=2, slow=60)
    try:
        wait_until(lambda: len(worker_pids(tmp_path, proc)) == 2, timeout=60, message='both workers running',
                   alive=[proc])
        workers = worker_pids(tmp_path, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(lambda: not [pid for pid in workers if process_alive(pid)], timeout=5,
                   message=f'the workers {sorted(workers)} of the killed consumer gone')
    finally:
        stop_all([proc])
        for pid in worker_pids(tmp_path, proc):
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)  # (only when the test failed: leave nothing behind)
    assert delivered(tmp_path) == [], 'no orphan finished a window of its dead consumer'


def test_a_pool_worker_obeys_sigterm_and_its_window_runs_again(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    stream = mb.stream('terminated', url=url)
    stream.append({'i': 0})
    proc = start_consumer(url, 'terminated', tmp_path, size=1, executor='process', workers=1, slow=1.5,
                          retry_backoff=0.05)
    try:
        wait_until(lambda: worker_pids(tmp_path, proc), timeout=60, message='the worker running', alive=[proc])
        [worker] = worker_pids(tmp_path, proc)
        os.kill(worker, signal.SIGTERM)
        wait_until(lambda: not process_alive(worker), timeout=5, message='the worker ended by SIGTERM', alive=[proc])
        wait_until(lambda: delivered(tmp_path) == [0], timeout=60, message='the window run again on a new worker',
                   alive=[proc])
    finally:
        stop_all([proc])
    assert proc.returncode == 0


def test_sigterm_to_the_whole_group_gives_the_window_back_uncounted(tmp_path):
    """systemd (KillMode=control-group) signals the consumer and its workers at once: nobody's failure."""
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    stream = mb.stream('group-stop', url=url)
    stream.append({'i': 0})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get('PYTHONPATH', '')]))
    options = json.dumps({'size': 1, 'executor': 'process', 'workers': 1, 'slow': 60})
    proc = subprocess.Popen([sys.executable, CONSUMER, url, 'group-stop', str(tmp_path), options], env=env,
                            start_new_session=True)  # its own process group, so that killpg spares pytest
    try:
        wait_until(lambda: worker_pids(tmp_path, proc), timeout=60, message='the worker running', alive=[proc])
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop_all([proc])
    assert [(m.data['i'], m.attempts) for m in stream.store.find_available('group-stop')] == [(0, 0)], \
        'available again at once, no attempt counted'


ORPHAN = textwrap.dedent('''
    import os, sys, time
    from minibatch.executors import die_with_parent
    parent = os.getpid()
    if os.fork() == 0:  # the worker: asks to die with its parent, by the watchdog thread (no prctl)
        die_with_parent(parent, pdeathsig=False)
        with open(sys.argv[1], 'w') as out:
            out.write(str(os.getpid()))
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
''')


def test_the_watchdog_ends_a_worker_whose_parent_died_where_prctl_is_not_used(tmp_path):
    pidfile = tmp_path / 'worker.pid'
    parent = subprocess.Popen([sys.executable, '-c', ORPHAN, str(pidfile)])
    try:
        worker = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=30,
                                message='the worker started', alive=[parent]))
        assert process_alive(worker)
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: not process_alive(worker), timeout=5, message='the orphaned worker gone')
    finally:
        parent.kill()
        parent.wait()


def exits_abruptly(window):
    if window.data[0].get('exit'):
        os._exit(7)  # no exception, no cleanup: the worker process is simply gone
    return window.data


def test_os_exit_in_a_worker_fails_its_window_and_the_pool_is_replaced(store_url):
    stream = mb.stream('os-exit', url=store_url)
    stream.append([{'exit': True}, {'i': 0}, {'i': 1}])
    consume_until(store_url, 'os-exit', exits_abruptly, dead=1, processed=2, executor='process', workers=1,
                  max_attempts=2, retry_backoff=0.05)
    [dead] = stream.dead_letters()
    assert dead.attempts == 2 and 'worker process died' in dead.error


def interrupts_itself(window):
    if window.data[0].get('interrupt'):
        raise KeyboardInterrupt  # its own raise, not a Ctrl-C: workers never get that
    return window.data


async def interrupts_itself_async(window):
    return interrupts_itself(window)


@pytest.mark.parametrize('executor', ['process', 'thread', 'async'])
def test_a_keyboard_interrupt_raised_by_the_function_is_a_failed_attempt(tmp_path, executor):
    """It stopped a pool consumer, and silently killed the event loop of an async one (nothing ran after it)."""
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    mb.stream('interrupted', url=url).append([{'interrupt': True}, {'i': 0}, {'i': 1}])
    fn = interrupts_itself_async if executor == 'async' else interrupts_itself
    options = {} if executor == 'async' else {'executor': executor}
    consume_until(url, 'interrupted', fn, dead=1, processed=2, workers=1, max_attempts=2, retry_backoff=0.05,
                  **options)
    [dead] = mb.stream('interrupted', url=url).dead_letters()
    assert dead.attempts == 2 and 'raised KeyboardInterrupt' in dead.error


class TwoArgumentError(Exception):
    """Pickles as TwoArgumentError(message), which its __init__ refuses: it cannot be unpickled."""

    def __init__(self, what, why):
        super().__init__(f'{what} failed: {why}')


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.callback = lambda: None  # the standard pickle cannot pickle a lambda


def raises_what_it_is_told(window):
    kind = window.data[0].get('raise')
    if kind == 'two-arguments':
        raise TwoArgumentError('charge', 'card declined')
    if kind == 'unpicklable':
        raise UnpicklableError('has a lambda')
    return window.data


def round_trips(fn, message):
    """True if the exception ``fn`` raises for ``message`` survives pickling in this process."""
    try:
        fn(types.SimpleNamespace(data=[message]))  # a stand-in window
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            return False
        return True
    raise AssertionError(f'{fn.__name__} raised nothing for {message}')


@pytest.mark.parametrize('kind, text', [('two-arguments', 'charge failed: card declined'),
                                        ('unpicklable', 'has a lambda')])
def test_an_exception_that_cannot_travel_back_fails_only_its_window(tmp_path, kind, text):
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    stream = mb.stream('unsendable', url=url)
    stream.append([{'raise': kind}] + [{'i': i} for i in range(3)])
    # max_attempts=1: had the pool broken, the windows beside the failing one would have failed too
    em, _ = consume_until(url, 'unsendable', raises_what_it_is_told, dead=1, processed=3, executor='process',
                          workers=2, max_attempts=1)
    [dead] = stream.dead_letters()
    assert text in dead.error and 'worker process died' not in dead.error
    if not round_trips(raises_what_it_is_told, {'raise': kind}):  # (tblib, which Dask installs, can pickle some)
        assert 'could not be sent back from the worker process' in dead.error
    assert em.stats['dead'] == 1 and em.stats['committed'] == 3
