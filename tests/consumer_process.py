"""A consumer run as its own process by the reliability tests.

    python tests/consumer_process.py URL STREAM OUTDIR OPTIONS_JSON

Runs ``@streaming(STREAM, url=URL, **options)``. The function logs one JSON
line per window to OUTDIR/<pid>.jsonl: ``{"event": "start", "ids": [...]}``
when it begins and ``{"event": "done", ...}`` when it returns, so a test can
tell which messages were delivered, by whom, and which window was cut short.
Extra options understood here (not passed to @streaming):

* ``slow``: seconds the function sleeps before returning;
* ``poison``: the function raises when a message has ``poison: true``;
* ``crash``: the process running the function kills itself (SIGKILL) when a
  message has ``crash: true`` (a worker dying of OOM or a segfault).
"""
import json
import os
import signal
import sys
import time


def log_event(outdir, event, ids):
    # opened per call so the function can run in any process (inline or a pool worker)
    with open(os.path.join(outdir, f'{os.getpid()}.jsonl'), 'a') as log:
        log.write(json.dumps({'event': event, 'ids': ids, 'pid': os.getpid(), 't': time.time()}) + '\n')
        log.flush()
        os.fsync(log.fileno())


def main(argv):
    url, stream, outdir, options = argv[1], argv[2], argv[3], json.loads(argv[4])
    slow = options.pop('slow', 0)
    poison = options.pop('poison', False)
    crash = options.pop('crash', False)

    def process(window):
        ids = [message['i'] for message in window.data]
        log_event(outdir, 'start', ids)
        if poison and any(message.get('poison') for message in window.data):
            raise ValueError(f'poison message in window {ids}')
        if crash and any(message.get('crash') for message in window.data):
            os.kill(os.getpid(), signal.SIGKILL)
        if slow:
            time.sleep(slow)
        log_event(outdir, 'done', ids)

    import minibatch as mb
    with open(os.path.join(outdir, f'ready-{os.getpid()}'), 'w'):
        pass
    mb.streaming(stream, url=url, **options)(process)


if __name__ == '__main__':
    main(sys.argv)
