"""Serving a WSGI app (the dashboard) from a background thread, for scripts, tests and notebooks.

``minibatch dashboard`` serves in the foreground; :class:`BackgroundServer`
runs the same werkzeug threaded server in a daemon thread and stops it on
:meth:`~BackgroundServer.stop` (or at the end of a ``with`` block).
"""
from __future__ import annotations

import threading
from typing import Any


class BackgroundServer:
    """``app`` served on ``host:port`` (port 0: a free one) from a daemon thread, from construction on.

    :raises OSError: the address cannot be bound (port taken, no such address)
    """

    def __init__(self, app: Any, host: str = '127.0.0.1', port: int = 0) -> None:
        from werkzeug.serving import make_server
        self.app = app
        self.server = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = self.server.server_port
        # a short poll interval: stop() returns within 50 ms
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       name='minibatch-dashboard-server', daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The root URL, ending with ``/``."""
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/'

    def stop(self) -> None:
        """Stop serving, close the socket and stop the app's dashboard sampler (if it has one)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        dashboard = getattr(self.app, 'dashboard', None)
        if dashboard is not None:
            dashboard.stop()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
