// The operators' dashboard against real parts: a Temporal dev server, the gmm model server, a `noisesearch
// worker` with --metrics, a Prometheus scraping it, a campaign and a long search running; the page is driven
// in headless Chromium. What the page claims is checked against Temporal (progress queries, results,
// descriptions) and against PromQL the test runs on Prometheus itself, never against the dashboard's code.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { chromium, type Browser, type Page } from 'playwright-core';
import { campaignSize, type CampaignInput } from '../src/campaign/plan';
import { resolveCampaign } from '../src/campaign/spec';
import { PROMETHEUS_QUERIES } from '../src/dashboard/prometheus';
import { ACTIONS_DISABLED, startDashboard, TOKEN_REFUSED, type Dashboard } from '../src/dashboard/server';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { Fleet } from '../src/fleet/client';
import type { ModelInfo } from '../src/search/types';
import { startCampaign, startSearch } from '../src/temporal/client';
import { installQuietRuntime } from '../src/temporal/worker';
import { progressQuery, type searchWorkflow } from '../workflows/search';
import { stopChild, stopServer, tempDir, uniqueId, waitUntil, withModelServer, withTemporal } from './helpers';
import { freePort, withPrometheus, type PromSample, type RunningPrometheus } from './prometheus';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const TEMPORAL_UI = 'http://127.0.0.1:8233';
// The actions token the operator gives in a file (--action-token-file); the page gets it from the URL's fragment.
const ACTION_TOKEN = 'dashboard-test-token-5d1f0a9c7b';
// The committed docs/dashboard.png is written only when asked (DASHBOARD_SCREENSHOT=docs/dashboard.png),
// so that a test run leaves the repository clean: by default the screenshot goes to a temporary folder.
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT ? path.resolve(process.env.DASHBOARD_SCREENSHOT) : path.join(tempDir('dashboard-shot'), 'dashboard.png');

/** A generation's NFEs with the model's default sampler (Heun: 2 s - 1): a random search spends whole generations. */
function generationNfe(model: ModelInfo): number {
  return model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
}

/** `noisesearch dashboard` as an operator starts it; resolves with the URL it prints. */
function spawnDashboard(args: string[], home: string): Promise<{ child: ChildProcess; url: string; stderr: () => string }> {
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'dashboard', ...args], {
    env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_DASHBOARD_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the dashboard printed no URL in 20 s; stderr: ${err}`)), 20_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const url = /dashboard (http:\/\/\S+)/.exec(out)?.[1];
      if (url) {
        clearTimeout(timer);
        resolve({ child, url, stderr: () => err });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the dashboard exited (${code}): ${err}`));
    });
  });
}

function runCli(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stderr })));
}

/** What the page shows in its Prometheus sections at one moment: each cell's number and its text, by row. */
interface MetricsOnPage {
  evaluatedAt: number;
  rows: Record<string, Record<string, { value: number | null; text: string }>>;
}

function metricsOnPage(page: Page): Promise<MetricsOnPage> {
  // One evaluate: the page redraws every poll, so cells read one by one could come from different states.
  return page.evaluate(() => {
    // Runs in the page; the tests compile without the DOM's types.
    const document = (globalThis as any).document;
    const rows: MetricsOnPage['rows'] = {};
    for (const row of document.querySelectorAll('tr[data-endpoint-metrics], tr[data-verifier]')) {
      const key: string = row.dataset.endpointMetrics ?? `verifier ${row.dataset.verifier}`;
      rows[key] = {};
      for (const cell of row.querySelectorAll('td[data-metric]')) rows[key][cell.dataset.metric] = { value: cell.dataset.value ? Number(cell.dataset.value) : null, text: cell.innerText };
    }
    return { evaluatedAt: Number(document.getElementById('traffic').dataset.evaluatedAt), rows };
  });
}

/** The number a cell's text shows, in the unit Prometheus gives (seconds for "ms" cells). */
function shown(text: string): number {
  const n = Number(/^[\d,.]+/.exec(text)?.[0].replaceAll(',', ''));
  return text.endsWith(' ms') ? n / 1000 : n;
}

async function pageNfe(page: Page, workflowId: string): Promise<number> {
  const value = await page.locator(`tr.search[data-workflow-id="${workflowId}"] td.nfe`).getAttribute('data-nfe', { timeout: 10_000 });
  return Number(value);
}

describe('the dashboard', { timeout: 150_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let fleet: Fleet;
  let model: ModelInfo;
  let worker: ChildProcess;
  let prometheus: RunningPrometheus;
  /** Where the worker serves /metrics, and a port where nothing listens (a Prometheus that is down). */
  let metricsAt: string;
  let closedPort: number;
  let browser: Browser;
  let dashboard: { child: ChildProcess; url: string; stderr: () => string };
  let watchOnly: Dashboard;
  let input: CampaignInput;
  let campaign: WorkflowHandle;
  let search: WorkflowHandle<typeof searchWorkflow>;
  const taskQueue = uniqueId('dashboard');
  const home = tempDir('dashboard-home');

  before(async () => {
    installQuietRuntime('ERROR');
    [metricsAt, closedPort] = [`127.0.0.1:${await freePort()}`, await freePort()];
    [temporal, server, browser, prometheus] = await Promise.all([
      withTemporal(),
      withModelServer(),
      chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] }),
      withPrometheus([metricsAt]),
    ]);
    fleet = new Fleet([server.address], { callDeadlineMs: 10_000 });
    model = await fleet.describe('gmm');
    // A worker as operators run it, exporting the endpoint and verifier histograms that the dashboard reads back from Prometheus.
    const workerLog = openSync(path.join(home, 'worker.log'), 'a');
    worker = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'worker', '--temporal', temporal.address, '--fleet', server.address, '--task-queue', taskQueue, '--metrics', metricsAt], {
      env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' },
      stdio: ['ignore', workerLog, workerLog],
    });
    // Serving /metrics means it is up: the workflows below then start with a worker ready for them, as the in-process one was.
    await prometheus.waitForScrape({ targets: [metricsAt] });

    // A campaign of two long searches, and a long search of its own: both run until the test acts on them.
    const dir = tempDir('dashboard-campaign');
    input = resolveCampaign(
      {
        name: 'dashboard',
        dataset: { kind: 'gmm-classes', classes: [4] },
        grid: { algorithms: [{ name: 'random', roundSize: 4 }], verifiers: ['gmm-oracle'], budgets: [60_000] },
        evaluation: ['gmm-classifier'],
        seeds: [0, 1],
        concurrency: 2,
        results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
      },
      model,
      path.join(home, 'campaigns'),
    );
    // The campaign as `noisesearch campaign run` records it, with a report written: the page links to it.
    mkdirSync(path.join(home, 'campaigns'), { recursive: true });
    mkdirSync(input.folder, { recursive: true });
    writeFileSync(path.join(home, 'campaigns', `${input.campaignId}.json`), JSON.stringify(input));
    writeFileSync(path.join(input.folder, 'report.html'), '<!doctype html><title>report</title><p>the campaign report</p>');

    // The dashboards start first, so that the curves they draw from successive progress queries begin at the start.
    const tokenFile = path.join(home, 'action-token');
    writeFileSync(tokenFile, `${ACTION_TOKEN}\n`);
    const common = ['--address', '127.0.0.1:0', '--temporal', temporal.address, '--fleet', server.address, '--temporal-ui', TEMPORAL_UI, '--poll-ms', '400'];
    [dashboard, watchOnly] = await Promise.all([
      spawnDashboard([...common, '--allow-actions', '--action-token-file', tokenFile, '--prometheus', prometheus.url], home),
      startDashboard({ client: temporal.env.client, namespace: 'default', fleet: [server.address], prometheus: `http://127.0.0.1:${closedPort}`, allowActions: false, host: '127.0.0.1', port: 0, pollMs: 400, campaignsDir: path.join(home, 'campaigns') }),
    ]);
    campaign = await startCampaign(temporal.env.client, input, { taskQueue });
    search = await startSearch(
      temporal.env.client,
      { model: 'gmm', condition: { classLabel: 7 }, algorithm: { name: 'random', roundSize: 4 }, verifiers: ['gmm-oracle'], budgetNfe: 60_000, seed: 5 },
      { taskQueue, workflowId: uniqueId('dash-search') },
    );
  });

  after(async () => {
    await stopChild(dashboard?.child);
    await watchOnly?.close();
    await browser?.close();
    await campaign?.cancel().catch(() => undefined);
    await search?.cancel().catch(() => undefined);
    await stopChild(worker);
    await prometheus?.stop();
    fleet?.close();
    await stopServer(server);
    await temporal?.stop();
  });

  it('refuses bad flags with one line and exit code 2', async () => {
    const shortToken = path.join(tempDir('dashboard-short-token'), 'token');
    writeFileSync(shortToken, 'short\n');
    const cases = [['--address', 'localhost'], ['--bogus'], ['--temporal-ui', 'ftp://x'], ['--prometheus', 'localhost:9090'], ['extra'],
      ['--action-token-file', shortToken], ['--allow-actions', '--action-token-file', '/nonexistent/token'], ['--allow-actions', '--action-token-file', shortToken]];
    const outcomes = await Promise.all(cases.map((args) => runCli(['dashboard', ...args])));
    for (const [i, { code, stderr }] of outcomes.entries()) {
      assert.equal(code, 2, `dashboard ${cases[i].join(' ')}: ${stderr}`);
      assert.equal(stderr.trim().split('\n').length, 1, stderr);
      assert.match(stderr, /^noisesearch dashboard: /);
    }
  });

  it('shows the running campaign and search live, the fleet, and links to Temporal and the report', async () => {
    const page = await browser.newPage({ viewport: { width: 1600, height: 760 } });
    // Nothing but the dashboard itself: no CDN, no fonts, no other host.
    const foreign: string[] = [];
    await page.route('**', (route) => {
      const url = route.request().url();
      if (url.startsWith(dashboard.url)) return route.continue();
      foreign.push(url);
      return route.abort('blockedbyclient');
    });
    await page.goto(dashboard.url);
    const campaignRow = page.locator(`tr.campaign[data-workflow-id="${input.campaignId}"]`);
    const searchRow = page.locator(`tr.search[data-workflow-id="${search.workflowId}"]`);
    await campaignRow.waitFor({ timeout: 20_000 });
    await searchRow.waitFor({ timeout: 20_000 });
    assert.match(await campaignRow.innerText(), new RegExp(`RUNNING[\\s\\S]*/ ${campaignSize(input)}`));
    assert.equal(await campaignRow.locator('a.id').getAttribute('href'), `${TEMPORAL_UI}/namespaces/default/workflows/${encodeURIComponent(input.campaignId)}`);

    // The NFE number advances between two reads; each is what Temporal reported and a whole number of generations.
    const g = generationNfe(model);
    const first = await waitUntil('a first NFE count on the page', async () => (await pageNfe(page, search.workflowId)) || null, 20_000);
    const second = await waitUntil('the NFE count to advance on the page', async () => {
      const n = await pageNfe(page, search.workflowId);
      return n > first ? n : null;
    }, 20_000);
    const live = await search.query(progressQuery);
    assert.ok(live && live.nfeSpent >= second, `Temporal says ${live?.nfeSpent} NFEs spent, the page ${second}`);
    assert.equal(first % g, 0);
    assert.equal(second % g, 0);
    // The campaign's children are listed with it, and the curve is drawn from the progress seen.
    await waitUntil('the campaign\'s searches on the page', async () => (await page.locator(`tr.search:has-text("in ${input.campaignId}")`).count()) === 2 || null, 20_000);
    await waitUntil('a best-score curve', async () => (await searchRow.locator('svg.curve path').count()) === 1 || null, 20_000);

    const fleetRow = page.locator(`tr[data-endpoint="${server.address}"]`);
    assert.match(await fleetRow.innerText(), /SERVING[\s\S]*gmm[\s\S]*gmm-oracle, gmm-classifier/);
    const reportHref = await campaignRow.locator('a', { hasText: 'report' }).getAttribute('href');
    const report = await page.request.get(new URL(reportHref!, dashboard.url).href);
    assert.match(await report.text(), /the campaign report/);
    assert.equal(await page.locator('#actions-off').isVisible(), false);
    assert.deepEqual(foreign, []);
    await page.close();
  });

  it("shows each endpoint's and verifier's rates and latencies as Prometheus computes them", async () => {
    const page = await browser.newPage();
    await page.goto(dashboard.url);
    // Until a rate window holds two scrapes of the worker's calls: the first shown, then compared.
    const onPage = await waitUntil('requests/s, p50/p95 latency for the endpoint and a verifier p95 on the page', async () => {
      const m = await metricsOnPage(page);
      const endpoint = m.rows[server.address];
      return endpoint?.requestsPerSecond.value && endpoint.p50Seconds.value && endpoint.p95Seconds.value && m.rows['verifier gmm-oracle']?.p95Seconds.value ? m : null;
    }, 40_000, 200);
    await page.close();
    // Every sample at or before that moment is in the TSDB once a scrape after it completed: the same PromQL
    // at the same moment then sees exactly what the dashboard saw.
    await prometheus.waitForScrape({ after: onPage.evaluatedAt * 1000 + 1, targets: [metricsAt] });
    const direct = async (expr: string): Promise<PromSample[]> => {
      const url = `${prometheus.url}/api/v1/query?query=${encodeURIComponent(expr)}&time=${onPage.evaluatedAt}`;
      const body = (await (await fetch(url, { signal: AbortSignal.timeout(10_000) })).json()) as { status: string; error?: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
      assert.equal(body.status, 'success', `${expr}: ${body.error}`);
      return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
    };
    const check = async (row: string, metric: string, expr: string) => {
      const expected = (await direct(expr))[0]?.value;
      const cell = onPage.rows[row][metric];
      assert.ok(Number.isFinite(expected) && expected > 0, `${expr} = ${expected}`);
      assert.ok(Math.abs(cell.value! - expected) <= 1e-9 * expected, `${row} ${metric}: the page has ${cell.value}, Prometheus ${expected} (${expr})`);
      // Shown to three significant digits.
      assert.ok(Math.abs(shown(cell.text) - expected) <= 0.005 * expected, `${row} ${metric}: the page shows "${cell.text}", Prometheus ${expected}`);
    };
    const endpoint = `endpoint="${server.address}"`;
    await check(server.address, 'requestsPerSecond', `sum(rate(noisesearch_endpoint_request_seconds_count{${endpoint}}[1m]))`);
    for (const q of [0.5, 0.95]) await check(server.address, `p${q * 100}Seconds`, `histogram_quantile(${q}, sum by (le) (rate(noisesearch_endpoint_request_seconds_bucket{${endpoint}}[1m])))`);
    // Every verifier that scored in the window, as Prometheus counts them, has its p95 on the page.
    const used = (await direct('sum by (verifier) (rate(noisesearch_verifier_seconds_count[1m])) > 0')).map((s) => s.metric.verifier);
    assert.ok(used.includes('gmm-oracle'), `verifiers scoring: ${used.join(', ')}`);
    for (const verifier of used) await check(`verifier ${verifier}`, 'p95Seconds', `histogram_quantile(0.95, sum by (le) (rate(noisesearch_verifier_seconds_bucket{verifier="${verifier}"}[1m])))`);
    // Every query the dashboard runs is one Prometheus accepts, over series the worker exports.
    for (const [name, expr] of Object.entries(PROMETHEUS_QUERIES)) assert.ok((await direct(expr)).length > 0, `${name} returned no series: ${expr}`);
  });

  it('says so when Prometheus is unreachable', async () => {
    const page = await browser.newPage();
    await page.goto(watchOnly.url);
    const error = page.locator('#traffic .prom-error');
    await error.waitFor({ timeout: 20_000 });
    assert.match(await error.innerText(), new RegExp(`^Prometheus at http://127\\.0\\.0\\.1:${closedPort} is unreachable`));
    // The rest of the page still works.
    await page.locator(`tr.search[data-workflow-id="${search.workflowId}"]`).waitFor({ timeout: 20_000 });
    await page.close();
  });

  it('refuses actions when not started with them: HTTP 403 and disabled buttons', async () => {
    const page = await browser.newPage();
    await page.goto(watchOnly.url);
    const stop = page.locator(`tr.search[data-workflow-id="${search.workflowId}"] button[data-action="stop"]`);
    await stop.waitFor({ timeout: 20_000 });
    assert.equal(await stop.isDisabled(), true);
    assert.equal(await page.locator('button[data-action]:enabled').count(), 0);
    assert.equal(await page.locator('#actions-off').isVisible(), true);
    await page.close();

    for (const action of ['stop', 'budget', 'cancel']) {
      const res = await fetch(new URL(`api/actions/${action}`, watchOnly.url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ workflowId: search.workflowId, budget: 100 }) });
      assert.equal(res.status, 403);
      assert.deepEqual(await res.json(), { error: ACTIONS_DISABLED });
    }
    const progress = await search.query(progressQuery);
    assert.equal(progress?.stopRequested, false, 'the refused stop did not reach the search');
    assert.notEqual(progress?.budget, 100);
  });

  it('refuses actions without the dashboard\'s token (403), whatever else the request gets right', async () => {
    for (const authorization of [undefined, 'Bearer not-the-token', `Bearer ${ACTION_TOKEN}x`, ACTION_TOKEN]) {
      const headers: Record<string, string> = { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) };
      const res = await fetch(new URL('api/actions/stop', dashboard.url), { method: 'POST', headers, body: JSON.stringify({ workflowId: search.workflowId }) });
      assert.equal(res.status, 403, String(authorization));
      assert.deepEqual(await res.json(), { error: TOKEN_REFUSED });
    }
    assert.equal((await search.query(progressQuery))?.stopRequested, false, 'no refused stop reached the search');
    // A page opened without the token shows the refusal when a button is pressed.
    const page = await browser.newPage();
    await page.goto(dashboard.url);
    await page.locator(`tr.search[data-workflow-id="${search.workflowId}"] button[data-action="stop"]`).click({ timeout: 20_000 });
    await page.locator('#notice.err').waitFor({ timeout: 10_000 });
    assert.match(await page.locator('#notice').innerText(), /refused \(403\): actions need this dashboard's token/);
    await page.close();
    // The file's token is never printed.
    assert.ok(!dashboard.stderr().includes(ACTION_TOKEN));
  });

  it('with --allow-actions and no token given, makes one and prints it once, on stderr, in the page\'s URL', async () => {
    const home = tempDir('dashboard-token');
    const started = await spawnDashboard(['--address', '127.0.0.1:0', '--temporal', temporal.address, '--fleet', server.address, '--allow-actions'], home);
    try {
      const lines = await waitUntil('the token line', async () => (started.stderr().includes('\n') ? started.stderr().trim().split('\n') : null), 10_000);
      assert.equal(lines.length, 1, started.stderr());
      const token = new RegExp(`^dashboard actions: open ${started.url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}#token=([A-Za-z0-9_-]{32}) \\(this token is not shown again\\)$`).exec(lines[0])?.[1];
      assert.ok(token, lines[0]);
      // The token gets an action past the 403: the missing workflow is the only complaint left.
      const res = await fetch(new URL('api/actions/stop', started.url), { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ workflowId: 'no-such-workflow' }) });
      assert.equal(res.status, 404);
    } finally {
      await stopChild(started.child);
    }
  });

  it('re-budgets and stops a search, and cancels a campaign, from the page', async () => {
    const page = await browser.newPage({ viewport: { width: 1600, height: 760 } });
    await page.goto(`${dashboard.url}#token=${ACTION_TOKEN}`);
    // The token leaves the address bar (and so bookmarks and screenshots) once the page has it.
    assert.equal(page.url(), dashboard.url);
    const searchRow = page.locator(`tr.search[data-workflow-id="${search.workflowId}"]`);
    // A new budget through the page's prompt, then one below what is spent, refused with the workflow's reason.
    page.once('dialog', (dialog) => void dialog.accept('70000'));
    await searchRow.locator('button[data-action="budget"]').click({ timeout: 20_000 });
    await page.locator('#notice.ok').waitFor({ timeout: 10_000 });
    assert.equal((await search.query(progressQuery))?.budget, 70_000);
    const refused = await fetch(new URL('api/actions/budget', dashboard.url), { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${ACTION_TOKEN}` }, body: JSON.stringify({ workflowId: search.workflowId, budget: 1 }) });
    assert.equal(refused.status, 409);
    assert.match(((await refused.json()) as { error: string }).error, /budget: 1 NFEs is below what is spent or committed/);

    await searchRow.locator('button[data-action="stop"]').click({ timeout: 20_000 });
    await page.locator('#notice.ok:has-text("to stop")').waitFor({ timeout: 10_000 });
    await page.locator('#notice.ok').waitFor({ timeout: 10_000 });
    const result = await search.result();
    assert.equal(result.stopped, true);
    assert.equal(result.budget.nfe, 70_000);
    assert.ok(result.nfe.total < 60_000, `stopped early, spent ${result.nfe.total}`);
    // The page catches up: the search is closed, with the NFEs its result reports.
    await searchRow.locator('td.state.COMPLETED').waitFor({ timeout: 20_000 });
    await waitUntil('the final NFE count on the page', async () => (await pageNfe(page, search.workflowId)) === result.nfe.total || null, 20_000);

    // The screenshot for docs/: the campaign running, a search stopped from the page, the fleet.
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.ok(statSync(SCREENSHOT).size > 20_000, 'a screenshot with content');

    page.once('dialog', (dialog) => void dialog.accept());
    await page.locator(`tr.campaign[data-workflow-id="${input.campaignId}"] button[data-action="cancel"]`).click({ timeout: 20_000 });
    const status = await waitUntil('the campaign to be cancelled', async () => {
      const name = (await campaign.describe()).status.name;
      return name !== 'RUNNING' ? name : null;
    }, 20_000);
    assert.equal(status, 'CANCELLED');
    await page.close();
  });
});
