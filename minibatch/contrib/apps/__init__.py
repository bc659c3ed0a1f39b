"""Streaming applications: consumers run as supervised child processes, with a ``/status`` page.

``StreamingApp`` (``pip install "minibatch[apps]"``, which brings Flask)::

    from minibatch import streaming
    from minibatch.contrib.apps import StreamingApp

    def consumer(url):
        @streaming('test-stream', url=url)
        def processing(window):
            ...

    if __name__ == '__main__':
        app = StreamingApp()
        app.start_streaming(consumer)
        app.run()        # status at http://127.0.0.1:5000/status

:mod:`minibatch.contrib.apps.omegaml` has the omega|ml flavour, which takes
the store URL from omega|ml's configuration. See docs/app.rst.

Flask is imported when ``StreamingApp`` is first used, not when this package
is imported: the child processes that run consumers never need it.
"""

__all__ = ['StreamingApp', 'ConsumerProcess', 'Supervisor']


def __getattr__(name):
    # lazy, so that importing the package (the consumer children do) costs nothing
    if name == 'StreamingApp':
        from minibatch.contrib.apps.flask import StreamingApp
        return StreamingApp
    if name in ('ConsumerProcess', 'Supervisor'):
        from minibatch.contrib.apps import supervisor
        return getattr(supervisor, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
