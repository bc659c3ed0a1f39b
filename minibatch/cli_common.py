"""Pieces shared by the ``minibatch`` commands: the error line, JSON output, tables, store lookups.

Nothing here decides a figure: the numbers come from the store and from
:func:`minibatch.status.stream_stats`; this module only prints them.
"""
import datetime
import json
import logging

import click

from minibatch.errors import StreamNotFound


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``minibatch: error: <message>``, exit code 1."""
    exit_code = 1

    def show(self, file=None):
        click.echo(f'minibatch: error: {one_line(self.format_message())}', err=True, file=file)


def one_line(text):
    """``text`` with its lines joined, so an error is always one line on stderr."""
    return ' '.join(part.strip() for part in str(text).splitlines() if part.strip())


class StderrHandler(logging.Handler):
    """Logs to whatever ``sys.stderr`` is at the time of the record (click's test runner swaps it)."""

    def emit(self, record):
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # a log line must never break a command
            self.handleError(record)


def setup_logging(verbose):
    """Show minibatch's warnings (failed windows, dead letters) on stderr; INFO too with ``verbose``."""
    logger = logging.getLogger('minibatch')
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter('%(message)s'))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# -- values -------------------------------------------------------------
def plain(value):
    """``json.dumps`` default: datetimes as ISO 8601 in UTC, ObjectIds and the rest as strings."""
    if isinstance(value, datetime.datetime):
        # the store's datetimes are naive UTC; say so in the text
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(value, **kwargs):
    """One line of JSON for ``value`` (see :func:`plain` for non-JSON types)."""
    return json.dumps(value, default=plain, separators=kwargs.pop('separators', (', ', ': ')), **kwargs)


def json_id(message_id):
    """A message id as it appears in JSON output: SQLite's integers stay integers, ObjectIds become hex."""
    return message_id if isinstance(message_id, int) else str(message_id)


def age(moment, now):
    """``moment`` (naive UTC) relative to ``now``: '4s ago', '3m ago', '2h ago', '5d ago'."""
    if moment is None:
        return 'never'
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds // size}{unit} ago'
    return f'{seconds}s ago'


def plural(count, noun):
    """'1 message', '3 messages'."""
    return f'{count} {noun}' if count == 1 else f'{count} {noun}s'


def shorten(text, width):
    """``text`` cut to ``width`` characters, with '...' when it was longer."""
    text = str(text)
    return text if len(text) <= width else text[:max(0, width - 3)] + '...'


# -- tables -------------------------------------------------------------
def table(headers, rows, numeric=()):
    """Lines of a plain-text table; columns named in ``numeric`` are right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells):
        out = [cell.rjust(w) if h in numeric else cell.ljust(w) for cell, w, h in zip(cells, widths, headers)]
        return '  '.join(out).rstrip()
    return [line(headers)] + [line(row) for row in rows]


# -- store lookups ------------------------------------------------------
def require_stream(store, name):
    """Raise StreamNotFound (one clear line) unless stream ``name`` exists in ``store``."""
    if store.get_stream(name) is None:
        raise StreamNotFound(f'no stream named {name!r} in {store.describe()}')
