// Prompts, labels and IDs that are HTML, script, quotes, template text or odd line separators, shown by the
// campaign report and the dashboard in real Chromium: the text must read literally, and nothing may run
// (no window.__pwned, no dialog, no request to any other address, no console error).
// The report is rendered from store rows with hostile item labels, categories, workflow IDs, errors and
// campaign name; the dashboard gathers a real Temporal dev server's workflows whose IDs and search
// attributes are hostile (no worker runs them: they stay RUNNING, as a queued search does).
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startDashboard, type Dashboard } from '../src/dashboard/server';
import { renderReport } from '../src/report/report';
import type { SearchResult } from '../src/search/run';
import type { SearchSpec } from '../src/search/spec';
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from '../src/store/types';
import { SEARCH_ATTRIBUTES } from '../src/temporal/search-attributes';
import { installQuietRuntime } from '../src/temporal/worker';
import { searchWorkflow } from '../workflows/search';
import { tempDir, uniqueId, waitUntil, withTemporal } from './helpers';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Each would run script, open a dialog or change the page if it were inserted as HTML or code. */
const HOSTILE = [
  '<script>window.__pwned=1</script>',
  '"><img src=x onerror="window.__pwned=2">',
  "'><svg onload=window.__pwned=3>",
  '</textarea><script>window.__pwned=4</script>',
  'javascript:window.__pwned=5',
  '{{constructor.constructor("window.__pwned=6")()}} ${window.__pwned=7}',
  '</title></style><script>alert(8)</script>',
  '<!-- c -->&amp;&lt;b&gt; "double" \'single\' `back`',
  'line\u2028separator\u2029paragraph',
];

interface Watch {
  dialogs: string[];
  consoleErrors: string[];
  pageErrors: string[];
  requests: string[];
}

/** A page with every dialog, console error, uncaught error and request recorded; requests elsewhere than `allowed` are blocked. */
async function watchedPage(browser: Browser, allowed: (url: string) => boolean): Promise<{ page: Page; watch: Watch }> {
  const page = await browser.newPage();
  const watch: Watch = { dialogs: [], consoleErrors: [], pageErrors: [], requests: [] };
  page.on('dialog', (dialog) => {
    watch.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    void dialog.dismiss();
  });
  page.on('console', (message) => {
    if (message.type() === 'error') watch.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => watch.pageErrors.push(error.message));
  page.on('request', (request) => watch.requests.push(request.url()));
  await page.route('**/*', (route) => (allowed(route.request().url()) ? route.continue() : route.abort()));
  return { page, watch };
}

async function assertNothingRan(page: Page, watch: Watch, allowed: (url: string) => boolean): Promise<void> {
  const pwned = await page.evaluate(() => (globalThis as unknown as { __pwned?: unknown }).__pwned);
  assert.equal(pwned, undefined, 'no injected script ran');
  assert.deepEqual(watch.dialogs, [], 'no dialog opened');
  assert.deepEqual(watch.pageErrors, [], 'no uncaught error');
  assert.deepEqual(watch.consoleErrors, [], 'no console error');
  assert.deepEqual(watch.requests.filter((url) => !allowed(url)), [], 'no request elsewhere (an <img src=x> would ask for x)');
}

/** The page's visible text, and its text content (closed <details> included), as the browser reads them. */
function texts(page: Page): Promise<{ inner: string; content: string; title: string }> {
  return page.evaluate(() => {
    const document = (globalThis as any).document;
    return { inner: document.body.innerText as string, content: document.documentElement.textContent as string, title: document.title as string };
  });
}

let browser: Browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
});
after(async () => {
  await browser?.close();
});

// ---------------------------------------------------------------------------------------------------------

function hostileCampaign(): { campaign: CampaignRecord; searches: SearchRecord[]; cellMetrics: CellMetricsRecord[] } {
  const campaignId = 'campaign-xss-0123456789ab';
  const campaign: CampaignRecord = {
    campaignId,
    name: HOSTILE[6],
    createdAt: '2025-03-14T09:26:53.000Z',
    spec: { name: HOSTILE[6], dataset: { kind: 't2i-compbench', items: HOSTILE.map((prompt, i) => ({ id: `x-${i}`, label: prompt })) }, note: HOSTILE[3] },
  };
  const searches: SearchRecord[] = [];
  const cellMetrics: CellMetricsRecord[] = [];
  // The gallery shows the best four of each algorithm at its largest budget: three algorithms of three
  // items each put every hostile label in the gallery (or, for the failed search, in the failures).
  const algorithms = ['random', 'zero-order', 'paths'] as const;
  for (const budgetNfe of [40, 100]) {
    HOSTILE.forEach((prompt, i) => {
      const algorithm = algorithms[i % algorithms.length];
      const cell = `${algorithm}|gmm-classifier|${budgetNfe}`;
      const failed = budgetNfe === 100 && i === 0;
      const spec: SearchSpec = { model: 'gmm', condition: { prompt }, algorithm: { name: algorithm }, verifiers: ['gmm-classifier'], budgetNfe, seed: 0 };
      const score = 0.1 * i + budgetNfe / 1000;
      const result: SearchResult = {
        algorithm,
        verifiers: ['gmm-classifier'],
        model: 'gmm',
        condition: spec.condition,
        seed: 0,
        budget: { nfe: budgetNfe },
        nfe: { search: budgetNfe - 19, final: 19, total: budgetNfe, executed: budgetNfe, failed: 0 },
        best: { score, scores: { 'gmm-classifier': score }, searchScore: score, noise: { seed: i, perturbations: [] }, candidateId: 'c1', lineage: { noise: { seed: i, perturbations: [] }, ops: [] }, key: '' },
        candidates: 2,
        failedCandidates: 0,
        rounds: 1,
        stopped: false,
        verifierSeconds: 0.01,
        verifierCosts: { 'gmm-classifier': { calls: 2, seconds: 0.01 } },
      };
      searches.push({
        workflowId: `${campaignId}--${prompt}--${budgetNfe}`,
        campaignId,
        itemId: `x-${i}`,
        itemLabel: prompt,
        itemCategory: HOSTILE[(i + 1) % HOSTILE.length],
        cell,
        algorithm,
        searchVerifiers: ['gmm-classifier'],
        budgetNfe,
        seed: 0,
        status: failed ? 'failed' : 'done',
        error: failed ? `SearchFailure: ${HOSTILE[1]}` : null,
        spec,
        result: failed ? null : result,
        evaluation: failed ? {} : { 'gmm-classifier': score },
        sample: failed ? [] : Array.from({ length: 16 }, (_, k) => Math.sin(k + i)),
        nfeSearch: failed ? 0 : budgetNfe - 19,
        nfeFinal: failed ? 0 : 19,
        nfeTotal: failed ? 0 : budgetNfe,
        nfeExecuted: failed ? 0 : budgetNfe,
        verifierSeconds: failed ? 0 : 0.01,
        wallSeconds: 0.5,
        finishedAt: '2025-03-14T10:02:11.000Z',
      });
    });
    for (const algorithm of algorithms) {
      cellMetrics.push({ campaignId, cell: `${algorithm}|gmm-classifier|${budgetNfe}`, samples: 3, frechetDistance: 1.5, inceptionScore: 3.2, computedAt: '2025-03-14T10:05:00.000Z' });
    }
  }
  return { campaign, searches, cellMetrics };
}

describe('the campaign report with hostile prompts, labels and IDs', { timeout: 60_000 }, () => {
  it('shows every one literally, in Chromium, and runs none of them', async () => {
    const html = await renderReport(hostileCampaign());
    const file = path.join(tempDir('xss-report'), 'report.html');
    writeFileSync(file, html);
    const url = pathToFileURL(file).href;
    const allowed = (u: string) => u === url || u.startsWith('data:');
    const { page, watch } = await watchedPage(browser, allowed);
    try {
      await page.goto(url);
      const { inner, content, title } = await texts(page);
      assert.equal(title, `${HOSTILE[6]} · noisesearch report`);
      for (const text of HOSTILE) {
        assert.ok(inner.includes(text), `the report shows ${JSON.stringify(text)} as text`);
      }
      assert.ok(content.includes(`SearchFailure: ${HOSTILE[1]}`), 'the failure message is text');
      // The document's own markup: no element or attribute came from the data.
      const injected = await page.evaluate(() => {
        const document = (globalThis as any).document;
        return {
          scripts: document.querySelectorAll('script').length,
          handlers: [...document.querySelectorAll('*')].flatMap((el: any) => [...el.attributes].filter((a: any) => /^on/i.test(a.name)).map((a: any) => `${el.tagName} ${a.name}`)),
          images: document.querySelectorAll('img:not([src^="data:"])').length,
          links: [...document.querySelectorAll('[href]')].map((el: any) => el.getAttribute('href')).filter((h: string) => !h.startsWith('#')),
        };
      });
      assert.deepEqual(injected, { scripts: 0, handlers: [], images: 0, links: [] });
      await assertNothingRan(page, watch, allowed);
    } finally {
      await page.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

describe('the dashboard with hostile workflow IDs and search attributes', { timeout: 120_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let dashboard: Dashboard;
  const taskQueue = uniqueId('xss-no-worker');
  const ids = HOSTILE.map((text, i) => `${text} #${i}`);

  before(async () => {
    installQuietRuntime();
    temporal = await withTemporal();
    const client = temporal.env.client;
    const spec: SearchSpec = { model: 'gmm', condition: { prompt: HOSTILE[0] }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier'], budgetNfe: 100, seed: 0 };
    // No worker polls this task queue: the searches stay RUNNING with the IDs and attributes given here.
    for (const [i, workflowId] of ids.entries()) {
      await client.workflow.start(searchWorkflow, {
        args: [spec, { indexed: false }],
        taskQueue,
        workflowId,
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.algorithm, value: HOSTILE[i] },
          { key: SEARCH_ATTRIBUTES.model, value: HOSTILE[(i + 1) % HOSTILE.length] },
          { key: SEARCH_ATTRIBUTES.verifier, value: HOSTILE[(i + 2) % HOSTILE.length] },
        ],
      });
    }
    dashboard = await startDashboard({
      client,
      namespace: 'default',
      fleet: [],
      temporalUi: 'http://127.0.0.1:8233',
      allowActions: false,
      host: '127.0.0.1',
      port: 0,
      pollMs: 500,
      campaignsDir: tempDir('xss-campaigns'),
    });
  });

  after(async () => {
    await dashboard?.close();
    await temporal?.stop();
  });

  it('shows every one literally, in Chromium, and runs none of them', async () => {
    const origin = new URL(dashboard.url).origin;
    const allowed = (u: string) => u.startsWith(`${origin}/`);
    const { page, watch } = await watchedPage(browser, allowed);
    try {
      await page.goto(dashboard.url);
      await waitUntil('every search on the page', async () => (await page.locator('tr.search').count()) === ids.length, 30_000);
      const { inner } = await texts(page);
      for (const id of ids) assert.ok(inner.includes(id), `the dashboard shows the workflow ID ${JSON.stringify(id)} as text`);
      for (const text of HOSTILE) assert.ok(inner.includes(text), `the dashboard shows the attribute ${JSON.stringify(text)} as text`);
      const rows = await page.evaluate(() => [...(globalThis as any).document.querySelectorAll('tr.search')].map((tr: any) => tr.dataset.workflowId as string));
      assert.deepEqual([...rows].sort(), [...ids].sort(), 'each row carries its ID as data, unchanged');
      const hrefs = await page.evaluate(() => [...(globalThis as any).document.querySelectorAll('[href]')].map((el: any) => el.getAttribute('href') as string));
      assert.equal(hrefs.length, ids.length + 1, 'a Temporal UI link per search, and one to the UI');
      for (const href of hrefs) assert.match(href, /^http:\/\/127\.0\.0\.1:8233(\/|$)/, 'links go to the Temporal UI, never to javascript:');
      for (const id of ids) assert.ok(hrefs.includes(`http://127.0.0.1:8233/namespaces/default/workflows/${encodeURIComponent(id)}`), `the link of ${JSON.stringify(id)} is encoded`);
      // A second poll redraws the same rows from the same data: still nothing runs.
      const updates = await page.evaluate(() => Number((globalThis as any).document.body.dataset.updates));
      await waitUntil('a redraw', async () => (await page.evaluate(() => Number((globalThis as any).document.body.dataset.updates))) > updates, 10_000);
      await assertNothingRan(page, watch, allowed);
    } finally {
      await page.close();
    }
  });
});
