"""The two HTML pages of the dashboard: the overview and the stream page.

They are shells: the script ``static/dashboard.js`` fills them from the JSON
API and keeps them up to date (polling every ``refresh`` seconds). The only
values written into the HTML are escaped: the page title, the stream name
and the URLs of the API, handed to the script as ``data-`` attributes.
"""
from __future__ import annotations

from html import escape

#: what the pages may load: only the dashboard's own files (no CDN, nothing inline)
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{static}/dashboard.css">
<link rel="icon" href="data:,">
</head>
<body data-page="{page}" data-base="{base}" data-refresh="{refresh}"{extra}>
<header>
  <h1><a href="{base}">minibatch</a>{heading}</h1>
  <p class="store">store: <span id="store"></span> · <span id="mode"></span> · updated <span id="updated">never</span>
  <span id="error" class="error" role="alert"></span></p>
</header>
<main>
{body}
</main>
<script src="{static}/dashboard.js"></script>
</body>
</html>
"""

_OVERVIEW = """<table id="streams" class="figures">
<thead><tr><th>stream</th><th>backlog</th><th>in flight</th><th>processed</th><th>failed</th><th>dead</th>
<th>rate/s</th><th>oldest waiting</th><th>consumers</th><th>last hour (backlog, rate)</th></tr></thead>
<tbody></tbody>
</table>
<p id="empty" class="muted" hidden>no streams yet: they appear here when created</p>
"""

_STREAM = """<section class="cards" id="figures"></section>
<section><h2>last hour</h2><div id="chart" class="chart"></div>
<p class="legend"><span class="swatch backlog"></span> backlog <span class="swatch rate"></span> rate/s</p></section>
<section id="groups-section" hidden><h2>groups</h2>
<table id="groups" class="figures"><thead><tr><th>group</th><th>start</th><th>lag</th><th>oldest unprocessed</th>
<th>in flight</th><th>dead</th><th>consumers</th><th>rate/s</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>consumers</h2>
<table id="consumers" class="figures"><thead><tr><th>consumer</th><th>host</th><th>pid</th><th>state</th>
<th>rate/s</th><th>windows in flight</th><th>processed</th><th>failed</th><th>last heartbeat</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>recent windows</h2>
<table id="windows" class="figures"><thead><tr><th>window</th><th>created</th><th>messages kept</th><th>processed</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>dead letters <span id="dead-count" class="muted"></span></h2>
<p class="actions"><button id="requeue-all" type="button">requeue all</button>
<button id="purge-all" type="button" class="danger">purge all</button>
<span id="action-result" role="status"></span></p>
<table id="dead-letters" class="figures"><thead><tr><th>id</th><th>appended</th><th>attempts</th><th>error</th>
<th>data</th><th></th></tr></thead><tbody></tbody></table></section>
"""


def overview_page(base: str, static: str, refresh: float) -> str:
    """The overview's HTML; ``base`` is the dashboard's root URL (ending in ``/``), ``static`` its assets' URL."""
    return _PAGE.format(title='minibatch dashboard', page='overview', base=escape(base), static=escape(static),
                        refresh=refresh, extra='', heading='', body=_OVERVIEW)


def stream_page(base: str, static: str, refresh: float, name: str) -> str:
    """The HTML of stream ``name``'s page (the name is escaped wherever it appears)."""
    return _PAGE.format(title=f'{escape(name)} · minibatch dashboard', page='stream', base=escape(base),
                        static=escape(static), refresh=refresh, extra=f' data-stream="{escape(name)}"',
                        heading=f' / <span id="stream-name">{escape(name)}</span>', body=_STREAM)
