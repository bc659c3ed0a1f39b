"""``StreamingApp``: a Flask app that runs streaming consumers and serves their ``/status`` and dashboard.

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
consumer processes. The live dashboard (:mod:`minibatch.dashboard`) is
mounted at ``/dashboard/`` and Prometheus' ``/metrics`` beside ``/status``.
See docs/app.rst for the JSON and deployment notes.
"""
import datetime
import logging
import socket
import threading
import time

from minibatch.contrib.apps import child as consumer_child
from minibatch.contrib.base import require
from minibatch.contrib.apps.supervisor import DEAD, ConsumerProcess, Supervisor
from minibatch.dashboard import Dashboard
from minibatch.errors import ConfigurationError
from minibatch.status import stream_stats
from minibatch.store import get_store, resolve_url
from minibatch.store.redaction import redact_text

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

    The parameters before ``*`` are those of minibatch 0.6's
    ``StreamingApp``, in its order, so that a 0.6 program runs unchanged.

    :param consumer: the consumer :meth:`start_streaming` runs when it is given none
    :param name: the app's name, shown in ``/status``; also the name of the
        Flask app it makes and of its ``/status`` blueprint. Default ``'minibatch'``
    :param import_name: the import name of the Flask app it makes (Flask's
        ``import_name``, which finds templates and static files); default ``name``
    :param uri: as in 0.6, the URL prefix of the app: ``/status`` and the pages
        added with :meth:`route` are served below it. A value with ``://`` is
        a store URL instead, as ``url`` (what this parameter meant in
        minibatch before 0.6 compatibility; kept as a convenience)
    :param server: an existing Flask app to attach to; ``/status`` is added to
        it as a blueprint. None or True: a new Flask app
    :param url: the store URL handed to every consumer and read by ``/status``.
        Default: :func:`minibatch.resolve_url` (``MINIBATCH_URL``, the MongoDB
        variables, else the embedded store), resolved once, here.
    :param streams: stream names ``/status`` always shows, besides those the
        app's consumers report to
    :param url_prefix: where the ``/status`` blueprint is mounted (pages added
        with :meth:`route` stay where their rule says; see ``uri`` for 0.6's prefix)
    :param stop_grace: seconds a consumer gets to stop after SIGTERM before SIGKILL
    :param executable: the Python interpreter for the consumer processes (default
        ``sys.executable``; set it where that is not Python, e.g. under uWSGI)
    :param dashboard: mount the live dashboard at ``/dashboard/`` and ``/metrics``
        beside ``/status`` (default True; False: only ``/status``)
    :param allow_write: let the dashboard requeue and purge dead letters (default: read-only)
    :param token: a secret the dashboard's requeue and purge requests must carry (allows them)
    :param kwargs: given to the ``/status`` ``flask.Blueprint`` (``template_folder``,
        ``static_folder``, ...), as 0.6 gave them to its blueprint

    The object is a WSGI application itself (``gunicorn module:app``), and
    ``wsgi`` / ``server`` is the Flask app. Use ``app.route`` to add pages.
    ``server.register_blueprint(app)``, which 0.6 programs call, is accepted:
    on ``app.server`` it does nothing (``/status`` is already there).

    :raises minibatch.errors.MissingDependencyError: Flask is not installed (``minibatch[apps]``)
    :raises minibatch.errors.ConfigurationError: two different store URLs or prefixes
    """
    #: seconds between two searches for the streams the app's consumers report to
    DISCOVERY_INTERVAL = 2.0

    def __init__(self, consumer=None, name=None, import_name=None, uri=None, server=None, *, url=None,
                 streams=None, url_prefix=None, stop_grace=35.0, executable=None, dashboard=True,
                 allow_write=False, token=None, **kwargs):
        flask = require('flask', 'apps')
        if isinstance(consumer, flask.Flask) and server is None:
            # StreamingApp(flask_app): the first parameter used to be server=
            consumer, server = None, consumer
        prefix = None
        if uri and '://' in uri:
            if url and url != uri:
                raise ConfigurationError(f'two store URLs: uri={uri!r} and url={url!r}; pass one')
            url = uri
        elif uri:
            prefix = uri
            if url_prefix and url_prefix != prefix:
                raise ConfigurationError(f'two URL prefixes: uri={uri!r} and url_prefix={url_prefix!r}; pass one')
        self.name = name or 'minibatch'
        self.consumer = consumer
        #: where ``/status`` is served (``url_prefix`` or 0.6's ``uri``)
        self.url_prefix = url_prefix or prefix
        #: the prefix of the pages added with :meth:`route` (0.6's ``uri``)
        self.route_prefix = prefix
        self._url = self.initial_url(url)
        if server is None or server is True:
            server = flask.Flask(import_name or self.name)
        self.server = server
        self.supervisor = Supervisor(stop_grace=stop_grace)
        self.executable = executable
        self._declared = list(streams or [])
        self._discovered = []  # streams the app's consumer processes reported to, in discovery order
        self._next_discovery = 0.0
        self._discovery_lock = threading.Lock()  # /status requests arrive on several threads
        self.blueprint = flask.Blueprint(self.name, __name__, **kwargs)
        self.blueprint.add_url_rule('/status', 'status', self._status_view, methods=['GET'])
        #: the :class:`~minibatch.dashboard.Dashboard` of the app's store (None with ``dashboard=False``)
        self.dashboard = None
        if dashboard:
            self.dashboard = Dashboard(store=lambda: self.store, allow_write=allow_write, token=token)
            self.blueprint.add_url_rule('/metrics', 'metrics', self.dashboard.metrics_view, methods=['GET'])
        self.server.register_blueprint(self.blueprint, url_prefix=self.url_prefix)
        if self.dashboard is not None:
            self.server.register_blueprint(self.dashboard.blueprint(f'{self.name}_dashboard', metrics=False),
                                           url_prefix=(self.url_prefix or '').rstrip('/') + '/dashboard')

    # -- the store URL ----------------------------------------------------------
    def initial_url(self, url):
        """The store URL when the app is created from ``url`` (given or None); None defers to :meth:`default_url`."""
        return resolve_url(url)

    def default_url(self):
        """The store URL when none was given, looked up the first time it is needed."""
        return resolve_url(None)

    @property
    def url(self):
        """The store URL the consumers are given and ``/status`` reads."""
        if self._url is None:
            self._url = self.default_url()
        return self._url

    def consumer_url(self, on=None):
        """The URL a consumer started with ``start_streaming(on=on)`` is given (``on`` is omega|ml's)."""
        if on is not None:
            raise ConfigurationError('on= names an omega|ml instance; use minibatch.contrib.apps.omegaml.StreamingApp')
        return self.url

    # -- WSGI ---------------------------------------------------------------
    @property
    def wsgi(self):
        """The WSGI application (the Flask app), for gunicorn, uWSGI or werkzeug's ``make_server``."""
        return self.server

    def __call__(self, environ, start_response):
        return self.server(environ, start_response)

    def page_rule(self, rule):
        """``rule`` below the app's 0.6 ``uri`` prefix, joined as a Flask blueprint joins it."""
        if not self.route_prefix:
            return rule
        return '/'.join((self.route_prefix.rstrip('/'), rule.lstrip('/'))) if rule else self.route_prefix

    def route(self, rule, **options):
        """``@app.route('/page')``: add a view to the Flask app, as with Flask itself.

        With 0.6's ``uri='/prefix'`` the page is served at ``/prefix/page``, as
        0.6's blueprint served it; the endpoint is the function's name.
        """
        return self.server.route(self.page_rule(rule), **options)

    def add_url_rule(self, rule, endpoint=None, view_func=None, **options):
        """Flask's ``add_url_rule`` on the Flask app, below the 0.6 ``uri`` prefix if there is one."""
        return self.server.add_url_rule(self.page_rule(rule), endpoint, view_func, **options)

    def register(self, server, options):
        """What ``server.register_blueprint(app)`` calls (0.6 programs do, with ``app.server``).

        On the app's own Flask app without options it does nothing: ``/status``
        is registered already. Elsewhere, or with options (``url_prefix=``,
        ``name=``), it registers the ``/status`` blueprint there too.
        """
        if server is self.server and not options:
            return
        self.blueprint.register(server, options)

    @property
    def store(self):
        """The store the consumers use (shared per process, see :func:`minibatch.get_store`)."""
        return get_store(self.url)

    # -- consumers ------------------------------------------------------------
    def start_streaming(self, consumer=None, *args, on=None, debug=False, restart=True, max_restarts=5,
                        restart_backoff=1.0, name=None, streams=None, **kwargs):
        """Run ``consumer(url=url, **kwargs)`` in a child process, now, and keep it running.

        ``url`` is the app's store URL, passed by keyword as 0.6 did (with
        extra positional ``args``: ``consumer(url, *args, **kwargs)``). ``consumer`` defaults to the app's ``consumer=``.
        The function should block while it
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

        ``debug=True`` (0.6) calls the function here, in this process and
        thread, and returns what it returns: no child, no restarts. ``on``
        is the omega|ml instance of the omega|ml flavour.

        Returns the :class:`~minibatch.contrib.apps.supervisor.ConsumerProcess`.
        In a consumer child that is importing the module of its function
        (a module that starts its consumers at import time), it does nothing
        and returns None: that import is for the function, not for the app.

        Also called ``start`` and ``_start_consumer``, 0.6's names.

        :raises minibatch.errors.ConfigurationError: no consumer, not picklable, or a bad restart setting
        :raises OSError: the child interpreter could not be started
        """
        if consumer_child.loading():
            logger.debug('minibatch: start_streaming(%r) skipped in a consumer child loading its function', consumer)
            return None
        consumer = consumer if consumer is not None else self.consumer
        if consumer is None:
            raise ConfigurationError('no consumer: pass start_streaming(consumer) or StreamingApp(consumer=...)')
        url = self.consumer_url(on)
        # as in 0.6, the URL is passed by keyword, so consumer(url=None) and consumer(**kwargs) both get it;
        # extra positional arguments follow it positionally
        args, kwargs = ((url, *args), kwargs) if args else ((), {'url': url, **kwargs})
        if debug:
            return consumer(*args, **kwargs)
        base = name or getattr(consumer, '__name__', None) or 'consumer'
        taken = {process.name for process in self.supervisor.consumers}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f'{base}-{n}'
        process = ConsumerProcess(name, consumer, args=args, kwargs=kwargs, restart=restart,
                                  max_restarts=max_restarts, restart_backoff=restart_backoff,
                                  executable=self.executable)
        for stream in streams or ():
            if stream not in self._declared:
                self._declared.append(stream)
        self.supervisor.add(process)
        self._next_discovery = 0.0
        return process

    def start(self, *args, **kwargs):
        """0.6's name of :meth:`start_streaming`."""
        return self.start_streaming(*args, **kwargs)

    _start_consumer = start

    @property
    def consumers(self):
        """The app's :class:`~minibatch.contrib.apps.supervisor.ConsumerProcess` objects."""
        return list(self.supervisor.consumers)

    def stop(self, timeout=None):
        """Stop every consumer: SIGTERM, then SIGKILL after ``timeout`` (default ``stop_grace``) seconds.

        Blocks until all have exited. Also runs at interpreter exit and when
        :meth:`run` returns. Also called ``stop_streaming`` and
        ``_stop_consumer``, 0.6's names. The dashboard's sampler stops too.
        """
        self.supervisor.stop(timeout)
        if self.dashboard is not None:
            self.dashboard.stop()

    def stop_streaming(self, timeout=None):
        """0.6's name of :meth:`stop`."""
        self.stop(timeout)

    _stop_consumer = stop_streaming

    def run(self, host='127.0.0.1', port=5000, debug=None, **kwargs):
        """Serve with Flask's development server until Ctrl-C, then stop the consumers.

        The arguments are those of ``Flask.run``. The reloader is off unless
        ``use_reloader=True`` is passed: it would run the script, and so start
        the consumers, a second time. Also called ``run_server``, 0.6's name.
        """
        kwargs.setdefault('use_reloader', False)
        try:
            self.server.run(host=host, port=port, debug=debug, **kwargs)
        finally:
            self.stop()

    def run_server(self, *args, **kwargs):
        """0.6's name of :meth:`run`."""
        return self.run(*args, **kwargs)

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
            body = plain({'app': self.name, 'ok': False, 'error': f'store unavailable: {redact_text(exc, self.url)}',
                          'consumers': self.supervisor.info()})
            return jsonify(body), 503
