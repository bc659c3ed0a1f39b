"""The dashboard's web side: its pages, JSON API, dead-letter actions and ``/metrics``, as a Flask blueprint.

Routes, relative to where the blueprint is mounted:

==========================================  =====  ===============================================
``/``                                       GET    the overview page
``/streams/<name>``                         GET    a stream's page
``/api/overview``                           GET    every stream's figures and chart history (JSON)
``/api/streams/<name>``                     GET    one stream: figures, groups, consumers, windows, dead letters
``/api/streams/<name>/dead-letters/requeue`` POST   requeue dead letters: ``{"ids": [...]}``, or no body for all
``/api/streams/<name>/dead-letters/purge``  POST   delete dead letters, the same way
``/metrics``                                GET    Prometheus text format (:mod:`minibatch.dashboard.metrics`)
``/static/...``                             GET    the page's own CSS and JavaScript (no CDN)
==========================================  =====  ===============================================

Safe by default: the actions are refused with 403 and a JSON ``error``
unless the dashboard allows writes (``allow_write=True``) or has a
``token``, which a request then must carry (``Authorization: Bearer
<token>`` or ``X-Minibatch-Token``); a request from a page of another
origin is refused too. Nothing served shows a store password: the store is
named by its ``describe()`` and errors pass through
:func:`~minibatch.store.redaction.redact_text`.
"""
from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from minibatch.dashboard import figures, pages
from minibatch.dashboard.history import History
from minibatch.dashboard.metrics import CONTENT_TYPE, render
from minibatch.errors import require
from minibatch.store import get_store
from minibatch.store.base import Store, utcnow
from minibatch.store.redaction import redact_text

logger = logging.getLogger('minibatch.dashboard')

READ_ONLY = ('write actions are off: this dashboard is read-only. Start it with --allow-write '
             '(minibatch dashboard --allow-write, or Dashboard(allow_write=True)) to requeue or purge')


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, bracketed or not)."""
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return figures.iso(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)  # ObjectIds and other store types inside message data


class Dashboard:
    """The dashboard of one store: pages, API, actions and metrics.

    :param url: the store URL (None: :func:`minibatch.store.resolve_url`'s default)
    :param store: a function returning the store, instead of ``url`` (resolved at each request)
    :param allow_write: allow requeue and purge (POST only; off by default)
    :param token: a secret the actions must carry; allows them even without ``allow_write``
    :param refresh: seconds between two updates of an open page
    :param history: the sampling of the charts (default :class:`History` ``()``: 30 s over an hour)
    :param windows: how many recent windows the stream page lists
    :param letters: how many dead letters the stream page lists (oldest first)
    :param sample: take history samples in a background thread, started by the first request
        (and by :meth:`start_sampler`); otherwise only while the overview is open

    :raises minibatch.errors.ConfigurationError: a bad refresh, count or token
    """
    #: seconds the recent windows of a stream are kept before they are read again (they cost a full read)
    WINDOWS_EVERY = 5.0

    def __init__(self, url: str | None = None, *, store: Callable[[], Store] | None = None, allow_write: bool = False,
                 token: str | None = None, refresh: float = 2.0, history: History | None = None,
                 windows: int = 10, letters: int = 100, sample: bool = True) -> None:
        from minibatch.errors import ConfigurationError
        if not isinstance(refresh, (int, float)) or not 0 < refresh <= 3600:
            raise ConfigurationError(f'refresh must be a number of seconds in (0, 3600], got {refresh!r}')
        for label, value in (('windows', windows), ('letters', letters)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f'{label} must be a count (an int >= 0), got {value!r}')
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigurationError('the dashboard token must be a string of at least 8 characters')
        self._get_store = store or (lambda: get_store(url))
        self.allow_write = bool(allow_write)
        self.token = token
        self.refresh = float(refresh)
        self.history = history or History()
        self.windows = windows
        self.letters = letters
        self.sample = sample
        self._windows_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._sampler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        """The store the dashboard shows."""
        return self._get_store()

    @property
    def mode(self) -> str:
        """``read-only``, ``writable`` or ``token`` (writes need the token)."""
        return 'token' if self.token else 'writable' if self.allow_write else 'read-only'

    # -- history sampling -------------------------------------------------
    def start_sampler(self) -> None:
        """Sample every stream's figures each history interval in a daemon thread (once; idempotent)."""
        with self._lock:
            if self._sampler is not None or self._stopping.is_set():
                return
            self._sampler = threading.Thread(target=self._sample_loop, name='minibatch-dashboard-sampler', daemon=True)
            self._sampler.start()

    def stop(self) -> None:
        """Stop the sampler thread (if running) and wait for it."""
        self._stopping.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)

    def _sample_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                figures.overview(self.store, self.history)
            except Exception as exc:  # a store briefly down: the next round tries again
                logger.warning('minibatch: dashboard sampling failed: %s', self._redact(exc))
            self._stopping.wait(self.history.interval)

    # -- data -------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """The JSON of ``/api/overview``: store, mode, time, refresh and a row per stream."""
        store = self.store
        return {'store': store.describe(), 'mode': self.mode, 'time': figures.iso(utcnow()),
                'refresh': self.refresh, 'span': self.history.span,
                'streams': figures.overview(store, self.history)}

    def stream(self, name: str) -> dict[str, Any] | None:
        """The JSON of ``/api/streams/<name>``, or None when there is no such stream."""
        store = self.store
        info = store.get_stream(name)
        if info is None:
            return None
        detail = figures.stream_detail(store, info, self.history, letters=self.letters)
        detail['windows'] = self._recent_windows(store, name)
        return {'store': store.describe(), 'mode': self.mode, 'time': figures.iso(utcnow()),
                'refresh': self.refresh, 'span': self.history.span, **detail}

    def _recent_windows(self, store: Store, name: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        cached = self._windows_cache.get(name)
        if cached is None or now - cached[0] >= self.WINDOWS_EVERY:
            cached = (now, figures.recent_windows(store, name, self.windows))
            self._windows_cache[name] = cached
        return cached[1]

    def _redact(self, exc: BaseException) -> str:
        store = self._get_store()
        return redact_text(exc, getattr(store, 'url', ''))

    # -- Flask ------------------------------------------------------------
    def blueprint(self, name: str = 'minibatch_dashboard', metrics: bool = True) -> Any:
        """A ``flask.Blueprint`` with the routes of the module docstring (``/metrics`` if ``metrics``).

        :raises minibatch.errors.MissingDependencyError: Flask is not installed (``minibatch[apps]``)
        """
        flask = require('flask', 'apps')
        bp = flask.Blueprint(name, __name__, static_folder='static', static_url_path='/static')
        bp.add_url_rule('/', 'overview', self._overview_page, methods=['GET'])
        bp.add_url_rule('/streams/<path:name>', 'stream', self._stream_page, methods=['GET'])
        bp.add_url_rule('/api/overview', 'api_overview', self._api(self.overview), methods=['GET'])
        bp.add_url_rule('/api/streams/<path:name>', 'api_stream', self._api(self._stream_or_404), methods=['GET'])
        for action in ('requeue', 'purge'):
            bp.add_url_rule(f'/api/streams/<path:name>/dead-letters/{action}', f'api_{action}',
                            self._api(self._action_view(action)), methods=['GET', 'POST', 'PUT', 'DELETE', 'PATCH'])
        if metrics:
            bp.add_url_rule('/metrics', 'metrics', self.metrics_view, methods=['GET'])
        return bp

    def metrics_view(self) -> Any:
        """The ``/metrics`` view: Prometheus text format, read from the store at each scrape."""
        flask = require('flask', 'apps')
        self._started()
        try:
            body = render(self._get_store)
        except Exception as exc:
            if not self._transient(exc):
                raise
            return flask.Response(f'# store unavailable: {self._redact(exc)}\n', status=503, mimetype='text/plain')
        return flask.Response(body, status=200, content_type=CONTENT_TYPE)

    def _started(self) -> None:
        if self.sample:
            self.start_sampler()

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (ConnectionError, *getattr(self.store, 'transient_errors', ())))

    def _urls(self) -> tuple[str, str]:
        from flask import url_for
        return url_for('.overview'), url_for('.static', filename='x')[:-2]

    def _html(self, text: str) -> Any:
        from flask import Response
        self._started()
        response = Response(text, mimetype='text/html')
        response.headers['Content-Security-Policy'] = pages.CSP
        response.headers['X-Content-Type-Options'] = 'nosniff'
        return response

    def _overview_page(self) -> Any:
        return self._html(pages.overview_page(*self._urls(), self.refresh))

    def _stream_page(self, name: str) -> Any:
        return self._html(pages.stream_page(*self._urls(), self.refresh, name))

    def _stream_or_404(self, name: str) -> Any:
        detail = self.stream(name)
        return detail if detail is not None else (404, {'error': f'no stream named {name!r}'})

    def _api(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """``view`` returning a dict (or ``(status, dict)``) as a JSON response; store outages as 503."""
        def json_view(**kwargs: Any) -> Any:
            from flask import Response
            self._started()
            try:
                result = view(**kwargs)
            except Exception as exc:
                if not self._transient(exc):
                    raise
                result = (503, {'error': f'store unavailable: {self._redact(exc)}'})
            status, body = result if isinstance(result, tuple) else (200, result)
            response = Response(json.dumps(body, default=_plain), status=status, mimetype='application/json')
            response.headers['Cache-Control'] = 'no-store'
            response.headers['X-Content-Type-Options'] = 'nosniff'
            return response
        json_view.__name__ = getattr(view, '__name__', 'json_view')
        return json_view

    # -- actions ----------------------------------------------------------
    def _action_view(self, action: str) -> Callable[..., Any]:
        def view(name: str) -> Any:
            from flask import request
            refused = self.refusal(request.method, request.headers, request.host)
            if refused:
                return refused
            ids, problem = self._ids(request.get_data(cache=False))
            if problem:
                return 400, {'error': problem}
            return self.act(action, name, ids)
        view.__name__ = f'{action}_view'
        return view

    def refusal(self, method: str, headers: Any, host: str) -> tuple[int, dict[str, str]] | None:
        """Why a request to an action is refused, as ``(status, {"error": ...})``; None when it may go on.

        Refused: another method than POST (405), writes off (403), a page of
        another origin (403), a request addressed to another host than
        localhost when there is no token (403), a missing or wrong token when
        there is one (403).
        """
        if method != 'POST':
            return 405, {'error': f'{method} is not allowed here: requeue and purge take POST'}
        if not (self.allow_write or self.token):
            return 403, {'error': READ_ONLY}
        origin = headers.get('Origin')
        if origin and origin != 'null' and urlsplit(origin).netloc != host:
            return 403, {'error': f'cross-origin request refused (from {origin})'}
        if origin == 'null':
            return 403, {'error': 'cross-origin request refused (from an opaque origin)'}
        if not self.token and not is_loopback(urlsplit(f'//{host}').hostname or ''):
            # without a token, only requests addressed to this machine: a page of a site whose name
            # resolves to 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused here
            return 403, {'error': f'requeue and purge without a token answer only requests to localhost, '
                                  f'not to {host}: give the dashboard a token (--token)'}
        if self.token:
            auth = headers.get('Authorization', '')
            given = auth[7:] if auth.startswith('Bearer ') else headers.get('X-Minibatch-Token', '')
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return 403, {'error': 'this dashboard needs its token for requeue and purge: send it as '
                                      '"Authorization: Bearer <token>" (the page asks for it)'}
        return None

    @staticmethod
    def _ids(body: bytes) -> tuple[list[Any] | None, str | None]:
        """The ids a request body names (None: all), or a problem with the body."""
        if not body.strip():
            return None, None
        try:
            data = json.loads(body)
        except ValueError as exc:
            return None, f'the body must be JSON, {{"ids": [...]}} or nothing for all: {exc}'
        if not isinstance(data, dict) or set(data) - {'ids'}:
            return None, 'the body must be {"ids": [...]} (or nothing, for all dead letters)'
        ids = data.get('ids')
        if ids is None:
            return None, None
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            return None, '"ids" must be a list of dead-letter ids (numbers or strings, as the stream page lists them)'
        return ids, None

    def act(self, action: str, name: str, ids: list[Any] | None) -> tuple[int, dict[str, Any]]:
        """Requeue or purge the dead letters ``ids`` (None: all) of ``name``: ``(status, body)``.

        Unknown ids change nothing and give 404 with the ``unknown`` ones (as
        ``minibatch dead-letters`` does); so does an unknown stream. No
        permission check here: see :meth:`refusal`.
        """
        store = self.store
        if store.get_stream(name) is None:
            return 404, {'error': f'no stream named {name!r}'}
        selected = None
        if ids is not None:
            selected, unknown = figures.match_dead_ids(store, name, ids)
            if unknown:
                return 404, {'error': f'no dead letter with id {", ".join(map(str, unknown))} in {name!r}; '
                                      'nothing changed', 'unknown': unknown}
        if action == 'requeue':
            count = store.requeue(name, ids=selected)
        else:
            count = store.purge_dead(name, ids=selected)
        logger.info('minibatch: dashboard: %s %d dead letters of %r', action, count, name)
        return 200, {action + 'd': count, 'stream': name}


def create_app(url: str | None = None, **options: Any) -> Any:
    """A Flask app serving a :class:`Dashboard` of the store ``url`` at ``/`` (and ``/metrics``).

    ``options`` are the :class:`Dashboard` keyword arguments. The dashboard
    is the app's ``dashboard`` attribute (``app.dashboard.stop()`` stops its sampler).

    :raises minibatch.errors.MissingDependencyError: Flask is not installed (``minibatch[apps]``)
    """
    flask = require('flask', 'apps')
    dashboard = Dashboard(url, **options)
    app = flask.Flask('minibatch.dashboard')
    app.register_blueprint(dashboard.blueprint())
    app.dashboard = dashboard
    return app
