/* minibatch dashboard: fills the overview and stream pages from the JSON API and keeps them current.
 *
 * Hand-written, no dependencies, no build step. The page says where the API is
 * (data-base), how often to poll it (data-refresh, seconds) and which page it is
 * (data-page, data-stream). Every value from the server is written with
 * textContent, never as HTML. Charts are inline SVG drawn here.
 */
(function () {
  'use strict';

  var body = document.body;
  var base = body.dataset.base;
  var refresh = Math.max(100, parseFloat(body.dataset.refresh || '2') * 1000);
  var page = body.dataset.page;
  var streamName = body.dataset.stream;
  var SVG = 'http://www.w3.org/2000/svg';
  var mode = 'read-only';
  var token = null;

  try { token = window.sessionStorage.getItem('minibatch-dashboard-token'); } catch (e) { token = null; }

  // -- formatting ------------------------------------------------------------
  function number(value) {
    return (value === null || value === undefined) ? '-' : Number(value).toLocaleString('en-US');
  }
  function rate(value) { return Number(value || 0).toFixed(1); }
  function duration(seconds) {
    seconds = Math.max(0, Math.round(Number(seconds) || 0));
    if (seconds < 60) { return seconds + 's'; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + 'm ' + (seconds % 60) + 's'; }
    if (seconds < 86400) { return Math.floor(seconds / 3600) + 'h ' + Math.floor((seconds % 3600) / 60) + 'm'; }
    return Math.floor(seconds / 86400) + 'd ' + Math.floor((seconds % 86400) / 3600) + 'h';
  }
  function ago(iso, now) {
    if (!iso) { return 'never'; }
    return duration(now - Date.parse(iso) / 1000) + ' ago';
  }
  function text(node, value) {
    var s = String(value);
    if (node.textContent !== s) { node.textContent = s; }
  }
  function cell(row, cls, value) {
    var td = row.querySelector('td.' + cls);
    if (!td) { td = document.createElement('td'); td.className = cls; row.appendChild(td); }
    text(td, value);
    return td;
  }
  function api(path) { return base + 'api/' + path; }
  function streamPath(name) { return 'streams/' + encodeURIComponent(name); }

  // -- the chart: backlog and rate over the history span ---------------------
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    return node;
  }
  function line(samples, index, width, height, start, span, cls) {
    var top = 0;
    samples.forEach(function (s) { top = Math.max(top, s[index]); });
    var points = samples.map(function (s) {
      var x = Math.max(0, Math.min(width, (s[0] - start) / span * width));
      var y = height - 2 - (top > 0 ? s[index] / top * (height - 4) : 0);
      return x.toFixed(1) + ',' + y.toFixed(1);
    });
    return {node: svg('polyline', {'class': cls, points: points.join(' ')}), top: top};
  }
  function chart(container, samples, now, span, width, height, labels) {
    var start = now - span;
    var root = svg('svg', {viewBox: '0 0 ' + width + ' ' + height, width: width, height: height,
                           role: 'img', 'class': 'chart-svg'});
    root.appendChild(svg('rect', {x: 0, y: 0, width: width, height: height, 'class': 'chart-bg'}));
    var backlog = line(samples, 1, width, height, start, span, 'line-backlog');
    var speed = line(samples, 2, width, height, start, span, 'line-rate');
    root.appendChild(backlog.node);
    root.appendChild(speed.node);
    var title = svg('title', {});
    title.textContent = samples.length + ' samples; backlog up to ' + number(Math.round(backlog.top)) +
      ', rate up to ' + rate(speed.top) + '/s';
    root.appendChild(title);
    if (labels) {
      var a = svg('text', {x: 4, y: 12, 'class': 'label-backlog'});
      a.textContent = 'backlog max ' + number(Math.round(backlog.top));
      var b = svg('text', {x: width - 4, y: 12, 'class': 'label-rate', 'text-anchor': 'end'});
      b.textContent = 'rate max ' + rate(speed.top) + '/s';
      var c = svg('text', {x: 4, y: height - 4, 'class': 'label-time'});
      c.textContent = '-' + Math.round(span / 60) + ' min';
      var d = svg('text', {x: width - 4, y: height - 4, 'class': 'label-time', 'text-anchor': 'end'});
      d.textContent = 'now';
      [a, b, c, d].forEach(function (n) { root.appendChild(n); });
    }
    container.replaceChildren(root);
  }

  // -- the header: store, mode, last update, errors ---------------------------
  function header(data) {
    mode = data.mode;
    text(document.getElementById('store'), data.store);
    text(document.getElementById('mode'), mode === 'read-only' ? 'read-only' :
         mode === 'token' ? 'actions need the token' : 'actions allowed');
    text(document.getElementById('updated'), new Date(data.time).toLocaleTimeString());
  }
  function problem(message) { text(document.getElementById('error'), message || ''); }

  function getJSON(path) {
    return fetch(api(path), {headers: {Accept: 'application/json'}, cache: 'no-store'}).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(data.error || ('HTTP ' + r.status)); }
        return data;
      });
    });
  }

  // -- the overview -----------------------------------------------------------
  var COLUMNS = [['backlog', number], ['in_flight', number], ['processed', number], ['failed', number],
                 ['dead', number], ['rate', rate], ['oldest_age', duration], ['consumers_alive', number]];

  function overview(data) {
    var tbody = document.querySelector('#streams tbody');
    var now = Date.parse(data.time) / 1000;
    var seen = {};
    data.streams.forEach(function (s) {
      seen[s.name] = true;
      var row = tbody.querySelector('tr[data-stream="' + CSS.escape(s.name) + '"]');
      if (!row) {
        row = document.createElement('tr');
        row.dataset.stream = s.name;
        var name = document.createElement('td');
        name.className = 'name';
        var link = document.createElement('a');
        link.href = base + streamPath(s.name);
        link.textContent = s.name;
        name.appendChild(link);
        row.appendChild(name);
        tbody.appendChild(row);
      }
      COLUMNS.forEach(function (c) {
        var td = cell(row, c[0], c[0] === 'oldest_age' && !s.backlog ? '-' : c[1](s[c[0]]));
        td.classList.toggle('alert', (c[0] === 'dead' && s.dead > 0) ||
                            (c[0] === 'consumers_alive' && s.backlog > 0 && !s.consumers_alive));
      });
      var spark = row.querySelector('td.chart') || cell(row, 'chart', '');
      chart(spark, s.history, now, data.span, 160, 28, false);
    });
    Array.prototype.forEach.call(tbody.querySelectorAll('tr'), function (row) {
      if (!seen[row.dataset.stream]) { row.remove(); }
    });
    document.getElementById('empty').hidden = data.streams.length > 0;
  }

  // -- the stream page --------------------------------------------------------
  var CARDS = [['backlog', 'backlog', number], ['in_flight', 'in flight', number], ['processed', 'processed', number],
               ['failed', 'failed', number], ['dead', 'dead', number], ['rate', 'rate/s', rate],
               ['oldest_age', 'oldest waiting', duration], ['consumers_alive', 'consumers alive', number],
               ['windows', 'windows', number]];

  function rows(tbody, items, key, fill) {
    var keep = {};
    items.forEach(function (item, i) {
      var id = String(item[key]);
      keep[id] = true;
      var row = tbody.querySelector('tr[data-id="' + CSS.escape(id) + '"]');
      if (!row) { row = document.createElement('tr'); row.dataset.id = id; }
      if (tbody.children[i] !== row) { tbody.insertBefore(row, tbody.children[i] || null); }
      fill(row, item);
    });
    Array.prototype.forEach.call(tbody.querySelectorAll('tr'), function (row) {
      if (!keep[row.dataset.id]) { row.remove(); }
    });
  }

  function stream(data) {
    var now = Date.parse(data.time) / 1000;
    var cards = document.getElementById('figures');
    CARDS.forEach(function (c) {
      var card = cards.querySelector('div.' + c[0]);
      if (!card) {
        card = document.createElement('div');
        card.className = 'card ' + c[0];
        var label = document.createElement('span');
        label.className = 'label';
        label.textContent = c[1];
        var value = document.createElement('span');
        value.className = 'value';
        card.appendChild(value);
        card.appendChild(label);
        cards.appendChild(card);
      }
      var v = data.figures[c[0]];
      text(card.querySelector('.value'), c[0] === 'oldest_age' && !data.figures.backlog ? '-' : c[2](v));
    });
    chart(document.getElementById('chart'), data.history, now, data.span, 720, 160, true);
    var groups = data.groups || [];
    document.getElementById('groups-section').hidden = groups.length === 0;
    rows(document.querySelector('#groups tbody'), groups, 'group', function (row, g) {
      cell(row, 'group', g.group);
      cell(row, 'start', g.start || '');
      cell(row, 'lag', number(g.lag));
      cell(row, 'lag_seconds', g.lag ? duration(g.lag_seconds) : '-');
      cell(row, 'in_flight', number(g.in_flight || 0));
      cell(row, 'dead', number(g.dead || 0)).classList.toggle('alert', g.dead > 0);
      cell(row, 'consumers_alive', number(g.consumers_alive || 0))
        .classList.toggle('alert', g.lag > 0 && !g.consumers_alive);
      cell(row, 'rate', rate(g.rate));
    });
    rows(document.querySelector('#consumers tbody'), data.consumers, 'id', function (row, c) {
      cell(row, 'id', c.id);
      cell(row, 'host', c.host || '');
      cell(row, 'pid', c.pid || '');
      cell(row, 'state', (c.alive ? '' : 'silent, ') + (c.state || ''));
      cell(row, 'rate', c.alive ? rate(c.rate) : '-');
      cell(row, 'in_flight', number(c.in_flight || 0));
      cell(row, 'processed', number(c.processed || 0));
      cell(row, 'failed', number(c.failed || 0));
      cell(row, 'seen', ago(c.seen, now));
      row.classList.toggle('muted', !c.alive);
    });
    rows(document.querySelector('#windows tbody'), data.windows, 'id', function (row, w) {
      cell(row, 'id', w.id);
      cell(row, 'created', ago(w.created, now));
      cell(row, 'size', w.size === null ? '-' : number(w.size));
      cell(row, 'processed', w.processed ? 'yes' : 'in flight');
    });
    rows(document.querySelector('#dead-letters tbody'), data.dead_letters, 'id', function (row, m) {
      cell(row, 'id', m.id);
      cell(row, 'created', ago(m.created, now));
      cell(row, 'attempts', m.attempts);
      cell(row, 'error', lastLine(m.error)).title = m.error || '';
      cell(row, 'data', JSON.stringify(m.data));
      if (!row.querySelector('td.buttons')) {
        var td = cell(row, 'buttons', '');
        td.appendChild(button('requeue', 'requeue', function () { act('requeue', [m.id]); }));
        td.appendChild(button('purge', 'purge danger', function () { act('purge', [m.id]); }));
      }
    });
    text(document.getElementById('dead-count'), '(' + data.figures.dead + ')');
    var writable = mode !== 'read-only';
    Array.prototype.forEach.call(document.querySelectorAll('button'), function (b) {
      b.disabled = !writable;
      b.title = writable ? '' : 'read-only: start the dashboard with --allow-write';
    });
  }

  function lastLine(error) {
    var lines = String(error || '').split('\n').filter(function (l) { return l.trim(); });
    return lines.length ? lines[lines.length - 1].trim() : '';
  }

  function button(label, cls, onclick) {
    var b = document.createElement('button');
    b.type = 'button';
    b.className = cls;
    b.textContent = label;
    b.addEventListener('click', onclick);
    return b;
  }

  function askToken(action) {
    var given = window.prompt('This dashboard needs its token to ' + action + ':') || null;
    try { window.sessionStorage.setItem('minibatch-dashboard-token', given || ''); } catch (e) { /* no storage */ }
    return given;
  }

  function act(action, ids, retried) {
    if (action === 'purge') {
      var what = ids ? ids.length + ' dead letter(s)' : 'every dead letter';
      if (!window.confirm('Delete ' + what + ' of ' + streamName + ' for good?')) { return; }
    }
    if (mode === 'token' && !token) {
      token = askToken(action);
      if (!token) { return; }
    }
    var headers = {Accept: 'application/json'};
    var options = {method: 'POST', headers: headers, cache: 'no-store'};
    if (ids) { headers['Content-Type'] = 'application/json'; options.body = JSON.stringify({ids: ids}); }
    if (token) { headers.Authorization = 'Bearer ' + token; }
    var result = document.getElementById('action-result');
    fetch(api(streamPath(streamName) + '/dead-letters/' + action), options).then(function (r) {
      return r.json().then(function (data) {
        if (r.status === 403 && mode === 'token' && !retried) {  // a wrong token: ask again, once
          token = askToken(action);
          if (token) { return act(action, ids, true); }
        }
        text(result, r.ok ? action + 'd ' + data[action + 'd'] : data.error);
        result.className = r.ok ? '' : 'error';
        return update();
      });
    }).catch(function (e) { text(result, String(e)); result.className = 'error'; });
  }

  // -- the loop ---------------------------------------------------------------
  function update() {
    var path = page === 'stream' ? streamPath(streamName) : 'overview';
    return getJSON(path).then(function (data) {
      header(data);
      if (page === 'stream') { stream(data); } else { overview(data); }
      problem('');
    }).catch(function (e) { problem('cannot update: ' + e.message); });
  }

  function loop() { update().then(function () { window.setTimeout(loop, refresh); }); }

  if (page === 'stream') {
    document.getElementById('requeue-all').addEventListener('click', function () { act('requeue', null); });
    document.getElementById('purge-all').addEventListener('click', function () { act('purge', null); });
  }
  loop();
}());
