"""Names and attributes of minibatch 0.6 that programs written for it still use.

Kept apart from the engine so that the consumer loop reads as what it is;
docs/compatibility.rst lists each of them with its 0.6 signature.
"""
import logging
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger('minibatch')


class IntegrityError(Exception):
    """Defined by minibatch 0.6 (never raised there or here); kept so that ``except`` clauses still import."""


def authenticated_url(mongo_url, authSource='admin'):
    """Return ``mongo_url`` with ``authSource`` added unless it names one (0.6's helper).

    ``mongodb+srv://`` URLs are returned unchanged (DNS supplies the options),
    and so is an empty URL.
    """
    if not mongo_url or '+srv' in str(mongo_url):
        return mongo_url
    query = urlsplit(str(mongo_url)).query
    if any(key.lower() == 'authsource' for key, _ in parse_qsl(query)):
        return mongo_url
    joiner = '&' if '?' in mongo_url else '?'
    return f'{mongo_url}{joiner}authSource={authSource}'


def patch_mongoengine():
    """No-op kept for 0.6 callers: the MongoDB store already gives each forked process its own client."""


def waitForConnection(client, timeout=1.0):  # noqa: N802 (0.6's name)
    """Ping ``client`` (a pymongo client) until it answers, for up to ``timeout`` seconds; re-raise the last error."""
    import time

    from pymongo.errors import ConnectionFailure
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.admin.command('ping')
        except ConnectionFailure:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class LegacyEmitterAPI:
    """WindowEmitter members of 0.6 that are not part of the strategy hooks.

    ``em._stop = True`` stops a running emitter, ``em._run_once()`` does one
    round, ``em.persist(True)`` is ``keep=True``, ``em.forward(data)`` puts
    ``data`` to the sink, ``em.should_stop()`` polls the stop queue.
    """

    @property
    def _stop(self) -> bool:
        return self.stopped

    @_stop.setter
    def _stop(self, value: bool) -> None:
        if value:
            self.stop()

    @property
    def _queue(self):
        return self.queue

    @property
    def _forwardfn(self):
        return self.sink.put if self.sink is not None else None

    @property
    def _delete_on_commit(self) -> bool:
        return not self.keep

    @property
    def executor(self):
        """The executor running windows: the live one once running, else what ``executor=`` named."""
        return self._executor if self._executor is not None else self.executor_arg

    @executor.setter
    def executor(self, value) -> None:
        # 0.6 emitters may set self.executor in __init__; it takes effect when the consumer starts
        self.executor_arg = value

    def persist(self, flag: bool = True) -> None:
        """Keep committed messages (``flag=True``) or delete them: the same as ``keep=``."""
        self.keep = bool(flag)

    def forward(self, data) -> None:
        """Put ``data`` to the sink, if there is one."""
        if self.sink is not None:
            self.sink.put(data)

    def should_stop(self) -> bool:
        """True once a stop was asked (``stop()``, ``True`` on the queue)."""
        return self._should_stop()

    def _run_once(self):
        """One round, as ``run(blocking=False)``."""
        return self.run(blocking=False)
