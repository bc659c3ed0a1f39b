"""What every ready-made source shares: a stoppable run loop, one-line failure logs, JSON decoding.

A source is any object with ``stream(stream)`` (and, to be stoppable,
``cancel()``); :meth:`minibatch.Stream.attach` runs it in a thread. The
integrations in :mod:`minibatch.contrib` subclass :class:`Source` so that they
all behave the same way when the outside system misbehaves:

- a failure (broker gone, connection refused) logs one line, waits with an
  increasing backoff and connects again, until ``cancel()``;
- a payload that is not a JSON object is stored in the stream's dead letters
  (:meth:`minibatch.Stream.reject`) with the reason, never dropped.
"""
import base64
import importlib
import json
import logging
import threading

from minibatch.errors import MissingDependencyError

logger = logging.getLogger('minibatch.contrib')


def require(module, extra):
    """Import and return ``module``, or raise MissingDependencyError naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'minibatch[{extra}]'") from exc


class Source:
    """Base class of the ready-made sources.

    Subclasses implement :meth:`run`, which connects, appends messages until
    :attr:`cancelled` is set, and returns (or raises on a failure). ``stream()``
    calls ``run()`` again after a failure, waiting ``retry_delay`` seconds,
    doubled on each failure in a row up to ``max_retry_delay``.
    """
    retry_delay = 0.5
    max_retry_delay = 30.0

    def __init__(self):
        self._cancelled = threading.Event()
        self.failures = 0  # failures in a row; 0 once run() has made progress again
        self.last_error = None
        #: set by subclasses while connected and receiving; for health checks and tests
        self.ready = threading.Event()
        #: set when ``stream()`` has returned: nothing more is appended
        self.stopped = threading.Event()

    # -- the protocol Stream.attach() uses -----------------------------------
    def stream(self, stream):
        """Feed ``stream`` until :meth:`cancel`; survives failures of the outside system."""
        self.stopped.clear()
        try:
            self._feed(stream)
        finally:
            self.ready.clear()
            self.stopped.set()

    def _feed(self, stream):
        delay = self.retry_delay
        while not self._cancelled.is_set():
            try:
                self.run(stream)
                delay = self.retry_delay
                if not self._cancelled.is_set():
                    # run() returned without being cancelled: the upstream ended a session
                    self._cancelled.wait(self.retry_delay)
            except Exception as exc:  # any failure: report once, back off, reconnect
                if self.failures == 0:  # progress() since the last failure: start with a short wait again
                    delay = self.retry_delay
                self.failures += 1
                text = str(exc)  # some drivers' messages already start with the class name
                self.last_error = text if text.startswith(type(exc).__name__) else f'{type(exc).__name__}: {text}'
                if self._cancelled.is_set():
                    break
                logger.warning('%s for stream %r failed (%s); retrying in %.1fs',
                               self, stream.name, self.last_error, delay)
                self._cancelled.wait(delay)
                delay = min(delay * 2, self.max_retry_delay)
        self.close()

    def cancel(self):
        """Ask the source to stop; ``stream()`` returns soon after. Safe to call more than once."""
        self._cancelled.set()

    stop = cancel

    @property
    def cancelled(self):
        """True once :meth:`cancel` was called."""
        return self._cancelled.is_set()

    # -- for subclasses ----------------------------------------------------
    def run(self, stream):
        """Connect and append to ``stream`` until :attr:`cancelled`; raise on failure."""
        raise NotImplementedError

    def close(self):
        """Release connections; called once when ``stream()`` ends. Default: nothing."""

    def progress(self):
        """Call after a successful step: the next failure starts over with a short backoff."""
        self.failures = 0

    def decode(self, payload, stream, origin):
        """Return the message dict in ``payload`` (bytes or str of a JSON object), or None.

        None means the payload was not a JSON object: it was stored in the
        stream's dead letters as ``{'payload': text, 'origin': origin}`` with the
        reason, and a warning was logged. Undecodable bytes are kept as base64
        (``{'payload_base64': ...}``) so nothing is lost.
        """
        binary = False
        try:
            text = payload.decode('utf-8') if isinstance(payload, (bytes, bytearray)) else payload
            value = json.loads(text)
            if isinstance(value, dict):
                return value
            reason = f'payload is JSON but not an object (got {type(value).__name__})'
        except UnicodeDecodeError as exc:
            reason, binary = f'payload is not UTF-8 text: {exc}', True
        except (TypeError, ValueError) as exc:
            reason = f'payload is not JSON: {exc}'
        if binary:
            record = {'payload_base64': base64.b64encode(bytes(payload)).decode('ascii'), 'origin': origin}
        else:
            record = {'payload': payload if isinstance(payload, str) else repr(payload), 'origin': origin}
            if isinstance(payload, (bytes, bytearray)):
                record['payload'] = payload.decode('utf-8')
        logger.warning('%s: rejected a payload from %s into the dead letters of %r: %s',
                       self, origin, stream.name, reason)
        stream.reject(record, reason)
        return None

    def __repr__(self):
        return f'{type(self).__name__}()'
