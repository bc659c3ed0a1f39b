"""The ``minibatch`` command, in-process (click's CliRunner) and as a subprocess (``python -m minibatch``).

Store-facing tests run over both stores (``store_url``). Subprocess tests
get the store through MINIBATCH_URL, as a user's shell would.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from click.testing import CliRunner

import minibatch as mb
from minibatch.cli import cli
from minibatch.cli.common import to_json

from tests.helpers import default_sigint, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- helpers ----------------------------------------------------------------
def invoke(args, input=None):
    """Run the command in-process; ``result.stdout`` and ``result.stderr`` are kept apart."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes them unless told not to
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, args, input=input, catch_exceptions=False)


def cli_env(url=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    for var in ('MINIBATCH_URL', 'MINIBATCH_MONGO_URL', 'MONGO_URL'):
        env.pop(var, None)
    if url:
        env['MINIBATCH_URL'] = url
    return env


def run(args, url=None, input=None, cwd=None, timeout=60):
    """``python -m minibatch ARGS`` to completion."""
    return subprocess.run([sys.executable, '-m', 'minibatch', *args], env=cli_env(url), input=input, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start(args, url=None, cwd=None):
    """``python -m minibatch ARGS`` in the background, stdout lines readable through ``proc.lines``."""
    proc = subprocess.Popen([sys.executable, '-m', 'minibatch', *args], env=cli_env(url), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    proc.lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            proc.lines.put(line.rstrip('\n'))
    threading.Thread(target=pump, daemon=True).start()
    return proc


def next_line(proc, timeout=20):
    try:
        return proc.lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f'no output line within {timeout}s (exit code {proc.poll()})')


def assert_error_line(stderr, *fragments):
    """stderr is exactly one line, minibatch's error line, with every fragment in it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('minibatch: error: '), stderr
    assert 'Traceback' not in stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


def table_rows(stdout, first='stream'):
    """{first cell: {header: cell}} of the first table in ``stdout`` (lines of text too) whose header starts
    with ``first``."""
    lines = [line.strip() for line in (stdout.splitlines() if isinstance(stdout, str) else stdout) if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith(first + ' '))
    headers = lines[start].split()
    rows = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) != len(headers):
            break
        rows[cells[0]] = dict(zip(headers, cells))
    return rows


def datas(url, name):
    return [m.data for m in mb.stream(name, url=url).store.messages(name)]


def unique(prefix):
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


# -- status -----------------------------------------------------------------
def report(stream, consumer='c1', **info):
    """A consumer report as a running consumer writes it (see WindowEmitter._heartbeat)."""
    stream.store.heartbeat(stream.name, consumer, {'host': 'h', 'pid': 7, 'state': 'running', 'heartbeat': 5.0,
                                                   'processed': 12, 'failed': 1, 'rate': 2.5, **info})


def test_status_table_shows_the_figures_of_stream_stats(store_url):
    stream = mb.stream('cli-status', url=store_url)
    stream.append([{'i': i} for i in range(2)])
    time.sleep(0.02)
    assert stream.housekeep(max_age=0.01) == 2  # 2 expired unprocessed, shown as such
    stream.append([{'i': i} for i in range(3)])
    stream.reject({'bad': 1}, 'not JSON')
    report(stream)
    result = invoke(['--url', store_url, 'status'])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f'store: {stream.store.describe()}\n')
    row = table_rows(result.stdout)['cli-status']
    stats = stream.stats()
    # the figures below are not all zero
    assert stats['backlog'] == 3 and stats['processed'] == 12 and stats['expired'] == 2
    for header, key in (('backlog', 'backlog'), ('in_flight', 'in_flight'), ('processed', 'processed'),
                        ('failed', 'failed'), ('dead', 'dead'), ('expired', 'expired'),
                        ('consumers', 'consumers_alive'), ('windows', 'windows')):
        assert int(row[header]) == stats[key], (header, result.stdout)
    assert float(row['rate/s']) == stats['rate'] == 2.5


def test_status_json_is_stream_stats(store_url):
    stream = mb.stream('cli-json', url=store_url)
    other = mb.stream('cli-other', url=store_url)
    stream.append([{'i': i} for i in range(2)])
    report(stream)
    result = invoke(['--url', store_url, 'status', '--json', 'cli-json'])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out['store'] == stream.store.describe()
    assert list(out['streams']) == ['cli-json']  # only the stream asked for
    assert out['streams']['cli-json'] == json.loads(to_json(stream.stats()))
    seen = out['streams']['cli-json']['consumers'][0]['seen']
    assert seen.endswith('+00:00')  # ISO 8601, in UTC
    everything = json.loads(invoke(['--url', store_url, 'status', '--json']).stdout)
    assert set(everything['streams']) == {'cli-json', other.name}


def test_status_lists_consumer_reports(store_url):
    stream = mb.stream('cli-consumers', url=store_url)
    report(stream, consumer='host-a:11:abc')
    report(stream, consumer='host-b:12:def', state='stopped')
    result = invoke(['--url', store_url, 'status', '--consumers'])
    assert result.exit_code == 0, result.stderr
    text = result.stdout.split('consumers of cli-consumers:')[1]
    alive = [line.split() for line in text.splitlines() if line.strip().startswith('host-')]
    assert [(cells[0], cells[3], cells[6]) for cells in alive] == [('host-a:11:abc', 'running', 'yes'),
                                                                   ('host-b:12:def', 'stopped', 'no')]
    assert table_rows(result.stdout)['cli-consumers']['consumers'] == '1'


def test_status_of_unknown_stream_is_one_error_line(store_url):
    mb.stream('known', url=store_url)
    result = invoke(['--url', store_url, 'status', 'known', 'unknown'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "no stream named 'unknown'")
    assert result.stdout == ''  # checked before anything is printed


def test_status_shows_the_embedded_store_path_as_a_subprocess(tmp_path):
    home = tmp_path / 'home'
    env = dict(cli_env(), MINIBATCH_HOME=str(home))
    out = subprocess.run([sys.executable, '-m', 'minibatch', 'status'], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(home / 'minibatch.db') in out.stdout
    assert 'no streams' in out.stdout


def test_status_watch_refreshes_until_ctrl_c(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 'watch.db')
    mb.stream('watched', url=url).append({'i': 1})
    proc = start(['status', '--watch', '0.2'], url=url)
    try:
        stores = 0
        while stores < 2:  # two refreshes
            stores += next_line(proc).startswith('store: ')
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_unknown_url_scheme_is_one_clear_line():
    out = run(['--url', 'redis://localhost', 'status'])
    assert out.returncode == 1
    assert_error_line(out.stderr, 'sqlite://', 'mongodb://')


def test_unknown_stream_is_one_error_line_as_a_subprocess(store_url):
    mb.stream('exists', url=store_url)
    out = run(['tail', 'missing'], url=store_url)
    assert out.returncode == 1
    assert_error_line(out.stderr, "no stream named 'missing'")


# -- append -----------------------------------------------------------------
def test_append_arguments_and_stdin(store_url):
    result = invoke(['--url', store_url, 'append', 'in', '{"a": 1}', '{"b": [1, 2]}'])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ''  # the count goes to stderr
    assert "appended 2 messages to 'in'" in result.stderr
    result = invoke(['--url', store_url, 'append', 'in'], input='{"c": 3}\n\n   \n{"d": "x"}\n{"e": null}')
    assert result.exit_code == 0, result.stderr
    assert "appended 3 messages to 'in'" in result.stderr
    assert datas(store_url, 'in') == [{'a': 1}, {'b': [1, 2]}, {'c': 3}, {'d': 'x'}, {'e': None}]


@pytest.mark.parametrize('args, input, where', [
    (['{"ok": 1}', '{"oops": }'], None, 'argument 2: invalid JSON'),
    (['{"ok": 1}', '[1, 2]'], None, 'argument 2: expected a JSON object'),
    ([], '{"ok": 1}\n\n{"bad"\n{"ok": 2}\n', 'line 3: invalid JSON'),
    ([], '{"ok": 1}\n"text"\n', 'line 2: expected a JSON object {...}, got a string'),
])
def test_bad_json_writes_nothing(store_url, args, input, where):
    mb.stream('target', url=store_url).append({'before': True})
    result = invoke(['--url', store_url, 'append', 'target', *args], input=input)
    assert result.exit_code == 1
    assert_error_line(result.stderr, where, 'nothing was appended')
    assert datas(store_url, 'target') == [{'before': True}]


def test_bad_input_does_not_even_create_the_stream(store_url):
    result = invoke(['--url', store_url, 'append', 'never', '42'])
    assert result.exit_code == 1
    assert mb.get_store(store_url).get_stream('never') is None


def test_chunks_before_a_bad_line_stay_written_unless_validate_first(store_url):
    lines = '\n'.join(json.dumps({'i': i}) for i in range(5)) + '\n{broken\n'
    result = invoke(['--url', store_url, 'append', 'chunked', '--chunk', '2'], input=lines)
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'line 6', '4 messages (the earlier chunks of the input) were appended')
    assert datas(store_url, 'chunked') == [{'i': i} for i in range(4)]
    result = invoke(['--url', store_url, 'append', 'strict', '--chunk', '2', '--validate-first'], input=lines)
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'line 6', 'nothing was appended')
    assert mb.get_store(store_url).get_stream('strict') is None


def test_a_value_mongodb_cannot_store_names_its_line(mongo_url):
    result = invoke(['--url', mongo_url, 'append', 'big'], input='{"ok": 1}\n{"n": %d}\n' % 2 ** 70)
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'line 2: ', 'nothing was appended')
    assert mb.get_store(mongo_url).get_stream('big') is None


def test_append_as_a_subprocess(store_url):
    out = run(['append', 'piped'], url=store_url, input='{"x": 1}\n{"x": 2}\n')
    assert out.returncode == 0, out.stderr
    assert "appended 2 messages to 'piped'" in out.stderr and out.stdout == ''
    out = run(['append', 'piped'], url=store_url, input='{"x": 3}\nnot json\n')
    assert out.returncode == 1
    assert_error_line(out.stderr, 'line 2: invalid JSON', 'nothing was appended')
    assert datas(store_url, 'piped') == [{'x': 1}, {'x': 2}]


# -- tail -------------------------------------------------------------------
def test_tail_prints_the_last_messages_without_consuming_them(store_url):
    stream = mb.stream('tailed', url=store_url)
    stream.append([{'i': i} for i in range(5)])
    stream.reject({'dead': True}, 'boom')
    result = invoke(['--url', store_url, 'tail', 'tailed', '-n', '2'])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{'i': 3}, {'i': 4}]
    result = invoke(['--url', store_url, 'tail', 'tailed', '-n', '1', '--meta'])
    (line,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert line['data'] == {'i': 4} and line['state'] == 'available' and line['attempts'] == 0
    assert str(line['id']) == str(stream.store.messages('tailed', state='available')[-1].id)
    assert invoke(['--url', store_url, 'tail', 'tailed', '-n', '0']).stdout == ''
    stats = stream.stats()
    assert (stats['available'], stats['claimed'], stats['dead']) == (5, 0, 1)  # nothing taken


def test_tail_follow_prints_a_message_appended_while_it_runs(store_url):
    stream = mb.stream('followed', url=store_url)
    stream.append([{'old': 1}, {'old': 2}])
    started = time.monotonic()
    proc = start(['tail', 'followed', '-n', '1', '-f', '--timeout', '5'], url=store_url)
    try:
        assert json.loads(next_line(proc)) == {'old': 2}  # the tail is reading: what comes now is new
        stream.append({'new': 3})
        assert json.loads(next_line(proc)) == {'new': 3}
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - started >= 5  # it ended because of --timeout
    assert proc.lines.empty()  # each message once
    assert stream.stats()['available'] == 3  # nothing consumed


# -- consume ----------------------------------------------------------------
HANDLERS = '''
import json, os

def handle(window):
    # one line per message; O_APPEND keeps the lines of concurrent workers whole
    with open(os.path.join(os.path.dirname(__file__), 'seen.jsonl'), 'a') as out:
        out.write(''.join(json.dumps(m) + '\\n' for m in window.data))
'''


def test_consume_runs_a_module_function_until_timeout(store_url, tmp_path):
    module = unique('handlers')
    (tmp_path / f'{module}.py').write_text(HANDLERS)
    stream = mb.stream('work', url=store_url)
    stream.append([{'i': i} for i in range(6)])
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, '-m', 'minibatch', 'consume', 'work', f'{module}:handle', '--size', '2',
                             '--workers', '2', '--timeout', '5', '--progress', '0.5'],
                            env=cli_env(store_url), cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = tmp_path / 'seen.jsonl'
        wait_until(lambda: seen.exists() and len(seen.read_text().splitlines()) >= 6, timeout=30,
                   message='the first 6 messages processed', alive=[proc])
        stream.append([{'i': 6}, {'i': 7}])  # arrives while it runs
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    assert time.monotonic() - started >= 5  # it ended because of --timeout
    assert sorted(json.loads(line)['i'] for line in seen.read_text().splitlines()) == list(range(8))
    assert 'backlog' in stderr and 'processed' in stderr  # progress lines
    assert 'stopped: processed 8 messages in 4 windows' in stderr, stderr
    stats = stream.stats()
    assert (stats['backlog'], stats['in_flight'], stats['processed'], stats['consumers_alive']) == (0, 0, 8, 0)


def test_consume_a_function_from_a_file_in_process(store_url, tmp_path):
    path = tmp_path / 'fromfile.py'
    path.write_text(HANDLERS)
    mb.stream('files', url=store_url).append([{'i': 1}, {'i': 2}])
    result = invoke(['--url', store_url, 'consume', 'files', f'{path}:handle', '--size', '1', '--executor',
                     'thread', '--timeout', '1', '--keep'])
    assert result.exit_code == 0, result.stderr
    assert sorted(json.loads(line)['i'] for line in (tmp_path / 'seen.jsonl').read_text().splitlines()) == [1, 2]
    assert mb.stream('files', url=store_url).stats()['done'] == 2  # --keep


@pytest.mark.parametrize('spec, fragment', [
    ('no_such_module_xyz:fn', "cannot import 'no_such_module_xyz'"),
    ('{module}:missing', "has no 'missing'"),
    ('{module}', 'expected module:function'),
    ('{module}:VALUE', 'not a function'),
    ('{broken}:fn', "cannot import '{broken}'"),
])
def test_a_function_that_cannot_be_loaded_is_one_error_line(tmp_path, monkeypatch, spec, fragment):
    module, broken = unique('handlers'), unique('broken')
    (tmp_path / f'{module}.py').write_text('VALUE = 42\n')
    (tmp_path / f'{broken}.py').write_text('def fn(:\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', list(sys.path))  # consume puts the cwd on it
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    result = invoke(['--url', url, 'consume', 's', spec.format(module=module, broken=broken), '--size', '1'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, fragment.format(broken=broken))


def consumer_built(monkeypatch, tmp_path, *options, source='def handle(window):\n    return window.data\n'):
    """The emitter ``minibatch consume`` builds with ``options``, caught before it runs."""
    from minibatch.cli import consume
    built = []
    monkeypatch.setattr(consume, 'run_consumer', lambda emitter, **kwargs: built.append(emitter))
    path = tmp_path / 'built.py'
    path.write_text(source)
    url = 'sqlite:///' + str(tmp_path / 'built.db')
    result = invoke(['--url', url, 'consume', 's', f'{path}:handle', '-q', *options])
    assert result.exit_code == 0, result.stderr
    [emitter] = built
    emitter.close()
    return emitter


def test_consume_passes_every_consumer_option(monkeypatch, tmp_path):
    from minibatch.options import ConsumerOptions
    defaults = consumer_built(monkeypatch, tmp_path)
    assert defaults.options == ConsumerOptions(), 'options not given keep the library\'s defaults'
    em = consumer_built(monkeypatch, tmp_path, '--size', '4', '--executor', 'thread', '--workers', '3', '--keep',
                        '--max-attempts', '7', '--lease', '5', '--retry-backoff', '0.25', '--isolate',
                        '--window-timeout', '9', '--stop-grace', '2')
    assert (type(em).__name__, em.size, em.executor_arg, em.workers, em.keep) == ('CountWindow', 4, 'thread', 3, True)
    assert (em.max_attempts, em.lease, em.retry_backoff, em.isolate) == (7, 5.0, 0.25, True)
    assert (em.options.timeout, em.stop_grace) == (9.0, 2.0)
    em = consumer_built(monkeypatch, tmp_path, '--stop-grace', '0', '--retry-backoff', '0')
    assert (em.stop_grace, em.retry_backoff) == (0.0, 0.0), '0 is a value, not "not given"'
    em = consumer_built(monkeypatch, tmp_path, '--interval', '2', '--fixed', '--emit-empty', '--max-window', '50')
    assert (type(em).__name__, em.interval, em.emit_empty, em.max_window) == ('FixedTimeWindow', 2.0, True, 50)
    em = consumer_built(monkeypatch, tmp_path, '--concurrency', '4',
                        source='async def handle(window):\n    return window.data\n')
    assert em.concurrency == 4
    em = consumer_built(monkeypatch, tmp_path, '--group', 'billing', '--start', 'latest')
    assert (em.group, em.options.start, em.stream_name) == ('billing', 'latest', f'{em.source_name}[billing]')


@pytest.mark.parametrize('options, fragment', [
    (['--emit-empty'], '--emit-empty needs --interval'),
    (['--max-window', '5'], '--max-window needs --interval'),
    (['--fixed'], '--fixed needs --interval'),
    (['--executor', 'fast'], "'fast' is not one of"),
    (['--lease', '0'], '--lease'),
    (['--window-timeout', '-1'], '--window-timeout'),
])
def test_consume_refuses_options_that_make_no_sense(tmp_path, options, fragment):
    url = 'sqlite:///' + str(tmp_path / 'store.db')
    result = invoke(['--url', url, 'consume', 's', 'json:dumps', *options])
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr


def test_consume_isolate_dead_letters_only_the_poison(store_url, tmp_path):
    path = tmp_path / 'poison.py'
    path.write_text('def handle(window):\n'
                    '    if any(m["poison"] for m in window.data):\n'
                    '        raise ValueError("poison")\n')
    stream = mb.stream('isolated', url=store_url)
    stream.append([{'i': i, 'poison': i == 2} for i in range(4)])
    result = invoke(['--url', store_url, 'consume', 'isolated', f'{path}:handle', '--size', '4', '--executor',
                     'inline', '--max-attempts', '1', '--isolate', '--timeout', '1.5'])
    assert result.exit_code == 0, result.stderr
    assert [m.data['i'] for m in stream.dead_letters()] == [2], 'the 3 good messages were not dead-lettered'
    assert 'stopped: processed 3 messages' in result.stderr, result.stderr


# -- dead letters -------------------------------------------------------------
def test_dead_letters_list_requeue_purge(store_url):
    stream = mb.stream('dl', url=store_url)
    stream.append({'fine': True})
    stream.reject([{'n': 1}, {'n': 2}, {'n': 3}, {'n': 4}], 'ValueError: cannot digest')
    base = ['--url', store_url, 'dead-letters']
    result = invoke(base + ['list', 'dl'])
    assert result.exit_code == 0, result.stderr
    ids = [str(m.id) for m in stream.dead_letters()]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ids and all('ValueError: cannot digest' in line
                                                  for line in result.stdout.splitlines()[1:])
    listed = [json.loads(line) for line in invoke(base + ['list', 'dl', '--json']).stdout.splitlines()]
    assert [letter['data'] for letter in listed] == [{'n': 1}, {'n': 2}, {'n': 3}, {'n': 4}]
    assert [str(letter['id']) for letter in listed] == ids

    result = invoke(base + ['requeue', 'dl', str(listed[0]['id'])])
    assert result.exit_code == 0 and "requeued 1 dead letter of 'dl'" in result.stdout
    assert stream.stats()['available'] == 2 and stream.stats()['dead'] == 3

    result = invoke(base + ['requeue', 'dl', ids[1], 'nonsense'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'no dead letter with id nonsense')
    assert stream.stats()['dead'] == 3  # an unknown id requeues nothing

    result = invoke(base + ['purge', 'dl', ids[1]], input='n\n')
    assert result.exit_code == 1 and 'nothing purged' in result.stderr
    assert stream.stats()['dead'] == 3
    result = invoke(base + ['purge', 'dl', ids[1]], input='y\n')
    assert result.exit_code == 0 and "purged 1 dead letter of 'dl'" in result.stdout
    assert [m.data for m in stream.dead_letters()] == [{'n': 3}, {'n': 4}]

    result = invoke(base + ['purge', 'dl', '--yes'])
    assert result.exit_code == 0 and 'purged 2' in result.stdout
    assert stream.stats()['dead'] == 0 and stream.stats()['available'] == 2
    assert 'no dead letters' in invoke(base + ['list', 'dl']).stdout


def test_dead_letters_of_unknown_stream(store_url):
    result = invoke(['--url', store_url, 'dead-letters', 'list', 'nothing-here'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "no stream named 'nothing-here'")


# -- demo -------------------------------------------------------------------
def test_demo_processes_its_messages_and_shows_the_status(store_url):
    result = invoke(['--url', store_url, 'demo', '--messages', '20', '--size', '5', '--executor', 'thread'])
    assert result.exit_code == 0, result.stderr
    assert 'processed 20 messages in 4 windows' in result.stdout
    assert 'window 1: 5 messages, mean value' in result.stdout
    row = table_rows(result.stdout)['demo']
    assert (row['backlog'], row['in_flight'], row['processed'], row['dead']) == ('0', '0', '20', '0')
    assert mb.stream('demo', url=store_url).stats()['processed'] == 20


def test_demo_refuses_a_stream_with_waiting_messages_and_bad_sizes(store_url):
    mb.stream('busy', url=store_url).append({'mine': 1})
    result = invoke(['--url', store_url, 'demo', '--stream', 'busy'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "'busy' already has 1 message waiting", '--clear')
    assert datas(store_url, 'busy') == [{'mine': 1}]
    result = invoke(['--url', store_url, 'demo', '--messages', '15', '--size', '10'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'must be a multiple of --size')


def test_demo_as_a_subprocess_on_the_embedded_store(tmp_path):
    env = dict(cli_env(), MINIBATCH_HOME=str(tmp_path / 'home'))
    out = subprocess.run([sys.executable, '-m', 'minibatch', 'demo'], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / 'home' / 'minibatch.db') in out.stdout
    assert table_rows(out.stdout)['demo']['processed'] == '100'


# -- read-only commands open the embedded store read-only (issue 12, item 12) ------
def test_read_only_commands_create_no_store(tmp_path):
    folder = tmp_path / 'nothing' / 'here'
    url = f'sqlite:///{folder}/mb.db'
    result = invoke(['--url', url, 'status'])
    assert result.exit_code == 0, result.stderr
    assert 'no streams' in result.stdout
    for args in (['tail', 's'], ['dead-letters', 'list', 's']):
        result = invoke(['--url', url, *args])
        assert result.exit_code == 1
        assert_error_line(result.stderr, "no stream named 's'")
    assert not (tmp_path / 'nothing').exists(), 'looking created no folder and no file'


def test_read_only_commands_work_on_a_file_this_user_may_only_read(tmp_path):
    if os.geteuid() == 0:
        pytest.skip('root may write any file: run as a user to test file permissions')
    folder = tmp_path / 'ro'
    url = f'sqlite:///{folder}/mb.db'
    stream = mb.stream('s', url=url)
    stream.append([{'i': 1}, {'i': 2}])
    stream.reject({'bad': 1}, 'not JSON')
    from minibatch.store import reset_stores
    reset_stores()
    os.chmod(folder / 'mb.db', 0o400)
    os.chmod(folder, 0o500)
    try:
        out = run(['status', '--json'], url=url)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)['streams']['s']['backlog'] == 2
        out = run(['tail', 's'], url=url)
        assert (out.returncode, out.stdout.splitlines()) == (0, ['{"i": 1}', '{"i": 2}']), out.stderr
        out = run(['dead-letters', 'list', 's', '--json'], url=url)
        assert out.returncode == 0 and json.loads(out.stdout)['data'] == {'bad': 1}, out.stderr
        out = run(['append', 's', '{"i": 3}'], url=url)
        assert out.returncode == 1
        assert_error_line(out.stderr, 'read-only', 'may not write')
    finally:
        os.chmod(folder, 0o700)
        os.chmod(folder / 'mb.db', 0o600)


# -- errors are one line, and secrets are masked (issue 12, items 10 and 11) -----
@pytest.mark.parametrize('url, secret, fragment', [
    ('mongodb://u:pwSECRET1@ss@h/x', 'pwSECRET1', 'bad MongoDB URL'),
    ('mongodb://h:abc/x', None, 'non-digit'),
    ('mongodb://h/x?tlsCertificateKeyFilePassword=KEYSECRET2&bogus=1', 'KEYSECRET2', 'Unknown option'),
    ('mongodb://h/a.b', None, 'database name'),
    ('user:pwSECRET3@host/x', 'pwSECRET3', 'no minibatch store'),
    ('mongodb://u:pwSECRET4@127.0.0.1:1/x?serverSelectionTimeoutMS=300&authMechanismProperties=AWS_SESSION_TOKEN:TOKSECRET5',
     'TOKSECRET5', 'cannot reach MongoDB'),
], ids=['unescaped-at', 'port', 'unknown-option', 'database-name', 'no-scheme', 'unreachable'])
def test_a_bad_store_url_is_one_error_line_without_secrets(url, secret, fragment):
    out = run(['--url', url, 'status'])
    assert out.returncode == 1
    assert_error_line(out.stderr, fragment)
    assert out.stdout == ''
    if secret:
        assert secret not in out.stderr and '***' in out.stderr
    assert 'pwSECRET4' not in out.stderr


def test_a_failed_login_is_one_error_line_without_the_password(mongo_url):
    url = mongo_url.replace('mongodb://', 'mongodb://nobody:pwSECRET6@', 1)
    out = run(['--url', url, 'status'])
    assert out.returncode == 1
    assert_error_line(out.stderr, 'authentication failed', 'nobody:***@')
    assert 'pwSECRET6' not in out.stderr + out.stdout


def test_tail_on_a_corrupted_sqlite_file_is_one_error_line(tmp_path):
    path = tmp_path / 'garbage.db'
    path.write_bytes(b'SQLite format 3\x00' + os.urandom(8192))
    out = run(['--url', f'sqlite:///{path}', 'tail', 'events'])
    assert out.returncode == 1
    assert_error_line(out.stderr, str(path))
    path.write_bytes(os.urandom(8192))
    out = run(['--url', f'sqlite:///{path}', 'tail', 'events'])
    assert out.returncode == 1
    assert_error_line(out.stderr, str(path))


def test_status_masks_the_password_of_a_user_that_logs_in(mongo_url):
    import pymongo
    user, password = 'mb' + uuid.uuid4().hex[:8], 'pwSECRET' + uuid.uuid4().hex[:8]
    admin = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        admin.admin.command('createUser', user, pwd=password, roles=['root'])
        url = mongo_url.replace('mongodb://', f'mongodb://{user}:{password}@', 1)
        mb.stream('masked', url=url).append({'n': 1})
        for args in (['status'], ['status', '--json']):
            out = run(['--url', url, *args])
            assert out.returncode == 0, out.stderr
            assert password not in out.stdout + out.stderr
            assert f'{user}:***@' in out.stdout
    finally:
        try:
            admin.admin.command('dropUser', user)
        finally:
            admin.close()


# -- consumer groups ----------------------------------------------------------
def grouped(url, name='orders', messages=5):
    """Stream ``name`` with ``messages`` messages, group 'billing' (copies pulled) and group 'audit' (none yet)."""
    stream = mb.stream(name, url=url)
    stream.append([{'i': i} for i in range(messages)])
    stream.store.register_group(name, 'billing')
    stream.store.register_group(name, 'audit')
    assert stream.store.pull(name, 'billing', 1000) == messages
    return stream


def group_rows(lines):
    """{group: {header: cell}} of the groups table in ``lines`` (the table starts at the 'group' header)."""
    return table_rows(lines, first='group')


def test_groups_table_shows_the_lag_of_stream_stats(store_url):
    stream = grouped(store_url)
    store = stream.store
    copies = store.find_available('orders[billing]', limit=2)
    store.claim('orders[billing]', [m.id for m in copies], 'token-1', 60)
    store.commit('orders[billing]', 'token-1', [copies[0].id], keep=True)
    stats = stream.stats()['groups']
    result = invoke(['--url', store_url, 'groups', 'orders'])
    assert result.exit_code == 0, result.stderr
    rows = group_rows(result.stdout.splitlines())
    assert set(rows) == {'audit', 'billing'} == set(stats)
    for group, figures in stats.items():
        row = rows[group]
        assert int(row['lag']) == figures['lag'] and int(row['in_flight']) == figures['in_flight']
        assert int(row['dead']) == figures['dead'] and int(row['consumers']) == figures['consumers_alive']
        assert row['start'] == figures['start'] == 'earliest'
        assert row['oldest'].endswith('s')  # an age, every group lags here
    assert stats['billing']['in_flight'] >= 1 and stats['audit']['lag'] == 5
    out = json.loads(invoke(['--url', store_url, 'groups', 'orders', '--json']).stdout)
    assert out['stream'] == 'orders'
    for group, figures in stream.stats()['groups'].items():
        assert {k: v for k, v in out['groups'][group].items() if k != 'lag_seconds'} == \
            {k: v for k, v in figures.items() if k != 'lag_seconds'}
        assert out['groups'][group]['lag_seconds'] == pytest.approx(figures['lag_seconds'], abs=5)


def test_groups_of_a_stream_without_groups_and_of_no_stream(store_url):
    mb.stream('plain', url=store_url).append({'x': 1})
    result = invoke(['--url', store_url, 'groups', 'plain'])
    assert result.exit_code == 0 and result.stdout.strip() == "no consumer groups on 'plain'"
    assert json.loads(invoke(['--url', store_url, 'groups', 'plain', '--json']).stdout)['groups'] == {}
    result = invoke(['--url', store_url, 'groups', 'missing'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "no stream named 'missing'")


def test_status_shows_groups_only_for_streams_with_groups(store_url):
    grouped(store_url)
    mb.stream('plain', url=store_url).append({'x': 1})
    result = invoke(['--url', store_url, 'status'])
    assert result.exit_code == 0, result.stderr
    assert 'groups of plain:' not in result.stdout
    section = result.stdout.split('groups of orders:\n')[1].splitlines()
    rows = group_rows(section)
    stats = mb.stream('orders', url=store_url).stats()['groups']
    assert {group: int(row['lag']) for group, row in rows.items()} == {g: f['lag'] for g, f in stats.items()}
    assert table_rows(result.stdout)['plain']['backlog'] == '1'  # the streams table is as before
    result = invoke(['--url', store_url, 'status', 'plain'])
    assert 'groups of' not in result.stdout and len(result.stdout.strip().splitlines()) == 4  # unchanged


def test_replay_replays_one_group_and_leaves_the_other_alone(store_url):
    stream = grouped(store_url)
    store = stream.store
    # billing processes everything; audit copies everything but processes nothing yet
    copies = store.find_available('orders[billing]', limit=100)
    token = 'token-b'
    store.claim('orders[billing]', [m.id for m in copies], token, 60)
    assert store.commit('orders[billing]', token, [m.id for m in copies], keep=True) == 5
    assert stream.stats()['groups']['billing']['lag'] == 0
    assert store.pull('orders', 'audit', 1000) == 5
    audit_before = stream.stats()['groups']['audit']
    result = invoke(['--url', store_url, 'replay', 'orders', 'billing'])
    assert result.exit_code == 0, result.stderr
    assert "replayed 5 messages of 'orders' for group 'billing'" in result.stdout
    groups = stream.stats()['groups']
    assert groups['billing']['lag'] == 5
    assert groups['audit']['lag'] == audit_before['lag'] == 5
    assert store.counts('orders[billing]')['available'] == 0  # copied again by the next pull
    assert store.pull('orders', 'billing', 1000) == 5


def test_replay_since_a_datetime_or_a_message_id(store_url):
    import datetime
    stream = mb.stream('timed', url=store_url)
    stream.append([{'i': i} for i in range(3)])
    time.sleep(0.05)
    middle = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.05)
    stream.append([{'i': i} for i in range(3, 5)])
    store = stream.store
    store.register_group('timed', 'g')
    assert store.pull('timed', 'g', 1000) == 5
    ids = [m.id for m in store.messages('timed')]
    # an ISO 8601 date and time with an offset: converted to UTC
    local = middle.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    result = invoke(['--url', store_url, 'replay', 'timed', 'g', '--since', local.isoformat()])
    assert result.exit_code == 0, result.stderr
    assert "replayed 2 messages of 'timed' from" in result.stdout
    # without an offset: UTC
    naive = middle.replace(tzinfo=None).isoformat()
    result = invoke(['--url', store_url, 'replay', 'timed', 'g', '--since', naive])
    assert result.exit_code == 0 and 'replayed 2 messages' in result.stdout, result.stderr
    # a message id, as the store writes it
    result = invoke(['--url', store_url, 'replay', 'timed', 'g', '--since', str(ids[1])])
    assert result.exit_code == 0 and 'replayed 4 messages' in result.stdout, result.stderr
    # a date alone is midnight UTC: every message
    result = invoke(['--url', store_url, 'replay', 'timed', 'g', '--since', '2000-01-01'])
    assert result.exit_code == 0 and 'replayed 5 messages' in result.stdout, result.stderr
    result = invoke(['--url', store_url, 'replay', 'timed', 'g', '--since', 'yesterday'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, 'yesterday')


def test_parse_since():
    import datetime
    from minibatch.cli.groups import parse_since
    assert parse_since(None) is None
    assert parse_since('2026-12-01T10:00:00+02:00') == datetime.datetime(2026, 12, 1, 8, 0)
    assert parse_since('2026-12-01T10:00:00Z') == datetime.datetime(2026, 12, 1, 10, 0)
    assert parse_since('2026-12-01 10:00') == datetime.datetime(2026, 12, 1, 10, 0)
    assert parse_since('2026-12-01') == datetime.datetime(2026, 12, 1)
    # digits are a message id, never a compact date
    assert parse_since('20261201') == '20261201'
    assert parse_since('65a1b2c3d4e5f6a7b8c9d0e1') == '65a1b2c3d4e5f6a7b8c9d0e1'


def test_replay_of_an_unknown_group_is_one_error_line(store_url):
    grouped(store_url)
    result = invoke(['--url', store_url, 'replay', 'orders', 'shipping'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "stream 'orders' has no group 'shipping'", 'audit', 'billing')
    result = invoke(['--url', store_url, 'replay', 'missing', 'billing'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "no stream named 'missing'")


def test_delete_group_asks_first(store_url):
    stream = grouped(store_url)
    base = ['--url', store_url, 'delete-group', 'orders']
    result = invoke(base + ['billing'], input='n\n')
    assert result.exit_code == 1 and 'nothing deleted' in result.stderr
    assert set(stream.groups()) == {'audit', 'billing'}
    result = invoke(base + ['billing'], input='y\n')
    assert result.exit_code == 0 and "deleted group 'billing' of 'orders'" in result.stdout
    assert set(stream.groups()) == {'audit'}
    assert stream.stats()['groups']['audit']['lag'] == 5  # the other group is untouched
    result = invoke(base + ['billing', '--yes'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "stream 'orders' has no group 'billing'")


def test_dead_letters_of_a_group(store_url):
    stream = grouped(store_url)
    store = stream.store
    copy = store.find_available('orders[billing]', limit=1)[0]
    store.claim('orders[billing]', [copy.id], 'token-1', 60)
    assert store.release('orders[billing]', 'token-1', [copy.id], 'ValueError: billing broke', max_attempts=1) \
        == (0, 1)
    base = ['--url', store_url, 'dead-letters']
    result = invoke(base + ['list', 'orders', '--group', 'billing'])
    assert result.exit_code == 0, result.stderr
    assert 'ValueError: billing broke' in result.stdout
    assert 'dead-letters requeue orders --group billing' in result.stderr
    assert 'no dead letters' in invoke(base + ['list', 'orders']).stdout  # the stream's own: none
    assert 'no dead letters' in invoke(base + ['list', 'orders', '--group', 'audit']).stdout
    assert stream.stats()['groups']['billing']['dead'] == 1
    result = invoke(base + ['requeue', 'orders', '-g', 'billing'])
    assert result.exit_code == 0 and "requeued 1 dead letter of 'orders[billing]'" in result.stdout
    assert stream.stats()['groups']['billing']['dead'] == 0
    result = invoke(base + ['list', 'orders', '--group', 'nope'])
    assert result.exit_code == 1
    assert_error_line(result.stderr, "stream 'orders' has no group 'nope'")
