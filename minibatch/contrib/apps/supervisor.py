"""Consumer functions in supervised child processes: started, watched, restarted, stopped.

Why child processes, and why spawned ones
-----------------------------------------
A consumer blocks for as long as it consumes, so an app runs each one in a
process of its own next to its web server. That process is a **fresh
interpreter** (spawned), never a fork of the app: the app runs threads (the
web server's, the monitor below, the MongoDB driver's), and a fork copies
whatever locks those threads hold at that instant into a child that can
never release them. A spawned child starts clean.

The function reaches the child the way ``multiprocessing``'s spawn method
ships it, but through cloudpickle (:mod:`minibatch.contrib.apps.child` reads
it from a pipe): functions of importable modules travel by reference (the
child imports them, with the app's ``sys.path``), and functions defined in
the main script, closures and lambdas travel by value. Unlike
``multiprocessing``, the child does not import the app's main script again,
and no helper process is left behind. What the function refers to must be
picklable; :class:`ConsumerProcess` checks that when it is created.

Supervision
-----------
A :class:`Supervisor` thread looks at its children every ``POLL`` seconds. A
child that exits without being asked to (killed, out of memory, crashed, or
its function returned) is started again after ``restart_backoff`` seconds,
doubling for each restart in a row up to ``max_backoff``; after
``max_restarts`` restarts in a row it is left dead and reported so. A child
that ran ``stable_after`` seconds starts a new row, so a rare crash over
weeks does not use up ``max_restarts``. ``stop()`` sends SIGTERM (a minibatch
consumer then finishes its windows in flight and stops), waits the grace
period, then SIGKILLs what is left. A child also stops by itself when the
app dies: it sends itself SIGTERM when its stdin pipe from the app closes.
"""
import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import cloudpickle

from minibatch.errors import ConfigurationError
from minibatch.store.base import utcnow

logger = logging.getLogger('minibatch.contrib.apps')

#: the states of a ConsumerProcess
NEW, RUNNING, RESTARTING, DEAD, STOPPED = 'new', 'running', 'restarting', 'dead', 'stopped'

# the child takes the directory holding the minibatch package from argv[1], then everything else from the frame
_BOOTSTRAP = ('import sys; sys.path.insert(0, sys.argv[1]); '
              'from minibatch.contrib.apps.child import main; main()')


def _package_root():
    import minibatch
    return os.path.dirname(os.path.dirname(os.path.abspath(minibatch.__file__)))


class ConsumerProcess:
    """``function(*args, **kwargs)`` run in a child interpreter, restarted when it dies.

    Not thread-safe on its own: the :class:`Supervisor` calls it under its lock.

    :param name: the name shown in the app's ``/status``
    :param restart: start the child again when it exits without ``stop()``
    :param max_restarts: restarts in a row before giving up (state ``dead``); None: no limit
    :param restart_backoff: seconds before the first restart of a row; doubles per restart
    :param max_backoff: the longest wait before a restart
    :param stable_after: a child that ran this many seconds starts a new row of restarts
    :param executable: the Python interpreter for the child (default ``sys.executable``)
    :raises minibatch.errors.ConfigurationError: ``function`` is not callable, it or its
        arguments cannot be pickled, or a restart setting is out of range
    """
    #: how many of the latest pids ``pids`` keeps
    KEEP_PIDS = 20

    def __init__(self, name, function, args=(), kwargs=None, restart=True, max_restarts=5, restart_backoff=1.0,
                 max_backoff=30.0, stable_after=60.0, executable=None):
        if not callable(function):
            raise ConfigurationError(f'a consumer must be a callable, got {function!r}')
        if max_restarts is not None and (isinstance(max_restarts, bool) or not isinstance(max_restarts, int)
                                         or max_restarts < 0):
            raise ConfigurationError(f'max_restarts must be an integer >= 0 or None, got {max_restarts!r}')
        for label, value in (('restart_backoff', restart_backoff), ('max_backoff', max_backoff),
                             ('stable_after', stable_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f'{label} must be a number of seconds >= 0, got {value!r}')
        self.name = name
        self.restart = bool(restart)
        self.max_restarts = max_restarts
        self.restart_backoff = float(restart_backoff)
        self.max_backoff = float(max_backoff)
        self.stable_after = float(stable_after)
        self.executable = executable or sys.executable
        if not self.executable:
            raise ConfigurationError('no Python interpreter to start consumers with: pass executable=')
        try:
            self.payload = cloudpickle.dumps((function, tuple(args), dict(kwargs or {})))
        except Exception as exc:
            raise ConfigurationError(
                f'consumer {name!r}: the function and its arguments must be picklable to run in a child process '
                f'({type(exc).__name__}: {exc}); define what it needs inside the function or pass it as '
                f'plain arguments') from exc
        self.state = NEW
        #: restarts done so far (all of them, not only the current row)
        self.restarts = 0
        #: the pids of the children started (the latest KEEP_PIDS), oldest first
        self.pids = []
        self.popen = None
        self.started = None  # when the current child started (naive UTC)
        self.last_exit = None  # when a child last exited without being asked to
        self.last_exitcode = None
        self.error = None  # why the last start failed, if it did
        self._row = 0  # restarts in the current row
        self._started_at = 0.0  # monotonic time of the current child's start
        self._next_start = None  # monotonic time of the pending restart

    # -- life cycle (called by the Supervisor, under its lock) ------------
    def start(self):
        """Start a child now. Raises OSError if the interpreter cannot be started."""
        frame = pickle.dumps({'sys_path': list(sys.path), 'payload': self.payload})
        # start_new_session: Ctrl-C in the app's terminal reaches the app only; the app then stops
        # its children in order (SIGTERM, grace period) instead of every process at once
        popen = subprocess.Popen([self.executable, '-c', _BOOTSTRAP, _package_root()], stdin=subprocess.PIPE,
                                 start_new_session=True)
        try:
            popen.stdin.write(len(frame).to_bytes(8, 'big') + frame)
            popen.stdin.flush()
        except BrokenPipeError:
            pass  # it died before reading: poll() reports the exit like any other
        self.popen = popen
        # the recent ones are enough to find this consumer's reports; a crash loop must not grow it forever
        self.pids = self.pids[-(self.KEEP_PIDS - 1):] + [popen.pid]
        self.state = RUNNING
        self.started = utcnow()
        self.error = None
        self._started_at = time.monotonic()
        self._next_start = None
        logger.info('minibatch: consumer %r started (pid %d)', self.name, popen.pid)

    def poll(self, now=None):
        """Notice an exit, and start a due restart. Call often (the Supervisor does)."""
        now = time.monotonic() if now is None else now
        self.check_exit(now)
        if self.state == RESTARTING and now >= self._next_start:
            self.restarts += 1
            self._row += 1
            try:
                self.start()
            except OSError as exc:
                self.error = f'{type(exc).__name__}: {exc}'
                logger.error('minibatch: consumer %r could not be restarted: %s', self.name, self.error)
                self._exited(None, now)

    def check_exit(self, now=None):
        """If the child has exited unasked, decide between a restart and giving up."""
        if self.state == RUNNING and self.popen.poll() is not None:
            self._exited(self.popen.returncode, time.monotonic() if now is None else now)

    def _exited(self, code, now):
        self.last_exitcode = code
        self.last_exit = utcnow()
        self._close_pipe()
        if now - self._started_at >= self.stable_after:
            self._row = 0  # it ran long enough: this failure starts a new row
        if not self.restart or (self.max_restarts is not None and self._row >= self.max_restarts):
            self.state = DEAD
            logger.error('minibatch: consumer %r exited (code %s); %s', self.name, code,
                         'not restarting' if not self.restart else f'gave up after {self._row} restarts in a row')
            return
        delay = min(self.restart_backoff * 2 ** self._row, self.max_backoff)
        self.state = RESTARTING
        self._next_start = now + delay
        logger.warning('minibatch: consumer %r exited (code %s); restarting in %.1fs', self.name, code, delay)

    def terminate(self):
        """Ask the child to stop (SIGTERM); no restart follows. Does not wait."""
        if self.state == RUNNING and self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.state in (NEW, RESTARTING, DEAD):
            self.state = STOPPED

    def finish(self, deadline):
        """Wait for a terminated child until ``deadline`` (monotonic), then SIGKILL it; reap it."""
        if self.popen is not None and self.state == RUNNING:
            try:
                self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning('minibatch: consumer %r (pid %d) did not stop in time; killing it',
                               self.name, self.popen.pid)
                self.popen.kill()
                self.popen.wait()
        self._close_pipe()
        self.state = STOPPED

    def _close_pipe(self):
        if self.popen is not None and self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    # -- reporting --------------------------------------------------------
    @property
    def pid(self):
        """The pid of the current (or last) child; None before the first start."""
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self):
        """True while the current child runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def exitcode(self):
        """The current child's exit code: None while it runs, negative for a signal (-9: SIGKILL)."""
        return self.popen.returncode if self.popen is not None else None

    def info(self):
        """What ``/status`` shows about this consumer, as a dict of plain values."""
        self.check_exit()
        next_restart = None
        if self.state == RESTARTING:
            next_restart = round(max(0.0, self._next_start - time.monotonic()), 3)
        return {'name': self.name, 'pid': self.pid, 'alive': self.alive, 'state': self.state,
                'restarts': self.restarts, 'exitcode': self.exitcode, 'last_exitcode': self.last_exitcode,
                'started': self.started, 'last_exit': self.last_exit, 'next_restart_in': next_restart,
                'error': self.error, 'pids': list(self.pids)}

    def __repr__(self):
        return f'<ConsumerProcess {self.name!r} {self.state} pid={self.pid}>'


class Supervisor:
    """Starts :class:`ConsumerProcess` children and restarts them from one monitor thread.

    Thread-safe. ``stop()`` is idempotent and also runs at interpreter exit.
    """
    #: seconds between two looks at the children
    POLL = 0.1

    def __init__(self, stop_grace=35.0):
        # a consumer waits up to WindowEmitter.STOP_GRACE (30 s) for its windows in flight
        self.stop_grace = stop_grace
        self.consumers = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread = None
        self._exit_hook = False

    def add(self, consumer):
        """Start ``consumer`` now and watch it. Raises OSError if it cannot be started."""
        with self._lock:
            consumer.start()
            self.consumers.append(consumer)
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._monitor, name='minibatch-supervisor', daemon=True)
                self._thread.start()
            if not self._exit_hook:
                # runs before multiprocessing's own exit handler and before the interpreter tears down
                atexit.register(self.stop)
                self._exit_hook = True
        return consumer

    def _monitor(self):
        while not self._stopping.wait(self.POLL):
            with self._lock:
                if self._stopping.is_set():
                    break
                for consumer in self.consumers:
                    try:
                        consumer.poll()
                    except Exception:  # one bad child must not end the supervision of the others
                        logger.exception('minibatch: supervising consumer %r failed', consumer.name)

    def stop(self, timeout=None):
        """Stop every child: SIGTERM, wait up to ``timeout`` (default ``stop_grace``) seconds, then SIGKILL.

        Blocks until every child has exited and been reaped. No restart happens
        during or after it (until the next :meth:`add`).
        """
        timeout = self.stop_grace if timeout is None else timeout
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            consumers = list(self.consumers)
            for consumer in consumers:
                consumer.terminate()
            deadline = time.monotonic() + timeout
            for consumer in consumers:
                consumer.finish(deadline)
            if self._exit_hook:
                atexit.unregister(self.stop)
                self._exit_hook = False

    def info(self):
        """The :meth:`ConsumerProcess.info` of every child, in the order they were added."""
        with self._lock:
            return [consumer.info() for consumer in self.consumers]

    def pids(self):
        """Every pid any child ever had."""
        with self._lock:
            return {pid for consumer in self.consumers for pid in consumer.pids}
