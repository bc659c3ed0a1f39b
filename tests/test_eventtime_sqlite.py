"""The embedded store's event-time tables (minibatch.store.eventtime_sqlite): entries kept in window order,
marks of what was indexed, and files of the earlier layout (one table, ``et_events``) moved over."""
import sqlite3

import minibatch as mb
from minibatch.eventtime import tumbling
from minibatch.eventtime.spec import EventTimeSpec

from tests.test_eventtime import Collect, consumer, events, rounds

#: the event-time tables as minibatch wrote them before et_entries and et_marks (2026-12-01/02)
OLD_SCHEMA = """
CREATE TABLE et_specs (spec TEXT PRIMARY KEY, stream TEXT NOT NULL, describe TEXT NOT NULL DEFAULT '',
    grace REAL NOT NULL DEFAULT 0, span REAL NOT NULL DEFAULT 0, max_t REAL, cursor INTEGER NOT NULL DEFAULT 0,
    late INTEGER NOT NULL DEFAULT 0, born REAL);
CREATE TABLE et_events (spec TEXT NOT NULL, msg INTEGER NOT NULL, key TEXT NOT NULL, t REAL NOT NULL,
    late INTEGER NOT NULL DEFAULT 0, ws REAL, we REAL, PRIMARY KEY (spec, msg)) WITHOUT ROWID;
CREATE INDEX et_events_window ON et_events (spec, late, key, t);
CREATE TABLE et_windows (spec TEXT NOT NULL, key TEXT NOT NULL, wstart REAL NOT NULL, wend REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (spec, key, wstart, wend)) WITHOUT ROWID;
CREATE TABLE et_keys (spec TEXT NOT NULL, key TEXT NOT NULL, next INTEGER NOT NULL, PRIMARY KEY (spec, key))
    WITHOUT ROWID;
"""


def tables(path):
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute(f'SELECT count(*) FROM {table}').fetchone()[0]


def test_a_file_of_the_earlier_layout_is_moved_over_and_its_index_kept(tmp_path):
    """Messages 1-3 indexed on time and 4 as late, in the old table: after the move a consumer emits [1, 2, 3]
    and dead-letters 4 as late. Had the index been lost, it would index 4 again, on time, into the window."""
    path = tmp_path / 'old.db'
    url = f'sqlite:///{path}'
    stream = mb.stream('old', url=url)
    stream.append(events(('a', 1, 1), ('a', 2, 2), ('a', 3, 3), ('a', 4, 4)))
    spec = EventTimeSpec(tumbling(10), key='k', time='ts', grace=0)
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        ids = [row[0] for row in conn.execute("SELECT id FROM buffer WHERE stream = 'old' ORDER BY id")]
        born = conn.execute("SELECT created FROM streams WHERE name = 'old'").fetchone()[0]
        conn.execute('INSERT INTO et_specs VALUES (?, ?, ?, 0, 10, 4, ?, 1, ?)',
                     (spec.spec_id('old'), 'old', spec.describe('old'), ids[-1], born))
        conn.executemany('INSERT INTO et_events VALUES (?, ?, \'"a"\', ?, ?, 0, ?)',
                         [(spec.spec_id('old'), id_, t, late, 10 if late else None)
                          for id_, t, late in zip(ids, (1, 2, 3, 4), (0, 0, 0, 1))])
        conn.execute('INSERT INTO et_windows VALUES (?, \'"a"\', 0, 10, 0, 10, 0)', (spec.spec_id('old'),))
    fn = Collect()
    em = consumer(url, 'old', fn, grace=0)
    em.state  # made: the file is moved over
    assert 'et_events' not in tables(path)
    assert (count(path, 'et_entries'), count(path, 'et_marks')) == (4, 4)
    stream.append(events(('b', 25, 5)))  # the watermark passes [0, 10)
    rounds(em)
    assert fn.windows == [('a', 0.0, 10.0, [1, 2, 3], False)]
    dead = stream.dead_letters()
    assert [m.data['v'] for m in dead] == [4] and 'late event' in dead[0].error
    assert stream.stats()['late'] == 1  # the old spec's count, carried over


def test_a_committed_window_leaves_no_entry_and_its_marks_go_in_batches(tmp_path):
    path = tmp_path / 'store.db'
    url = f'sqlite:///{path}'
    stream = mb.stream('s', url=url)
    fn = Collect()
    em = consumer(url, 's', fn, grace=0)
    stream.append(events(*[(f'k{i % 5}', i % 10, i) for i in range(50)]) + events(('z', 100, -1)))
    rounds(em)
    em.flush()
    assert sorted(w[0] for w in fn.windows) == ['k0', 'k1', 'k2', 'k3', 'k4']
    assert count(path, 'et_entries') == 1  # z's, whose window is open: the others went with their commits
    em.state.forget([])  # the marks of committed messages wait for a batch: this writes what waits
    assert count(path, 'et_marks') == 1


def test_contents_show_a_message_another_claim_holds_with_that_claims_lease(tmp_path):
    url = f'sqlite:///{tmp_path / "store.db"}'
    stream = mb.stream('s', url=url)
    em = consumer(url, 's', Collect(), grace=0)
    stream.append(events(('a', 1, 1), ('a', 2, 2), ('a', 3, 3)))
    rounds(em, 2)  # indexed; the window stays open (the watermark is at 3)
    state = em.state
    row, = [r for r in state.ready(float('inf'), 0, 10)]
    second = sorted(item.id for item in state.contents(row))[1]
    stream.store.claim('s', [second], 'someone-else', 30.0)
    items = {item.id: item for item in state.contents(row)}
    assert items[second].state == 'claimed' and items[second].lease > 1e9
    assert [i.state for k, i in sorted(items.items()) if k != second] == ['available', 'available']
    assert state.close(row, 0.0, 30.0, 'mine').outcome == 'busy'  # all or none: none while one is held
    stream.store.unclaim('s', 'someone-else', [second])
    row, = state.ready(float('inf'), float('inf'), 10)
    closing = state.close(row, 0.0, 30.0, 'mine')
    assert closing.outcome == 'claimed' and [m.data['v'] for m in closing.messages] == [1, 2, 3]
