"""An app module in the gunicorn style (``gunicorn tests.app_module:app``): it starts its consumer when imported.

The consumer child imports this module again to find ``consumer``; that
import must not start another consumer. tests/test_app.py imports it with
APP_MODULE_URL set to the store.
"""
import os

from minibatch import streaming
from minibatch.contrib.apps import StreamingApp


def consumer(url):
    @streaming('app-module', url=url, size=1, executor='inline')
    def process(window):
        pass


app = StreamingApp(uri=os.environ['APP_MODULE_URL'])
child = app.start_streaming(consumer, streams=['app-module'])
