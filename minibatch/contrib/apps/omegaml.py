"""``StreamingApp`` for omega|ml: the streams live in omega|ml's MongoDB database.

Use it like the plain app, typically attached to the Flask app of an omega|ml
service::

    from flask import Flask
    from minibatch import streaming
    from minibatch.contrib.apps.omegaml import StreamingApp

    def consumer(url):
        # url is omega|ml's MongoDB URL: om.defaults.OMEGA_MONGO_URL
        @streaming('sensor-data', url=url, size=100)
        def process(window):
            import omegaml as om
            om.datasets.put(window.data, 'sensor-data-processed', append=True)

    if __name__ == '__main__':
        server = Flask(__name__)
        app = StreamingApp(server=server)   # adds /status to the existing app
        app.start_streaming(consumer)
        app.run()

``uri=`` picks another database. omega|ml is imported only to read the
default URL, i.e. only when ``uri`` is not given; its import takes seconds.
"""
from minibatch.contrib.apps.flask import StreamingApp as _StreamingApp
from minibatch.contrib.base import require


class StreamingApp(_StreamingApp):
    """A :class:`minibatch.contrib.apps.flask.StreamingApp` whose store is omega|ml's MongoDB.

    :param server: an existing Flask app to add ``/status`` to (default: a new one)
    :param uri: the MongoDB URL of the store; default ``om.defaults.OMEGA_MONGO_URL``
        (omega|ml reads it from ``OMEGA_MONGO_URL``, ``MONGO_URL`` or its config)

    :raises minibatch.errors.MissingDependencyError: ``uri`` is not given and
        omega|ml is not installed (``pip install "minibatch[omegaml]"``)
    """

    def __init__(self, server=None, uri=None, name='minibatch', **kwargs):
        super().__init__(server=server, uri=uri, name=name, **kwargs)

    def resolve_uri(self, uri):
        if uri:
            return uri
        om = require('omegaml', 'omegaml')
        return om.defaults.OMEGA_MONGO_URL
