"""``minibatch dashboard``: serve the live web dashboard and ``/metrics`` of the store.

Serves :func:`minibatch.dashboard.create_app` with werkzeug's threaded
server until Ctrl-C (exit code 0). Binds 127.0.0.1:8765 by default; the
address it listens on goes to stderr, with the store as ``describe()``
names it (never its password). Read-only unless ``--allow-write``, or
``--token`` (also ``MINIBATCH_DASHBOARD_TOKEN``, which keeps it out of the
process list), which the requeue and purge requests must then carry. The
request log lines show with ``-v`` only. Bound
to another address than loopback, ``--allow-write`` needs ``--token``:
anyone who can reach the port could otherwise purge dead letters.

Exit codes: 0 after Ctrl-C; 1 with one error line when the store cannot be
used, the port is taken, or the options are unsafe; 2 for bad options.
"""
import logging

import click

from minibatch.cli.common import CliError, pass_store


@click.command(short_help='a live web dashboard of every stream, and /metrics for Prometheus')
@click.option('--host', default='127.0.0.1', show_default=True, help='address to listen on')
@click.option('--port', type=click.IntRange(0, 65535), default=8765, show_default=True,
              help='port to listen on (0: any free port)')
@click.option('--allow-write', is_flag=True, help='allow requeue and purge of dead letters from the pages')
@click.option('--token', envvar='MINIBATCH_DASHBOARD_TOKEN', metavar='SECRET',
              help='a secret requeue and purge must carry (also MINIBATCH_DASHBOARD_TOKEN); allows them')
@click.option('--refresh', type=click.FloatRange(min=0.1, max=3600), default=2.0, show_default=True,
              metavar='SECONDS', help='how often an open page updates itself')
@click.option('--sample-every', type=click.FloatRange(min=0.1, max=3600), default=30.0, show_default=True,
              metavar='SECONDS', help='how often the chart history takes a sample (kept for an hour)')
@pass_store
def dashboard(store, host, port, allow_write, token, refresh, sample_every):
    """Serve a live dashboard of every stream (and /metrics) until Ctrl-C.

    The overview lists every stream with its backlog, messages in flight,
    processed, failed, dead letters, rate, oldest waiting message and
    consumers alive, with a chart of the last hour; each stream has a page
    with its consumers, recent windows and dead letters.
    """
    from werkzeug.serving import make_server

    from minibatch.dashboard import create_app
    from minibatch.dashboard.history import History
    from minibatch.dashboard.server import is_loopback

    if allow_write and not token and not is_loopback(host):
        raise CliError(f'--allow-write on {host} (not loopback) needs --token too '
                       '(or MINIBATCH_DASHBOARD_TOKEN), so that not everyone who reaches the port can purge')
    if token is not None and len(token) < 8:
        raise CliError('--token must be at least 8 characters')
    app = create_app(store=lambda: store, allow_write=allow_write, token=token, refresh=refresh,
                     history=History(interval=sample_every, span=max(3600.0, sample_every)))
    store.list_streams()  # an unreachable store fails now, with one error line, not at the first page
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise CliError(f'cannot listen on {host}:{port}: {exc.strerror or exc}') from exc
    shown = f'[{host}]' if ':' in host else host
    where = f'http://{shown}:{server.server_port}/'
    mode = app.dashboard.mode
    click.echo(f'minibatch dashboard: {where} (metrics: {where}metrics), store: {store.describe()}, '
               f'{"read-only" if mode == "read-only" else "requeue/purge allowed" if mode == "writable" else "requeue/purge need the token"}; '
               'Ctrl-C to stop', err=True)
    if logging.getLogger('minibatch').getEffectiveLevel() > logging.INFO:
        # a line per poll of every open page would drown the warnings; -v shows them
        logging.getLogger('werkzeug').setLevel(logging.WARNING)
    app.dashboard.start_sampler()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.dashboard.stop()
