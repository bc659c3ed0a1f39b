"""MQTT: feed a stream from a topic (:class:`MQTTSource`), publish results to one (:class:`MQTTSink`).

Uses paho-mqtt 2.x (``pip install 'minibatch[mqtt]'``), imported when a source
or sink is created, so importing this module never needs the driver.

Each MQTT message becomes, as in minibatch 0.6, the stream message
``{'topic': ..., 'payload': <the JSON-decoded payload>, 'qos': ..., 'retain': ...}``;
``MQTTSource(..., envelope=False)`` appends the payload alone, which must then
be a JSON object.

Delivery, in short (details in docs/integrations/mqtt.rst):

- :class:`MQTTSource` acknowledges a QoS 1/2 message only after it was written
  to the stream (or to its dead letters). With a durable session (give a
  ``client_id``) a message the source received but could not store, because
  the store failed or the process died, is sent again by the broker when the
  source reconnects: at least once. Without a ``client_id`` the session ends
  with the connection and the broker forgets what was not acknowledged.
- :class:`MQTTSink` returns from ``put()`` only when the broker has
  acknowledged every message (QoS 1), and raises otherwise, so the window is
  retried: at least once, duplicates possible.
"""
# The shared endpoint (URL, paho client), the source and the sink live in
# modules of their own; this module keeps the import path users know.
from minibatch.contrib.mqtt_endpoint import DEFAULT_PORT, _Endpoint, parse_url  # noqa: F401 (re-exported)
from minibatch.contrib.mqtt_sink import MQTTPublishError, MQTTSink
from minibatch.contrib.mqtt_source import MQTTSource

__all__ = ['MQTTSource', 'MQTTSink', 'MQTTPublishError', 'parse_url']
