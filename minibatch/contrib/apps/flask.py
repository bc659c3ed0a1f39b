"""``StreamingApp``: a Flask app that runs streaming consumers and serves their ``/status``.

::

    def consumer(url):
        @streaming('test-stream', url=url)
        def processing(window):
            ...

    if __name__ == '__main__':
        app = StreamingApp()
        app.start_streaming(consumer)
        app.run()        # status at http://127.0.0.1:5000/status

Each consumer runs in a supervised child process (see
:mod:`minibatch.contrib.apps.supervisor`: spawned, restarted when it dies,
stopped with SIGTERM). ``GET /status`` answers JSON with the figures of the
streams (from :func:`minibatch.status.stream_stats`, the same figures as
``stream.stats()``, never recomputed here) and the state of the app's
consumer processes. See docs/app.rst for the JSON and deployment notes.
"""
import datetime
import logging
import socket
import threading
import time

from minibatch.contrib.apps import child as consumer_child
from minibatch.contrib.base import require
from minibatch.contrib.apps.supervisor import DEAD, ConsumerProcess, Supervisor
from minibatch.status import stream_stats
from minibatch.store import get_store, resolve_url

logger = logging.getLogger('minibatch.contrib.apps')


def plain(value):
    """``value`` with datetimes as ISO 8601 strings in UTC, recursively, ready for JSON."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)  # the stores keep naive UTC
        return value.isoformat()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


class StreamingApp:
    """A web app that runs consumer functions in child processes and reports on them.

    :param server: an existing Flask app to attach to; ``/status`` is added to
        it as a blueprint. Default: a new Flask app named ``name``.
    :param uri: the store URL handed to every consumer and read by ``/status``.
        Default: :func:`minibatch.resolve_url` (``MINIBATCH_URL``, the MongoDB
        variables, else the embedded store), resolved once, here.
    :param name: the Flask app's (and blueprint's) name
    :param streams: stream names ``/status`` always shows, besides those the
        app's consumers report to
    :param url_prefix: where the blueprint is mounted (``/status`` below it)
    :param stop_grace: seconds a consumer gets to stop after SIGTERM before SIGKILL
    :param executable: the Python interpreter for the consumer processes (default
        ``sys.executable``; set it where that is not Python, e.g. under uWSGI)

    The object is a WSGI application itself (``gunicorn module:app``), and
    ``wsgi`` / ``server`` is the Flask app. Use ``app.route`` to add pages.

    :raises minibatch.errors.MissingDependencyError: Flask is not installed (``minibatch[apps]``)
    """
    #: seconds between two searches for the streams the app's consumers report to
    DISCOVERY_INTERVAL = 2.0

    def __init__(self, server=None, uri=None, name='minibatch', streams=None, url_prefix=None, stop_grace=35.0,
                 executable=None):
        flask = require('flask', 'apps')
        self.name = name
        self.url = self.resolve_uri(uri)
        self.server = server if server is not None else flask.Flask(name)
        self.supervisor = Supervisor(stop_grace=stop_grace)
        self.executable = executable
        self._declared = list(streams or [])
        self._discovered = []  # streams the app's consumer processes reported to, in discovery order
        self._next_discovery = 0.0
        self._discovery_lock = threading.Lock()  # /status requests arrive on several threads
        blueprint = flask.Blueprint(name, __name__)
        blueprint.add_url_rule('/status', 'status', self._status_view, methods=['GET'])
        self.server.register_blueprint(blueprint, url_prefix=url_prefix)

    def resolve_uri(self, uri):
        """The store URL to use when ``uri`` is given or not (subclasses choose other defaults)."""
        return resolve_url(uri)

    # -- WSGI ---------------------------------------------------------------
    @property
    def wsgi(self):
        """The WSGI application (the Flask app), for gunicorn, uWSGI or werkzeug's ``make_server``."""
        return self.server

    def __call__(self, environ, start_response):
        return self.server(environ, start_response)

    def route(self, rule, **options):
        """``@app.route('/page')``: add a view to the Flask app, as with Flask itself."""
        return self.server.route(rule, **options)

    @property
    def store(self):
        """The store the consumers use (shared per process, see :func:`minibatch.get_store`)."""
        return get_store(self.url)

    # -- consumers ------------------------------------------------------------
    def start_streaming(self, consumer, *args, restart=True, max_restarts=5, restart_backoff=1.0, name=None,
                        streams=None, **kwargs):
        """Run ``consumer(url, *args, **kwargs)`` in a child process, now, and keep it running.

        ``url`` is the app's store URL. The function should block while it
        consumes, as ``@streaming(...)`` does by default; it runs in the main
        thread of a spawned interpreter (see
        :mod:`minibatch.contrib.apps.supervisor`), so it and its arguments
        must be picklable by cloudpickle: a module-level function, or one
        defined in the main script or a closure that needs no open
        connections, locks or the app itself.

        When the child exits unasked (killed, crashed, or the function
        returned) it is started again after ``restart_backoff`` seconds,
        doubling per restart in a row, until ``max_restarts`` restarts in a
        row (None: no limit); ``restart=False`` leaves it dead. ``/status``
        shows either. ``streams`` names streams to show in ``/status`` at once;
        the streams the child reports to are found by themselves.

        Returns the :class:`~minibatch.contrib.apps.supervisor.ConsumerProcess`.
        In a consumer child that is importing the module of its function
        (a module that starts its consumers at import time), it does nothing
        and returns None: that import is for the function, not for the app.

        :raises minibatch.errors.ConfigurationError: not picklable, or a bad restart setting
        :raises OSError: the child interpreter could not be started
        """
        if consumer_child.loading():
            logger.debug('minibatch: start_streaming(%r) skipped in a consumer child loading its function', consumer)
            return None
        base = name or getattr(consumer, '__name__', None) or 'consumer'
        taken = {process.name for process in self.supervisor.consumers}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f'{base}-{n}'
        process = ConsumerProcess(name, consumer, args=(self.url, *args), kwargs=kwargs, restart=restart,
                                  max_restarts=max_restarts, restart_backoff=restart_backoff,
                                  executable=self.executable)
        for stream in streams or ():
            if stream not in self._declared:
                self._declared.append(stream)
        self.supervisor.add(process)
        self._next_discovery = 0.0
        return process

    @property
    def consumers(self):
        """The app's :class:`~minibatch.contrib.apps.supervisor.ConsumerProcess` objects."""
        return list(self.supervisor.consumers)

    def stop(self, timeout=None):
        """Stop every consumer: SIGTERM, then SIGKILL after ``timeout`` (default ``stop_grace``) seconds.

        Blocks until all have exited. Also runs at interpreter exit and when :meth:`run` returns.
        """
        self.supervisor.stop(timeout)

    def run(self, host='127.0.0.1', port=5000, **kwargs):
        """Serve with Flask's development server until Ctrl-C, then stop the consumers.

        Keyword arguments go to ``Flask.run``. The reloader is off unless
        ``use_reloader=True`` is passed: it would run the script, and so start
        the consumers, a second time.
        """
        kwargs.setdefault('use_reloader', False)
        try:
            self.server.run(host=host, port=port, **kwargs)
        finally:
            self.stop()

    # -- status ---------------------------------------------------------------
    def stream_names(self):
        """The streams ``/status`` shows by default.

        Those given as ``streams=`` and those the app's consumer processes
        reported to (found through the consumer records of the store by host
        and pid); an app without consumers or streams shows every stream of
        the store.
        """
        self._discover()
        names = list(dict.fromkeys(self._declared + self._discovered))
        if not names and not self.supervisor.consumers:
            names = [info.name for info in self.store.list_streams()]
        return names

    def _discover(self):
        with self._discovery_lock:
            now = time.monotonic()
            if now < self._next_discovery or not self.supervisor.consumers:
                return
            self._next_discovery = now + self.DISCOVERY_INTERVAL
            pids, host = self.supervisor.pids(), socket.gethostname()
            for info in self.store.list_streams():
                if info.name in self._discovered:
                    continue
                if any(record.get('pid') in pids and record.get('host') == host
                       for record in self.store.consumers(info.name)):
                    self._discovered.append(info.name)

    def status(self, streams=None, all_streams=False):
        """The ``/status`` document as a dict (datetimes as ISO strings).

        ``streams``: the names to report (default :meth:`stream_names`);
        ``all_streams``: every stream of the store. Keys: ``app``, ``store``
        (credential-free), ``time``, ``streams`` (name -> the figures of
        :func:`minibatch.status.stream_stats`), ``consumers`` (the app's
        processes, each with the ``streams`` its pids reported to) and ``ok``
        (no consumer given up as dead). Read-only; raises what the store raises.
        """
        consumers = self.supervisor.info()
        store = self.store
        if all_streams:
            names = [info.name for info in store.list_streams()]
        else:
            names = list(streams) if streams else self.stream_names()
        figures = {name: stream_stats(store, name) for name in names}
        for process in consumers:
            pids = set(process['pids'])
            process['streams'] = [name for name, stats in figures.items()
                                  if any(record.get('pid') in pids for record in stats['consumers'])]
        return plain({
            'app': self.name,
            'store': store.describe(),
            'time': datetime.datetime.now(datetime.timezone.utc),
            'ok': not any(process['state'] == DEAD for process in consumers),
            'streams': figures,
            'consumers': consumers,
        })

    def _status_view(self):
        from flask import jsonify, request
        names = request.args.getlist('stream')
        all_streams = request.args.get('all', '').lower() in ('1', 'true', 'yes')
        try:
            return jsonify(self.status(streams=names, all_streams=all_streams))
        except Exception as exc:
            if not isinstance(exc, (ConnectionError, *getattr(self.store, 'transient_errors', ()))):
                raise
            # the store is down: say so, and still show the consumer processes
            body = plain({'app': self.name, 'ok': False, 'error': f'store unavailable: {exc}',
                          'consumers': self.supervisor.info()})
            return jsonify(body), 503
