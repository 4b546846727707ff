// The dashboard page: one HTML document with its CSS and script inline, so it works with no network
// beyond the dashboard itself. The script polls /api/state and redraws; curves are inline SVG.

const CSS = `
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e3e6eb; --ok:#16803c; --warn:#b54708; --bad:#c0262d; --accent:#2b59c3; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:16px; align-items:baseline; padding:14px 20px; background:#1d2330; color:#fff; }
header h1 { margin:0; font-size:18px; }
header .meta { color:#c6cbd6; font-size:13px; }
main { padding:16px 20px; display:grid; gap:16px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; overflow-x:auto; }
h2 { margin:0 0 8px; font-size:15px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:middle; white-space:nowrap; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.id { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px; max-width:300px; overflow:hidden; text-overflow:ellipsis; display:inline-block; vertical-align:bottom; }
.state { font-weight:600; font-size:12px; }
.RUNNING, .SERVING { color:var(--ok); } .COMPLETED { color:var(--accent); } .FAILED, .DOWN, .NOT_SERVING, .TIMED_OUT { color:var(--bad); } .CANCELLED, .TERMINATED, .UNKNOWN { color:var(--warn); }
.bar { width:80px; height:8px; background:var(--line); border-radius:4px; overflow:hidden; display:inline-flex; vertical-align:middle; margin-right:6px; }
.bar span { height:100%; } .bar .done { background:var(--accent); } .bar .failed { background:var(--bad); } .bar .running { background:#8fb0f2; }
button { font:inherit; font-size:12px; padding:2px 9px; border-radius:5px; border:1px solid #b9c0cc; background:#fff; cursor:pointer; }
button:hover:enabled { background:#eef2fb; }
button:disabled { color:#a0a6b1; cursor:not-allowed; background:#f3f4f6; }
#notice { padding:8px 12px; border-radius:6px; display:none; }
#notice.show { display:block; } #notice.ok { background:#e7f5ec; color:var(--ok); } #notice.err { background:#fdecec; color:var(--bad); }
#actions-off { background:#fff6e5; color:var(--warn); border:1px solid #f5d9a8; padding:8px 12px; border-radius:6px; display:none; }
.muted { color:var(--muted); }
svg.curve { display:block; }
svg.curve path { fill:none; stroke:var(--accent); stroke-width:1.5; }
svg.curve text { font-size:9px; fill:var(--muted); }
a { color:var(--accent); }
.prom-error { color:var(--bad); }
h2 .muted { font-weight:400; font-size:12px; }
`;

const SCRIPT = `
'use strict';
const POLL_MS = Number(document.body.dataset.pollMs);
let allowActions = false;
// The actions token comes in the URL's fragment, which browsers never send (so no server or proxy logs it);
// it is kept in this browser's storage for this dashboard, and taken out of the address bar.
const TOKEN_KEY = 'noisesearch-dashboard-token';
const tokenInUrl = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (tokenInUrl) {
  localStorage.setItem(TOKEN_KEY, decodeURIComponent(tokenInUrl[1]));
  history.replaceState(null, '', location.pathname + location.search);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v; else if (k.startsWith('on')) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
const fmt = (n, digits) => n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: digits ?? 0 });
// Log-probabilities near 0 would all read -0.0000 at fixed precision: small ones keep their digits.
const score = (s) => s === null || s === undefined ? '–' : s !== 0 && Math.abs(s) < 1e-3 ? Number(s).toExponential(3) : Number(s).toFixed(4);
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  if (s < 90) return Math.round(s) + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}
function link(text, href, cls) { return href ? el('a', { href, target: '_blank', rel: 'noopener', class: cls }, text) : el('span', { class: cls }, text); }

const SVG = 'http://www.w3.org/2000/svg';
function curve(points) {
  const w = 180, h = 44, pad = 2;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'curve'); svg.setAttribute('width', w); svg.setAttribute('height', h); svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
  if (points.length === 0) return el('span', { class: 'muted' }, 'no score yet');
  const xs = points.map((p) => p.nfe), ys = points.map((p) => p.score);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (w - 2 * pad - 44), Y = (y) => h - 12 - ((y - y0) / (y1 - y0)) * (h - 16);
  // The best score only changes at a new best: a step curve, flat between improvements.
  let d = 'M' + X(points[0].nfe).toFixed(1) + ',' + Y(points[0].score).toFixed(1);
  for (let i = 1; i < points.length; i++) d += 'H' + X(points[i].nfe).toFixed(1) + 'V' + Y(points[i].score).toFixed(1);
  const path = document.createElementNS(SVG, 'path'); path.setAttribute('d', d); svg.append(path);
  const label = (x, y, text, anchor) => { const t = document.createElementNS(SVG, 'text'); t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('text-anchor', anchor || 'start'); t.textContent = text; svg.append(t); };
  label(w - 42, 9, score(ys[ys.length - 1]));
  label(w - 42, h - 13, score(y0));
  label(pad, h - 1, fmt(x0) + ' NFE'); label(w - 46, h - 1, fmt(x1), 'end');
  return svg;
}

function bar(parts, total) {
  return el('span', { class: 'bar' }, parts.map(([cls, n]) => el('span', { class: cls, style: 'width:' + (total > 0 ? (100 * n) / total : 0) + '%' })));
}

async function post(action, body) {
  const notice = document.getElementById('notice');
  try {
    const headers = { 'content-type': 'application/json', authorization: 'Bearer ' + (localStorage.getItem(TOKEN_KEY) || '') };
    const res = await fetch('/api/actions/' + action, { method: 'POST', headers, body: JSON.stringify(body) });
    const answer = await res.json();
    notice.textContent = res.ok ? answer.message : 'refused (' + res.status + '): ' + answer.error;
    notice.className = 'show ' + (res.ok ? 'ok' : 'err');
  } catch (error) {
    notice.textContent = 'the dashboard did not answer: ' + error.message; notice.className = 'show err';
  }
  refresh();
}
function actionButton(label, action, workflowId, extra) {
  const title = allowActions ? '' : 'start the dashboard with --allow-actions to enable';
  return el('button', { 'data-action': action, disabled: !allowActions, title, onclick: () => {
    if (action === 'budget') {
      const value = prompt('New budget for ' + workflowId + ' (NFEs)', extra || '');
      if (value === null) return;
      post('budget', { workflowId, budget: Number(value) });
    } else if (action !== 'cancel' || confirm('Cancel ' + workflowId + '?')) post(action, { workflowId });
  } }, label);
}

function campaignsTable(state) {
  if (state.campaigns.length === 0) return el('p', { class: 'muted' }, 'No campaigns in this namespace.');
  return el('table', {},
    el('tr', {}, el('th', {}, 'campaign'), el('th', {}, 'state'), el('th', {}, 'searches: done / failed / running / total'), el('th', { class: 'num' }, 'NFEs'), el('th', { class: 'num' }, 'ETA'), el('th', {}, 'report'), el('th', {}, '')),
    state.campaigns.map((c) => {
      const p = c.progress;
      return el('tr', { 'data-workflow-id': c.workflowId, class: 'campaign' },
        el('td', {}, link(c.workflowId, c.temporalUrl, 'id')),
        el('td', { class: 'state ' + c.status }, c.status + (p ? ' (' + p.phase + ')' : '')),
        el('td', {}, p ? [bar([['done', p.done], ['failed', p.failed], ['running', p.running]], p.total), fmt(p.done) + ' / ' + fmt(p.failed) + ' / ' + fmt(p.running) + ' / ' + fmt(p.total)] : el('span', { class: 'muted' }, '–')),
        el('td', { class: 'num nfe', 'data-nfe': c.nfeLive ?? '' }, fmt(c.nfeLive)),
        el('td', { class: 'num' }, duration(c.etaSeconds)),
        el('td', {}, c.report ? link('report', c.report) : el('span', { class: 'muted' }, '–')),
        el('td', {}, c.status === 'RUNNING' ? actionButton('Cancel', 'cancel', c.workflowId) : null));
    }));
}

// Text nodes only (el), so that an error message from a workflow is shown, never run.
function stuckList(state) {
  if (state.stuck.length === 0) return el('p', { class: 'muted' }, 'None: no running workflow has a workflow task failing again and again.');
  return el('table', {},
    el('tr', {}, el('th', {}, 'workflow'), el('th', { class: 'num' }, 'attempts'), el('th', {}, 'first error')),
    state.stuck.map((s) => el('tr', { class: 'stuck', 'data-workflow-id': s.workflowId },
      el('td', {}, el('span', { class: 'id' }, s.workflowId)),
      el('td', { class: 'num' }, fmt(s.attempts)),
      el('td', {}, s.firstError))));
}

function searchesTable(state) {
  if (state.searches.length === 0) return el('p', { class: 'muted' }, 'No searches in this namespace.');
  return el('table', {},
    el('tr', {}, el('th', {}, 'search'), el('th', {}, 'state'), el('th', {}, 'algorithm'), el('th', {}, 'model / verifier'), el('th', { class: 'num' }, 'NFEs spent / budget'), el('th', { class: 'num' }, 'NFE/s'), el('th', { class: 'num' }, 'best score'), el('th', {}, 'best score vs NFE'), el('th', {}, '')),
    state.searches.map((s) => {
      const running = s.status === 'RUNNING';
      return el('tr', { 'data-workflow-id': s.workflowId, class: 'search' },
        el('td', {}, link(s.workflowId, s.temporalUrl, 'id'), s.parentId ? el('div', { class: 'muted' }, 'in ' + s.parentId) : null),
        el('td', { class: 'state ' + s.status }, s.status + (s.stopRequested ? ' (stopping)' : s.phase && running ? ' (' + s.phase + ', round ' + s.round + ')' : '')),
        el('td', {}, s.algorithm ?? '–'),
        el('td', {}, (s.model ?? '–') + ' / ' + (s.verifier ?? '–')),
        el('td', { class: 'num nfe', 'data-nfe': s.nfeSpent ?? '' }, s.budget ? [bar([['done', s.nfeSpent]], s.budget), fmt(s.nfeSpent) + ' / ' + fmt(s.budget)] : fmt(s.nfeSpent)),
        el('td', { class: 'num' }, running ? fmt(s.nfeRate, 1) : '–'),
        el('td', { class: 'num' }, score(s.bestScore)),
        el('td', {}, curve(s.curve)),
        el('td', {}, running ? [actionButton('Stop', 'stop', s.workflowId), ' ', actionButton('Budget', 'budget', s.workflowId, s.budget), ' ', actionButton('Cancel', 'cancel', s.workflowId)] : null));
    }));
}

function fleetTable(state) {
  if (state.fleet.length === 0) return el('p', { class: 'muted' }, 'No fleet given (--fleet), and no embedded model server running.');
  return el('table', {},
    el('tr', {}, el('th', {}, 'endpoint'), el('th', {}, 'health'), el('th', { class: 'num' }, 'health check'), el('th', {}, 'model'), el('th', {}, 'verifiers'), el('th', { class: 'num' }, 'max batch'), el('th', { class: 'num' }, 'max concurrency'), el('th', {}, 'server')),
    state.fleet.map((e) => el('tr', { 'data-endpoint': e.address },
      el('td', { class: 'id' }, e.address),
      el('td', { class: 'state ' + e.health, title: e.error || '' }, e.health),
      el('td', { class: 'num' }, e.latencyMs === null ? '–' : e.latencyMs + ' ms'),
      el('td', {}, e.model ?? '–'),
      el('td', {}, e.verifiers.join(', ') || '–'),
      el('td', { class: 'num' }, fmt(e.maxBatch)),
      el('td', { class: 'num' }, fmt(e.maxConcurrency)),
      el('td', { class: 'muted' }, e.serverId ?? e.error ?? '–'))));
}

// Rates and latencies span orders of magnitude (a verifier's microseconds, an endpoint's seconds): three significant digits.
const sig = (n) => n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumSignificantDigits: 3 });
function metricCell(value, metric, unit) {
  const text = value === null || value === undefined ? '–' : unit === 'ms' ? sig(value * 1000) + ' ms' : unit === '/s' ? sig(value) + '/s' : fmt(value);
  return el('td', { class: 'num', 'data-metric': metric, 'data-value': value ?? '' }, text);
}
function metricsOff(m, what) {
  if (!m.prometheus) return el('p', { class: 'muted off' }, "Start the dashboard with --prometheus URL (a Prometheus that scrapes the workers' --metrics) to see " + what + '.');
  if (m.error) return el('p', { class: 'prom-error' }, m.error);
  return null;
}

function trafficTable(state) {
  const m = state.metrics;
  const off = metricsOff(m, "each endpoint's requests/s, latency percentiles, in-flight and queued calls, and the NFE burn rate");
  if (off) return off;
  const burn = el('p', { id: 'nfe-burn' }, 'NFE burn rate, the whole fleet: ',
    el('b', { 'data-metric': 'nfeLogicalPerSecond', 'data-value': m.nfeLogicalPerSecond ?? '' }, sig(m.nfeLogicalPerSecond)), ' logical/s (what budgets count), ',
    el('b', { 'data-metric': 'nfeExecutedPerSecond', 'data-value': m.nfeExecutedPerSecond ?? '' }, sig(m.nfeExecutedPerSecond)), ' executed/s (what the servers ran)');
  if (m.endpoints.length === 0) return [burn, el('p', { class: 'muted' }, 'Prometheus has no endpoint series: does it scrape a worker started with --metrics?')];
  return [burn, el('table', {},
    el('tr', {}, el('th', {}, 'endpoint'), el('th', { class: 'num' }, 'requests/s'), el('th', { class: 'num' }, 'p50 latency'), el('th', { class: 'num' }, 'p95 latency'), el('th', { class: 'num' }, 'in flight'), el('th', { class: 'num' }, 'queued')),
    m.endpoints.map((e) => el('tr', { 'data-endpoint-metrics': e.endpoint },
      el('td', { class: 'id' }, e.endpoint),
      metricCell(e.requestsPerSecond, 'requestsPerSecond', '/s'),
      metricCell(e.p50Seconds, 'p50Seconds', 'ms'),
      metricCell(e.p95Seconds, 'p95Seconds', 'ms'),
      metricCell(e.inFlight, 'inFlight'),
      metricCell(e.queued, 'queued'))))];
}

function verifiersTable(state) {
  const m = state.metrics;
  const off = metricsOff(m, "each verifier's latency per sample and samples scored per second");
  if (off) return off;
  if (m.verifiers.length === 0) return el('p', { class: 'muted' }, 'Prometheus has no verifier series: does it scrape a worker started with --metrics?');
  return el('table', {},
    el('tr', {}, el('th', {}, 'verifier'), el('th', { class: 'num' }, 'p50 per sample'), el('th', { class: 'num' }, 'p95 per sample'), el('th', { class: 'num' }, 'samples scored/s')),
    m.verifiers.map((v) => el('tr', { 'data-verifier': v.verifier },
      el('td', {}, v.verifier),
      metricCell(v.p50Seconds, 'p50Seconds', 'ms'),
      metricCell(v.p95Seconds, 'p95Seconds', 'ms'),
      metricCell(v.samplesPerSecond, 'samplesPerSecond', '/s'))));
}

function render(state) {
  allowActions = state.allowActions;
  document.getElementById('actions-off').style.display = allowActions ? 'none' : 'block';
  const running = state.searches.filter((s) => s.status === 'RUNNING').length;
  document.getElementById('summary').textContent = state.namespace + ' · ' + running + ' searches running · ' + fmt(state.nfeRate, 1) + ' NFE/s · updated ' + new Date(state.generatedAt).toLocaleTimeString();
  const ui = document.getElementById('temporal-ui');
  ui.replaceChildren(state.temporalUi ? link('Temporal UI', state.temporalUi) : '');
  document.getElementById('stuck').replaceChildren(stuckList(state));
  document.getElementById('campaigns').replaceChildren(campaignsTable(state));
  document.getElementById('searches').replaceChildren(searchesTable(state));
  document.getElementById('fleet').replaceChildren(fleetTable(state));
  const traffic = document.getElementById('traffic');
  traffic.replaceChildren(...[trafficTable(state)].flat());
  traffic.dataset.evaluatedAt = state.metrics.evaluatedAt ?? '';
  document.getElementById('verifiers').replaceChildren(verifiersTable(state));
  document.getElementById('verifiers').dataset.evaluatedAt = state.metrics.evaluatedAt ?? '';
  document.getElementById('metrics-source').textContent = state.metrics.prometheus ? 'from ' + state.metrics.prometheus + ', over the last minute' : '';
  const errors = document.getElementById('errors');
  errors.textContent = state.errors.join('; '); errors.style.display = state.errors.length ? 'block' : 'none';
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const res = await fetch('/api/state', { cache: 'no-store' });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    render(await res.json());
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (error) {
    const errors = document.getElementById('errors');
    errors.textContent = 'the dashboard did not answer: ' + error.message; errors.style.display = 'block';
  }
  timer = setTimeout(refresh, POLL_MS);
}
refresh();
`;

export function renderPage(options: { pollMs: number }): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>noisesearch dashboard</title>
<style>${CSS}</style>
</head>
<body data-poll-ms="${Math.round(options.pollMs)}">
<header><h1>noisesearch</h1><span class="meta" id="summary">loading…</span><span class="meta" id="temporal-ui"></span></header>
<main>
<div id="actions-off">Actions are disabled: this dashboard was started without <code>--allow-actions</code>, so it only watches.</div>
<div id="notice" role="status"></div>
<div id="errors" class="muted" style="display:none"></div>
<section><h2>Stuck workflows <span class="muted">(workflow tasks that keep failing; Temporal retries them)</span></h2><div id="stuck"></div></section>
<section><h2>Campaigns</h2><div id="campaigns"></div></section>
<section><h2>Searches</h2><div id="searches"></div></section>
<section><h2>Fleet</h2><div id="fleet"></div></section>
<section><h2>Throughput and latency <span class="muted" id="metrics-source"></span></h2><div id="traffic"></div></section>
<section><h2>Verifiers</h2><div id="verifiers"></div></section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
