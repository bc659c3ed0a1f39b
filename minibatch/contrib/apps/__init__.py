"""Streaming applications: consumers run as supervised child processes, with a ``/status`` page.

``StreamingApp`` (``pip install "minibatch[apps]"``, which brings Flask) is in
:mod:`minibatch.contrib.apps.flask`, with an example; the omega|ml flavour,
which takes the store URL from omega|ml's configuration, is in
:mod:`minibatch.contrib.apps.omegaml`. See docs/app.rst.

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
