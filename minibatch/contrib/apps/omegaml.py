"""``StreamingApp`` for omega|ml: the streams live in omega|ml's MongoDB database.

Use it like the plain app, typically attached to the Flask app of an omega|ml
service::

    from flask import Flask
    from minibatch import streaming
    from minibatch.contrib.apps.omegaml import StreamingApp

    def consumer(url):
        # url is omega|ml's MongoDB URL: om.defaults.OMEGA_MONGO_URL (with authSource=admin)
        @streaming('sensor-data', url=url, size=100)
        def process(window):
            import omegaml as om
            om.datasets.put(window.data, 'sensor-data-processed', append=True)

    if __name__ == '__main__':
        server = Flask(__name__)
        app = StreamingApp(server=server)   # adds /status to the existing app
        app.start_streaming(consumer)
        app.run()

A program written for minibatch 0.6 runs as it is: ``StreamingApp(server=True,
uri='/prefix')``, ``app.route``, ``app.server.register_blueprint(app)``,
``app.start_streaming(consumer, on=om)`` (``consumer(url=...)`` with ``on``'s
``om.defaults.OMEGA_MONGO_URL``), ``debug=True``, ``run_server``, ``stop``.

``url=`` picks another database. omega|ml is imported only to read the
default URL, i.e. only when neither ``url`` nor ``on=`` gives one, and only
when the URL is first needed; its import takes seconds.
"""
from minibatch.contrib.apps.flask import StreamingApp as _StreamingApp
from minibatch.contrib.base import require
from minibatch.legacy import authenticated_url
from minibatch.store import scheme_of


def omega_url(om):
    """``om.defaults.OMEGA_MONGO_URL`` with ``authSource=admin`` unless it names one, as 0.6 and omega|ml use it.

    Only a ``mongodb://`` URL gets ``authSource``; another store's URL is used as given.
    """
    url = om.defaults.OMEGA_MONGO_URL
    return authenticated_url(url) if scheme_of(str(url)) == 'mongodb' else url


def is_omega(value):
    """True if ``value`` looks like an omega|ml instance or module (it has ``defaults.OMEGA_MONGO_URL``)."""
    return hasattr(getattr(value, 'defaults', None), 'OMEGA_MONGO_URL')


class StreamingApp(_StreamingApp):
    """A :class:`minibatch.contrib.apps.flask.StreamingApp` whose store is omega|ml's MongoDB.

    It takes the same parameters (0.6's ``consumer``, ``name``, ``import_name``,
    ``uri``, ``server``, then ``url`` and the others by keyword). Without
    ``url``, the store is ``om.defaults.OMEGA_MONGO_URL`` with
    ``authSource=admin`` (omega|ml reads it from ``OMEGA_MONGO_URL``,
    ``MONGO_URL`` or its config): that of ``start_streaming(on=om)`` if it
    comes first, else that of ``import omegaml``, imported when the URL is
    first needed (a consumer started or ``/status`` asked).

    :raises minibatch.errors.MissingDependencyError: the URL is needed, neither
        ``url`` nor ``on`` gave it, and omega|ml is not installed
        (``pip install "minibatch[omegaml]"``)
    """

    def initial_url(self, url):
        return url or None  # None: decided when first needed

    def default_url(self):
        return omega_url(require('omegaml', 'omegaml'))

    def consumer_url(self, on=None):
        """``on``'s URL (see :func:`omega_url`), also the app's store if it had none yet; else the app's."""
        if on is None:
            return self.url
        url = omega_url(on)
        if self._url is None:
            self._url = url
        return url

    def start_streaming(self, consumer=None, *args, on=None, debug=False, **kwargs):
        """As :meth:`minibatch.contrib.apps.flask.StreamingApp.start_streaming`, with ``on=om``.

        ``on``: the omega|ml instance whose ``defaults.OMEGA_MONGO_URL`` the
        consumer is given (default: the app's store). 0.6's positional form,
        ``start_streaming(consumer, om[, debug])``, is understood: a first
        extra argument with ``defaults.OMEGA_MONGO_URL`` is taken as ``on``.
        """
        if on is None and args and is_omega(args[0]):
            on, args = args[0], args[1:]
            if args and isinstance(args[0], bool):
                debug, args = args[0], args[1:]
        return super().start_streaming(consumer, *args, on=on, debug=debug, **kwargs)
