"""The live web dashboard and the Prometheus metrics of minibatch (``minibatch[apps]``).

* :class:`~minibatch.dashboard.server.Dashboard`: the pages, their JSON API,
  the dead-letter actions and ``/metrics``, as a Flask blueprint
  (:meth:`~minibatch.dashboard.server.Dashboard.blueprint`) or a standalone
  app (:func:`~minibatch.dashboard.server.create_app`); ``minibatch dashboard``
  serves the latter, ``StreamingApp`` mounts the former.
* :mod:`minibatch.dashboard.figures`: what the pages show, read from the store
  and :func:`minibatch.status.stream_stats` (never recomputed).
* :mod:`minibatch.dashboard.history`: the sampled figures behind the charts,
  kept bounded in each stream's ``status`` so that they survive a restart.
* :mod:`minibatch.dashboard.metrics`: the Prometheus collector.

Importing this package imports neither Flask nor prometheus_client; they are
loaded when an app or the collector is made.
"""
from minibatch.dashboard.server import Dashboard, create_app

__all__ = ['Dashboard', 'create_app']
