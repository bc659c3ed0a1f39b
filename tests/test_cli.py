"""The ``minibatch`` command: status of a store, driven in-process and as a subprocess."""
import os
import subprocess
import sys

from click.testing import CliRunner

import minibatch as mb
from minibatch.cli import cli


def test_status_lists_streams_with_counts(store_url):
    stream = mb.stream('cli-status', url=store_url)
    stream.append([{'i': i} for i in range(3)])
    result = CliRunner().invoke(cli, ['--url', store_url, 'status'])
    assert result.exit_code == 0, result.output
    assert 'store: ' in result.output
    row = [line for line in result.output.splitlines() if line.startswith('cli-status')]
    assert row and row[0].split()[1:3] == ['3', '0'], result.output


def test_status_shows_the_embedded_store_path_as_a_subprocess(tmp_path):
    home = tmp_path / 'home'
    env = dict(os.environ, MINIBATCH_HOME=str(home),
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                           os.environ.get('PYTHONPATH', '')]))
    for var in ('MINIBATCH_URL', 'MINIBATCH_MONGO_URL', 'MONGO_URL'):
        env.pop(var, None)
    out = subprocess.run([sys.executable, '-m', 'minibatch', 'status'], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(home / 'minibatch.db') in out.stdout
    assert 'no streams' in out.stdout


def test_status_with_unknown_scheme_is_one_clear_line():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run([sys.executable, '-m', 'minibatch', '--url', 'redis://localhost', 'status'], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith('minibatch: error: ') and 'sqlite://' in out.stderr
    assert 'Traceback' not in out.stderr
