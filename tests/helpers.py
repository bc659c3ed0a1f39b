"""Small helpers shared by the test modules."""
import json
import signal
import socket
import threading
import time


def wait_until(condition, timeout=5.0, interval=0.02, message='condition', alive=()):
    """Poll ``condition()`` until it returns something truthy, and return that.

    Fails at the deadline, or at once if a process in ``alive`` (Popen objects)
    has exited, so that a crashed consumer does not cost the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        dead = [proc for proc in alive if proc.poll() is not None]
        if dead:
            raise AssertionError(f'process exited with {dead[0].returncode} while waiting for {message}')
        if time.monotonic() > deadline:
            raise AssertionError(f'{message} not met within {timeout}s (last value: {value!r})')
        time.sleep(interval)


def complete_records(path):
    """The JSON records of the JSON-lines file ``path`` whose lines are complete.

    A consumer process may be writing its last line while a test polls the file,
    so a last line without its newline is a record not yet written, and left out.
    A line that ends but does not parse has been seen once (a test run, 2026-12-02) while another process
    wrote: a write to a file is not atomic for a concurrent reader. The file is read again
    then, for up to a second, before the line counts as broken.
    """
    for _ in range(20):
        try:
            with open(path) as log:
                return [json.loads(line) for line in log if line.endswith('\n') and line.strip()]
        except json.JSONDecodeError:
            time.sleep(0.05)
    with open(path) as log:
        return [json.loads(line) for line in log if line.endswith('\n') and line.strip()]


def free_port():
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def settled(stream):
    """True when no message of ``stream`` is waiting, held or due for a retry."""
    stats = stream.stats()
    return stats['available'] == stats['claimed'] == stats['retry'] == 0


def attach(stream, source, within=10.0):
    """Attach ``source`` to ``stream`` and wait until it is ready (connected, subscribed)."""
    stream.attach(source)
    assert source.ready.wait(within), f'{source} did not get ready: {source.last_error}'
    return source


def stop(stream, source, within=3.0):
    """Stop ``stream``'s sources and check that ``source`` has returned within ``within`` seconds."""
    stream.stop()
    assert source.stopped.wait(within), f'{source} still running {within}s after stream.stop()'


def default_sigint():
    """``preexec_fn`` for a child a test interrupts with SIGINT: Ctrl-C handled as usual.

    A child inherits an ignored SIGINT (``bash scripts/test &`` runs the suite with
    SIGINT ignored, as the shell does for every background job), and Python then
    installs no KeyboardInterrupt handler; ``restore_signals`` resets only SIGPIPE,
    SIGXFZ and SIGXFSZ, so this puts SIGINT back to its default before the exec.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ListSink:
    """A sink collecting what it is given, in the process that runs the emitter (thread-safe)."""

    def __init__(self):
        self.items = []
        self._lock = threading.Lock()

    def put(self, message):
        with self._lock:
            self.items.append(message)
