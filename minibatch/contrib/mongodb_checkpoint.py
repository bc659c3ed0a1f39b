"""Where a collection source stopped: :class:`StreamCheckpoint`, kept in the status of the stream it feeds.

Used by :class:`~minibatch.contrib.mongodb.MongoSource` and
:class:`~minibatch.contrib.mongodb.MongoReplicasetSource`, so that a new
source object (after a restart, say) continues where the last one stopped.
"""
import datetime

from bson import json_util


class StreamCheckpoint:
    """Where one source stopped, kept in the ``status`` of the stream it feeds.

    The status holds ``{'checkpoints': {key: {'position': ..., 'saved': ...}}}``;
    ``position`` is MongoDB extended JSON, so an ObjectId, a datetime or a
    resume token comes back exactly as it was saved, and any store can keep it.

    Saving changes only this source's entry, atomically in the store
    (``store.set_status``), so sources of the same stream in different
    processes never set each other back.
    """
    FIELD = 'checkpoints'

    def __init__(self, key):
        # '.' and '$' are not welcome in MongoDB field names
        self.key = key.replace('%', '%25').replace('.', '%2E').replace('$', '%24')

    def load(self, stream):
        """The saved position (any BSON value), or None if there is none. Reads the store."""
        info = stream.store.get_stream(stream.name)
        record = ((info.status or {}).get(self.FIELD) or {}).get(self.key) if info else None
        if not record:
            return None
        return json_util.loads(record['position'])['v']

    def save(self, stream, position):
        """Store ``position``; one acknowledged write. Raises when the store fails."""
        record = {'position': json_util.dumps({'v': position}, json_options=json_util.CANONICAL_JSON_OPTIONS),
                  'saved': datetime.datetime.now(datetime.timezone.utc).isoformat()}
        stream.store.set_status(stream.name, (self.FIELD, self.key), record)

    def clear(self, stream):
        """Forget the saved position (no-op when there is none)."""
        stream.store.set_status(stream.name, (self.FIELD, self.key), None)
