"""What a :class:`~minibatch.models.Stream` offers beyond appending and consuming: its figures,
its dead letters and its retention, as a mixin of ``Stream``.

Each method is one call of the stream's store (``self.store``, ``self.name``); none
needs mongoengine, so the mixin is a plain class.
"""
from minibatch import retention


class StreamUpkeep:
    """Figures, dead letters and retention of a stream (mixed into :class:`~minibatch.models.Stream`)."""

    def stats(self):
        """The stream's figures: messages per state, backlog, processed, failed, rate, consumers.

        The same figures ``minibatch status`` and the app's ``/status`` show;
        see :func:`minibatch.status.stream_stats` for every key. Read-only.
        """
        from minibatch.status import stream_stats
        return stream_stats(self.store, self.name)

    def forget_consumers(self, older_than=86400):
        """Remove reports of consumers not seen for ``older_than`` seconds (their counts leave ``stats()``)."""
        return self.store.forget_consumers(self.name, older_than)

    def reject(self, data, error):
        """Store ``data`` (a dict, or a list of dicts) straight into the dead letters with ``error``.

        For input a source could not turn into a message (a payload that is not
        JSON, say): it is never processed, never silently dropped, and shows in
        ``dead_letters()`` where it can be inspected, requeued or purged. One
        acknowledged write, all or nothing; returns the new ids.
        """
        docs = data if isinstance(data, list) else [data]
        return self.store.append_dead(self.name, docs, str(error))

    def dead_letters(self, limit=None):
        """Messages that failed ``max_attempts`` times, with ``attempts`` and ``error``, oldest first."""
        return self.store.dead_letters(self.name, limit=limit)

    def requeue(self, ids=None):
        """Put dead letters (all, or the given ids) back into the stream; returns how many."""
        return self.store.requeue(self.name, ids=ids)

    def purge_dead_letters(self, ids=None):
        """Delete dead letters (all, or the given ids); removes data; returns how many."""
        return self.store.purge_dead(self.name, ids=ids)

    # -- consumer groups (docs/groups.rst) --------------------------------
    def groups(self):
        """The consumer groups registered on this stream: name -> ``start``, ``keep``, ``created``, ``position``.

        The default group (the consumers without ``group=``) is listed as
        ``'default'`` once one of them has run. Read-only; {} when none.
        """
        return self.store.groups(self.name)

    def replay(self, group, since=None):
        """Make ``group`` process this stream's retained messages again, from ``since`` on.

        ``since``: a naive UTC datetime (messages appended at or after it), a
        message id, or None (every retained message). Other groups are
        untouched. Only retained messages can be replayed: those not yet
        committed by every group, or all with ``keep=True`` (and ``max_age``
        removes messages whatever the groups). Returns how many messages the
        group will see again.

        :raises minibatch.errors.ConfigurationError: no such group on this stream
        """
        return self.store.replay(self.name, group, since)

    def delete_group(self, group):
        """Remove ``group`` from this stream: its position, copies and dead letters. Removes data.

        What only this group still held is removed by the next round of
        retention. Stop the group's consumers first: a running one registers
        the group again. Returns False if there was no such group.
        """
        return self.store.delete_group(self.name, group)

    def housekeep(self, max_age=None):
        """Apply the retention limit once, now: remove messages (processed or not) older than ``max_age``.

        ``max_age`` defaults to the stream's own; without one, nothing is
        removed. Removes data; returns the number of records removed. See
        :meth:`get_or_create` for what is kept (claimed messages, dead letters).
        """
        max_age = retention.max_age_seconds(max_age) if max_age is not None else self.max_age
        return retention.expire(self.store, self.name, max_age) if max_age else 0
