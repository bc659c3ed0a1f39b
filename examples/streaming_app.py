"""StreamingApp: a consumer supervised by a small web app that serves its /status.

    pip install -e ".[apps]"
    python examples/streaming_app.py            # the demo: runs for a few seconds and exits
    python examples/streaming_app.py --serve    # serve until Ctrl-C, status at http://127.0.0.1:5000/status

The demo (the default) serves the app on a free loopback port, starts the
consumer in a child process, appends 10 messages, fetches /status over HTTP
until it reports the 10 processed (consumers report their counts every 5 s,
so this takes up to about 5 s), prints the JSON, stops the consumer (SIGTERM:
it finishes its window first) and exits.

With --serve the app runs until Ctrl-C; append from another shell with

    python -c "import minibatch as mb; mb.stream('app-demo').append({'n': 1})"

The store is the embedded one unless MINIBATCH_URL (or --url) names another,
e.g. mongodb://localhost:27017/minibatch.
"""
import argparse
import json
import logging
import os
import threading
import time
import urllib.request

from werkzeug.serving import make_server

import minibatch as mb
from minibatch import streaming
from minibatch.contrib.apps import StreamingApp

STREAM = 'app-demo'
MESSAGES = 10


def consumer(url):
    """Runs in a child process started by the app; ``url`` is the app's store."""
    @streaming(STREAM, size=2, url=url, executor='inline')
    def show(window):
        numbers = [message['n'] for message in window.data]
        print(f'consumer (pid {os.getpid()}): window {numbers}', flush=True)


def fetch_status(base):
    with urllib.request.urlopen(base + '/status', timeout=10) as response:
        return json.load(response)


def demo(url):
    mb.stream(STREAM, url=url).delete()  # start afresh: no messages, no reports of earlier runs
    stream = mb.stream(STREAM, url=url)
    app = StreamingApp(url=url)
    # the app is a WSGI application: any WSGI server runs it; here werkzeug's, on a free port, in a thread
    server = make_server('127.0.0.1', 0, app, threaded=True)
    logging.getLogger('werkzeug').setLevel(logging.WARNING)  # no line per request in the demo's output
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{server.server_port}'
    print(f'app serving {base}/status, store {app.store.describe()}', flush=True)
    try:
        child = app.start_streaming(consumer, streams=[STREAM])
        print(f'consumer started in child process {child.pid}', flush=True)
        stream.append([{'n': n} for n in range(MESSAGES)])
        print(f'appended {MESSAGES} messages to {STREAM!r}', flush=True)

        deadline = time.monotonic() + 30
        while True:
            status = fetch_status(base)
            if status['streams'][STREAM]['processed'] == MESSAGES:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f'/status did not report {MESSAGES} processed within 30 s:\n'
                                 + json.dumps(status, indent=2))
            time.sleep(0.25)
        print(f'GET {base}/status', flush=True)
        print(json.dumps(status, indent=2), flush=True)
    finally:
        begun = time.monotonic()
        app.stop()  # SIGTERM to the consumer, SIGKILL only if it has not stopped after the grace period
        server.shutdown()
    print(f'stopped in {time.monotonic() - begun:.1f} s; consumer exit code {child.exitcode}', flush=True)


def serve(url, host, port):
    app = StreamingApp(url=url)
    app.start_streaming(consumer, streams=[STREAM])
    print(f'status at http://{host}:{port}/status; Ctrl-C stops the app and its consumer', flush=True)
    app.run(host=host, port=port)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--serve', action='store_true', help='serve until Ctrl-C instead of the demo')
    parser.add_argument('--url', default=None, help='store URL (default: MINIBATCH_URL, else the embedded store)')
    parser.add_argument('--host', default='127.0.0.1', help='--serve: address to listen on')
    parser.add_argument('--port', type=int, default=5000, help='--serve: port to listen on')
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.host, args.port)
    else:
        demo(args.url)


if __name__ == '__main__':
    main()
