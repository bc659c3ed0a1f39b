"""Keyed, event-time windows: ``tumbling``, ``hopping`` and ``session`` windows with grace and late events.

::

    from minibatch import streaming, tumbling

    @streaming('readings', window=tumbling(60), key='sensor', time='ts', grace=10)
    def per_minute(window):
        window.key, window.start, window.end, window.data

Modules: :mod:`~minibatch.eventtime.spec` (the window specs, validated),
:mod:`~minibatch.eventtime.extract` (reading key and event time),
:mod:`~minibatch.eventtime.assign` (window assignment and lateness, pure),
:mod:`~minibatch.eventtime.strategy` (the :class:`EventTimeWindow` strategy),
:mod:`~minibatch.eventtime.window` (the :class:`EventWindow` the function gets).
The state lives in the store: :mod:`minibatch.store.eventtime`.
"""
from minibatch.eventtime.spec import EventTimeSpec, Hopping, Session, Tumbling, hopping, session, tumbling
from minibatch.eventtime.extract import EventReadError
from minibatch.eventtime.strategy import EventTimeWindow
from minibatch.eventtime.window import EventWindow

__all__ = ['tumbling', 'hopping', 'session', 'Tumbling', 'Hopping', 'Session', 'EventTimeSpec',
           'EventTimeWindow', 'EventWindow', 'EventReadError']
