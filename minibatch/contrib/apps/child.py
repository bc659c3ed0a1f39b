"""The entry point of a consumer child process (started by :class:`~minibatch.contrib.apps.supervisor.ConsumerProcess`).

The parent starts a fresh interpreter::

    python -c 'import sys; sys.path.insert(0, sys.argv[1]); from minibatch.contrib.apps.child import main; main()' ROOT

and writes one frame on its stdin: an 8-byte big-endian length and a pickled
dict with the parent's ``sys_path`` and ``payload``, the cloudpickle bytes of
``(function, args, kwargs)``. The child takes over the parent's import path,
unpickles and calls ``function(*args, **kwargs)`` in its main thread, so
that the consumer's SIGTERM handler (installed by ``@streaming``) works.

The stdin pipe stays open for the child's life: when it reaches end of file
the parent has gone (killed, crashed, or closed it in ``stop()``), and the
child sends itself SIGTERM, which stops a consumer gracefully. Consumers
therefore never outlive the app that supervises them.

While the child unpickles the function, :func:`loading` is True. A function
of an importable module is unpickled by importing its module; if that module
builds an app and calls ``start_streaming`` at import time (the gunicorn
style), ``start_streaming`` sees :func:`loading` and does nothing, so that
the child does not start a child of its own, and so on without end.

Exit status: 0 when the function returned, 1 when it raised (the traceback
goes to stderr), 2 when the frame could not be read or unpickled.
"""
import os
import pickle
import signal
import sys
import threading
import traceback

HEADER = 8

_loading = False


def loading():
    """True while this process is a consumer child loading its function (importing its module)."""
    return _loading


def read_exactly(fd, size):
    """Read ``size`` bytes from ``fd``; fewer only at end of file."""
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b''.join(chunks)


def watch_parent(fd):
    """Block until the parent closes our stdin (or dies), then ask this process to stop."""
    try:
        while os.read(fd, 4096):
            pass  # the parent sends nothing after the frame; read on until end of file
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main():
    global _loading
    fd = sys.stdin.fileno()
    try:
        header = read_exactly(fd, HEADER)
        frame = pickle.loads(read_exactly(fd, int.from_bytes(header, 'big')))
        # the parent's import path, so that a consumer defined in the parent's modules imports here
        sys.path[:] = frame['sys_path']
        import cloudpickle
        _loading = True
        try:
            function, args, kwargs = cloudpickle.loads(frame['payload'])
        finally:
            _loading = False
    except Exception:
        traceback.print_exc()
        sys.stderr.write('minibatch: the consumer child could not load its function\n')
        sys.exit(2)
    threading.Thread(target=watch_parent, args=(fd,), name='minibatch-parent-watch', daemon=True).start()
    try:
        function(*args, **kwargs)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


if __name__ == '__main__':
    main()
