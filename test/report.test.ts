// The campaign report on a synthetic campaign: self-contained HTML with Vega-Lite figures, the cross table,
// the gallery and the failures; then opened in headless Chromium with every network request blocked.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { gridShape } from '../src/report/plot';
import { renderReport, samplePicture, writeReport } from '../src/report/report';
import type { SearchResult } from '../src/search/run';
import type { SearchSpec } from '../src/search/spec';
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from '../src/store/types';
import { baselineKey, type SampleImages } from '../src/campaign/samples';
import { mulberry32 } from '../src/search/seeds';
import { tinyPng } from './fake-server';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CAMPAIGN_ID = 'cmp-2025-scaling-01';
const ALGORITHMS = ['random', 'zero-order', 'paths'] as const;
const SEARCH_VERIFIERS = [['gmm-classifier'], ['gmm-likelihood']];
const EVAL_VERIFIERS = ['gmm-classifier', 'gmm-likelihood', 'gmm-oracle'];
const BUDGETS = [40, 100, 400, 1000];
const ITEMS = [
  { id: 'class-1', label: 'class 1', category: 'left modes' },
  { id: 'class-3', label: 'class 3', category: 'left modes' },
  { id: 'class-6', label: 'class 6', category: 'right modes' },
  { id: 'class-8', label: 'class 8', category: 'right modes' },
];
const SEEDS = [11, 12];

function syntheticInput(): { campaign: CampaignRecord; searches: SearchRecord[]; cellMetrics: CellMetricsRecord[] } {
  const rand = mulberry32(2501);
  const campaign: CampaignRecord = {
    campaignId: CAMPAIGN_ID,
    name: 'GMM scaling: random vs zero-order vs paths',
    createdAt: '2025-03-14T09:26:53.000Z',
    spec: {
      name: 'GMM scaling: random vs zero-order vs paths',
      model: 'gmm',
      dataset: { kind: 'gmm-classes', classes: [1, 3, 6, 8], items: ITEMS.map((i) => ({ ...i, condition: { classLabel: Number(i.id.split('-')[1]) } })) },
      algorithms: ALGORITHMS.map((name) => ({ name })),
      searchVerifiers: SEARCH_VERIFIERS,
      evaluationVerifiers: EVAL_VERIFIERS,
      budgets: BUDGETS,
      seeds: SEEDS,
    },
  };
  const searches: SearchRecord[] = [];
  const cellMetrics: CellMetricsRecord[] = [];
  const gain: Record<string, number> = { random: 0.05, 'zero-order': 0.07, paths: 0.09 };
  for (const algorithm of ALGORITHMS) {
    for (const verifiers of SEARCH_VERIFIERS) {
      for (const budgetNfe of BUDGETS) {
        const cell = `${algorithm}|${verifiers.join('+')}|${budgetNfe}`;
        const level = gain[algorithm] * Math.log2(budgetNfe / 20);
        for (const item of ITEMS) {
          for (const seed of SEEDS) {
            const workflowId = `${CAMPAIGN_ID}/${cell}/${item.id}/${seed}`;
            const spec: SearchSpec = {
              model: 'gmm',
              condition: { classLabel: Number(item.id.split('-')[1]) },
              algorithm: { name: algorithm },
              verifiers,
              budgetNfe,
              seed,
            };
            const failed = algorithm === 'paths' && budgetNfe === 100 && item.id === 'class-6' && seed === 12;
            const nfeFinal = algorithm === 'paths' ? 0 : 19;
            const nfeSearch = Math.max(1, budgetNfe - nfeFinal - Math.floor(rand() * 10));
            const nfeTotal = nfeSearch + nfeFinal;
            const nfeExecuted = Math.round(nfeTotal * (algorithm === 'random' ? 1 : 0.55 + 0.2 * rand()));
            const evaluation: Record<string, number> = {};
            for (const v of EVAL_VERIFIERS) {
              const matched = verifiers.includes(v) ? 0.06 : 0;
              evaluation[v] = v === 'gmm-likelihood' ? -3 + 4 * (level + matched) + rand() * 0.4 : 0.45 + level + matched + rand() * 0.08;
            }
            const verifierCosts = Object.fromEntries(verifiers.map((v) => [v, { calls: Math.round(nfeSearch / 19), seconds: (nfeSearch / 19) * (v === 'gmm-classifier' ? 0.004 : 0.0015) }]));
            const verifierSeconds = Object.values(verifierCosts).reduce((a, c) => a + c.seconds, 0);
            const sample = Array.from({ length: 16 }, (_, i) => Math.sin(i + Number(item.id.split('-')[1])) * 1.5 + (rand() - 0.5));
            const result: SearchResult = {
              algorithm,
              verifiers,
              model: 'gmm',
              condition: spec.condition,
              seed,
              budget: { nfe: budgetNfe },
              nfe: { search: nfeSearch, final: nfeFinal, total: nfeTotal, executed: nfeExecuted, failed: 0 },
              best: {
                score: evaluation[verifiers[0]],
                scores: evaluation,
                searchScore: evaluation[verifiers[0]],
                noise: { seed: seed * 1000 + 7, perturbations: [] },
                candidateId: 'c17',
                lineage: {
                  noise: { seed: seed * 1000 + 7, perturbations: [] },
                  ops: [{ solve: { sigmaFrom: 80, sigmaTo: 0, solver: 'heun', steps: 10 } }],
                },
                key: '',
              },
              candidates: Math.round(nfeSearch / 19),
              failedCandidates: 0,
              rounds: 3,
              stopped: false,
              verifierSeconds,
              verifierCosts,
            };
            searches.push({
              workflowId,
              campaignId: CAMPAIGN_ID,
              itemId: item.id,
              itemLabel: item.label,
              itemCategory: item.category,
              cell,
              algorithm,
              searchVerifiers: verifiers,
              budgetNfe,
              seed,
              status: failed ? 'failed' : 'done',
              error: failed ? 'SearchFailure: every one of the 12 candidates failed, so there is no best noise (first failure: UNAVAILABLE: model server gmm-0 <lost> & restarted)' : null,
              spec,
              result: failed ? null : result,
              evaluation: failed ? {} : evaluation,
              sample: failed ? [] : sample,
              nfeSearch: failed ? 0 : nfeSearch,
              nfeFinal: failed ? 0 : nfeFinal,
              nfeTotal: failed ? 0 : nfeTotal,
              nfeExecuted: failed ? 0 : nfeExecuted,
              verifierSeconds: failed ? 0 : verifierSeconds,
              wallSeconds: 0.4 + rand(),
              finishedAt: '2025-03-14T10:02:11.000Z',
            });
          }
        }
        cellMetrics.push({
          campaignId: CAMPAIGN_ID,
          cell,
          samples: ITEMS.length * SEEDS.length,
          frechetDistance: 2.5 * Math.exp(-2 * level) + rand() * 0.1,
          inceptionScore: 3 + 4 * level + rand() * 0.2,
          computedAt: '2025-03-14T10:05:00.000Z',
        });
      }
    }
  }
  return { campaign, searches, cellMetrics };
}

function count(haystack: string, needle: RegExp): number {
  return (haystack.match(needle) ?? []).length;
}

describe('campaign report', () => {
  const input = syntheticInput();
  let html = '';
  let renderMs = 0;

  before(async () => {
    const t0 = Date.now();
    html = await renderReport(input);
    renderMs = Date.now() - t0;
    console.log(`report rendered in ${renderMs} ms, ${html.length} characters`);
  });

  it('is one self-contained document: no script, no external stylesheet, font or image', () => {
    assert.match(html, /^<!DOCTYPE html>/);
    assert.equal(count(html, /<script\b/gi), 0);
    assert.equal(count(html, /<link\b/gi), 0);
    assert.equal(count(html, /<img\b/gi), 0);
    assert.equal(count(html, /@import/gi), 0);
    assert.doesNotMatch(html, /\b(src|href)\s*=\s*["']?\s*(https?:)?\/\//i);
    assert.doesNotMatch(html, /url\(\s*["']?\s*(https?:)?\/\//i);
    // Inline SVG needs no namespace: the document names no http(s) address at all.
    assert.doesNotMatch(html, /https?:\/\//i);
  });

  it('has the scaling curves, the cost breakdowns and the gallery pictures as inline SVG', () => {
    // 3 evaluation verifiers + FD + IS, NFE split, logical vs executed, verifier time: 8 plots.
    assert.equal(count(html, /<svg class="plot"/g), 8);
    // 3 algorithms x 2 search verifier sets at the largest budget, 4 samples each.
    assert.equal(count(html, /<svg class="sample"/g), 24);
    for (const title of ['gmm-oracle (evaluation)', 'Fréchet distance', 'Inception Score analogue', 'NFEs per search: search vs final generation', 'Verifier time during search']) {
      assert.ok(html.includes(title), `missing the figure "${title}"`);
    }
    assert.ok(html.includes('mean total NFEs per search (log scale)'), 'budgets spanning 25x are plotted on a log axis');
    assert.ok(html.includes('class 6') && html.includes('right modes'));
  });

  it('has the cross table per algorithm at its largest budget, best per column highlighted', () => {
    assert.equal(count(html, /<table class="data cross"/g), 3);
    const paths = html.match(/<table class="data cross" data-algorithm="paths">[\s\S]*?<\/table>/)![0];
    assert.ok(paths.includes('largest budget, 1,000 NFEs'));
    for (const head of [...EVAL_VERIFIERS, 'FD', 'IS']) assert.ok(paths.includes(head), `missing the column ${head}`);
    const rows = paths.match(/<tr><th scope="row">[^<]*<\/th>/g)!.map((r) => r.replace(/<[^>]+>/g, ''));
    assert.deepEqual(rows, ['gmm-classifier', 'gmm-likelihood']);
    // One best per column of 5 (3 evaluation verifiers, FD, IS) with two rows each.
    assert.equal(count(paths, /class="best"/g), 5);
  });

  it('lists the failed searches with their errors, escaped', () => {
    assert.equal(count(html, /<li class="failure">/g), 2);
    assert.ok(html.includes('paths|gmm-classifier|100') || html.includes('paths|gmm-likelihood|100'));
    assert.ok(html.includes('every one of the 12 candidates failed'));
    assert.ok(html.includes('gmm-0 &lt;lost&gt; &amp; restarted'));
    assert.match(html, /<span class="big failed">2<\/span> failed/);
  });

  it('draws a sample as a 4 x 4 heatmap of rect marks, and other lengths as near-square grids', async () => {
    assert.deepEqual(gridShape(16), { rows: 4, cols: 4 });
    assert.deepEqual(gridShape(10), { rows: 3, cols: 4 });
    assert.deepEqual(gridShape(3), { rows: 2, cols: 2 });
    const svg = await samplePicture(input.searches[0].sample, 'class 1, seed 11');
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/, 'a standalone file keeps its namespace');
    assert.equal(count(svg, /aria-roledescription="rect mark"/g), 16, 'one rect mark per latent dimension');
    assert.match(svg, /aria-label="col: 3; row: 3; value: /, 'laid out as 4 x 4');
    assert.ok(svg.includes('class 1, seed 11'));
    const odd = await samplePicture([0.1, -0.4, 2, 0.3, NaN]);
    assert.equal(count(odd, /aria-roledescription="rect mark"/g), 4, 'a 5-dim latent in a 2 x 3 grid, its NaN left blank');
    assert.match(odd, /aria-label="col: 0; row: 1; value: /);
    assert.match(await samplePicture([]), /<svg/);
  });

  it('shows CLIP-FID, as a figure and a column, only when some cell has it', async () => {
    assert.ok(!html.includes('CLIP-FID'), 'no cell has it: no figure, no column');
    // Half the cells have it (a server restarted with a CLIP reference midway): the figure plots those.
    const cellMetrics = input.cellMetrics.map((m, i) => (i % 2 === 0 ? { ...m, clipFrechetDistance: 10 + i } : m));
    const withClip = await renderReport({ ...input, cellMetrics });
    assert.equal(count(withClip, /<svg class="plot"/g), 9);
    assert.ok(withClip.includes("CLIP-FID: Fréchet distance of CLIP image embeddings of each cell's final pictures against the server's reference (lower is better)"));
    const paths = withClip.match(/<table class="data cross" data-algorithm="paths">[\s\S]*?<\/table>/)![0];
    assert.ok(paths.includes('CLIP-FID&thinsp;↓') && paths.includes('colspan="3" class="group">population'));
    assert.ok(paths.includes('FD, IS and CLIP-FID are the cell’s population metrics'));
  });

  it('plots quality against measured fleet seconds beside NFEs, and tables the seconds, once results carry them', async () => {
    // Denoising at 0.5 ms an NFE; the verifiers as the synthetic costs say (gmm-classifier 2.7x gmm-likelihood).
    const searches = input.searches.map((r) =>
      r.result
        ? { ...r, result: { ...r.result, seconds: { denoise: r.nfeTotal * 0.0005, verifiers: Object.fromEntries(Object.entries(r.result.verifierCosts).map(([v, c]) => [v, c.seconds])), total: r.nfeTotal * 0.0005 + r.verifierSeconds } } }
        : r,
    );
    const measured = await renderReport({ ...input, searches });
    // The 5 scaling curves of before, each now beside its curve against seconds.
    assert.equal(count(measured, /<svg class="plot"/g), 8 + 5);
    assert.ok(measured.includes('gmm-oracle (evaluation) · seconds') && measured.includes('mean fleet seconds per search'));
    const table = measured.match(/<table class="data compact seconds">[\s\S]*?<\/table>/)![0];
    const row = table.match(/<tr><th scope="row">random<\/th><td class="text">gmm-classifier<\/td><td>1,000<\/td>.*?<\/tr>/)![0];
    const done = searches.filter((r) => r.status === 'done' && r.cell === 'random|gmm-classifier|1000');
    const denoise = done.reduce((a, r) => a + r.nfeTotal * 0.0005, 0) / done.length;
    const verifier = done.reduce((a, r) => a + r.verifierSeconds, 0) / done.length;
    const cells = row.match(/<td[^>]*>[^<]*<\/td>/g)!.map((c) => c.replace(/<[^>]+>/g, ''));
    // search verifiers, budget, mean NFEs, denoising, gmm-classifier, gmm-likelihood, total, verifier share, searches
    assert.equal(cells[3], `${Number((denoise * 1000).toPrecision(3))} ms`);
    assert.equal(cells[5], '–', 'a verifier the cell did not search with');
    assert.equal(cells[7], `${Number(((100 * verifier) / (denoise + verifier)).toPrecision(3))} %`);
    assert.equal(cells[8], String(done.length));
    assert.ok(html.includes('Fleet time: denoising · verifiers (summed)</dt><dd>not measured'), 'results without seconds: not 0 s');
    assert.ok(!measured.includes('not measured'));
    // The cross table's mean fleet seconds column.
    assert.ok(measured.match(/<table class="data cross" data-algorithm="random">[\s\S]*?<\/table>/)![0].includes('mean fleet seconds'));
  });

  it('renders an empty campaign without failing', async () => {
    const empty = await renderReport({ campaign: input.campaign, searches: [], cellMetrics: [] });
    assert.ok(empty.includes('No finished search to plot.'));
    assert.ok(empty.includes('No search failed.'));
  });

  describe('in headless Chromium, offline', () => {
    let browser: Browser;
    let file = '';

    before(async () => {
      assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM} (set CHROMIUM_PATH)`);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'noisesearch-report-'));
      file = await writeReport(input, path.join(dir, 'nested', 'report.html'));
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      });
    });

    after(async () => {
      await browser?.close();
    });

    it('shows an image model\'s PNGs, embedded, per prompt beside its no-search baseline, without a sideways scroll', async () => {
      // 4 items at their smallest seed (11): the baseline and 3 algorithms x 2 verifier sets x 4 budgets each.
      const png = (r: number, g: number) => tinyPng(24, 16, (x, y) => [(r + 9 * x) % 256, (g + 13 * y) % 256, 128]);
      const images: SampleImages = { searches: new Map(), baselines: new Map() };
      input.searches.filter((r) => r.status === 'done').forEach((r, i) => images.searches.set(r.workflowId, png(i, 3 * i)));
      for (const item of ITEMS) for (const seed of SEEDS) images.baselines.set(baselineKey(item.id, seed), { itemId: item.id, seed, image: png(7, seed), evaluation: { 'gmm-oracle': 0.25 }, nfe: 19 });
      const pictured = await renderReport({ ...input, images });
      assert.equal(count(pictured, /<img src="data:image\/png;base64,/g), 4 * (1 + 24));
      assert.equal(count(pictured, /<figure class="pic baseline">/g), 4);
      assert.equal(count(pictured, /<svg class="sample"/g), 0, 'no latent heatmaps for an image model');
      assert.ok(pictured.includes('width="128" height="85"'), 'a 24 x 16 picture keeps its aspect');
      const dir = await mkdtemp(path.join(os.tmpdir(), 'noisesearch-report-images-'));
      const imageFile = await writeReport({ ...input, images }, path.join(dir, 'report.html'));
      const context = await browser.newContext({ viewport: { width: 1200, height: 900 }, offline: true });
      const page = await context.newPage();
      const blocked: string[] = [];
      await page.route('**', (route) => {
        const url = route.request().url();
        if (url.startsWith('file:') || url.startsWith('data:')) return route.continue();
        blocked.push(url);
        return route.abort('blockedbyclient');
      });
      await page.goto(pathToFileURL(imageFile).href, { waitUntil: 'load' });
      const shown = await page.evaluate(() => {
        const doc = (globalThis as any).document;
        const pictures = Array.from(doc.querySelectorAll('figure.pic img') as ArrayLike<any>);
        const root = doc.documentElement;
        return { decoded: pictures.filter((img) => img.complete && img.naturalWidth === 24 && img.naturalHeight === 16).length, total: pictures.length, overflow: root.scrollWidth - root.clientWidth };
      });
      assert.deepEqual(shown, { decoded: 100, total: 100, overflow: 0 });
      assert.deepEqual(blocked, []);
      await context.close();
    });

    it('writes the same document it renders, creating the folder', async () => {
      assert.equal(await readFile(file, 'utf8'), html);
    });

    it('renders every plot and every sample picture with a non-zero box, requesting nothing but the file', async () => {
      const t0 = Date.now();
      const context = await browser.newContext({ viewport: { width: 1200, height: 900 }, offline: true });
      const page = await context.newPage();
      const blocked: string[] = [];
      const failed: string[] = [];
      await page.route('**', (route) => {
        const url = route.request().url();
        if (url.startsWith('file:')) return route.continue();
        blocked.push(url);
        return route.abort('blockedbyclient');
      });
      page.on('requestfailed', (request) => failed.push(`${request.url()}: ${request.failure()?.errorText}`));
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });

      const boxes = await page.evaluate(() => {
        // Runs in the page: the DOM is not in this project's TypeScript lib.
        const doc = (globalThis as any).document;
        const measure = (selector: string): Array<{ width: number; height: number; label: string }> =>
          Array.from(doc.querySelectorAll(selector) as ArrayLike<any>).map((el) => {
            const r = el.getBoundingClientRect();
            return { width: r.width, height: r.height, label: el.getAttribute('aria-label') ?? '' };
          });
        return { plots: measure('svg.plot'), samples: measure('svg.sample'), legend: measure('svg.colourbar'), tables: measure('table.cross') };
      });
      assert.equal(boxes.plots.length, 8);
      assert.equal(boxes.samples.length, 24);
      assert.equal(boxes.tables.length, 3);
      for (const box of [...boxes.plots, ...boxes.samples, ...boxes.legend, ...boxes.tables]) {
        assert.ok(box.width > 0 && box.height > 0, `"${box.label}" has an empty box (${box.width} x ${box.height})`);
      }
      // The document lays out without a horizontal scroll at 1200 px.
      const overflow = await page.evaluate(() => {
        const root = (globalThis as any).document.documentElement;
        return root.scrollWidth - root.clientWidth;
      });
      assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px`);

      assert.deepEqual(blocked, [], 'the page asked for something other than its file');
      assert.deepEqual(failed, []);
      assert.deepEqual(errors, []);

      const shot = path.join(path.dirname(path.dirname(file)), 'report.png');
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok((await stat(shot)).size > 10_000);
      console.log(`report screenshot: ${shot} (browser check ${Date.now() - t0} ms; report ${file})`);
      await context.close();
    });
  });
});
