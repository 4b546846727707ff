// A campaign's report: one self-contained HTML document (inline CSS and SVG, and an image model's PNGs
// as data: URIs: no script, no font, no image and no stylesheet from anywhere else, readable without
// JavaScript), laid out like the figures and tables of Ma et al. 2025 (arXiv 2501.09732): scaling curves
// against NFEs, the search-verifier x evaluation-verifier table, cost breakdowns, a gallery of final
// samples (src/report/gallery.ts) and the failed searches.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { SampleImages } from '../campaign/samples';
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from '../store/types';
import { fmt } from './format';
import { GALLERY_CSS, GALLERY_PROMPTS, GALLERY_SIZE, imageGallery, latentGallery, MAX_EMBEDDED_BYTES } from './gallery';
import { escapeHtml, inlineSvg, renderSvg, type VlSpec } from './plot';

export { samplePicture } from './plot';

export interface ReportInput {
  campaign: CampaignRecord;
  searches: SearchRecord[];
  cellMetrics: CellMetricsRecord[];
  /** An image model's decoded final samples and no-search baselines (src/campaign/samples.ts). */
  images?: SampleImages;
}

// ---------------------------------------------------------------------------------------------------------
// Numbers and grouping

function mean(values: number[]): number {
  const finite = values.filter((v) => Number.isFinite(v));
  return finite.length === 0 ? NaN : finite.reduce((a, b) => a + b, 0) / finite.length;
}

function std(values: number[]): number {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length < 2) return NaN;
  const m = mean(finite);
  return Math.sqrt(finite.reduce((a, b) => a + (b - m) ** 2, 0) / (finite.length - 1));
}

function sum(values: number[]): number {
  return values.filter((v) => Number.isFinite(v)).reduce((a, b) => a + b, 0);
}

function fmtSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '–';
  if (seconds < 1) return `${fmt(seconds * 1000, 3)} ms`;
  if (seconds < 120) return `${fmt(seconds, 3)} s`;
  if (seconds < 7200) return `${fmt(seconds / 60, 3)} min`;
  return `${fmt(seconds / 3600, 3)} h`;
}

function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}

/**
 * The algorithm as the grid names it: the cell's first field when it is the algorithm with its parameters
 * (e.g. "zero-order(t=0.9)|..."), otherwise the record's algorithm.
 */
function algorithmLabel(r: SearchRecord): string {
  const first = r.cell.split('|')[0]?.trim();
  return first && first !== r.algorithm && first.startsWith(r.algorithm) ? first : r.algorithm;
}

function verifierSet(r: SearchRecord): string {
  return r.searchVerifiers.join('+');
}

interface Group {
  algorithm: string;
  verifiers: string;
  series: string;
  budget: number;
  records: SearchRecord[];
  cells: string[];
}

function seriesName(algorithm: string, verifiers: string): string {
  return `${algorithm} · ${verifiers}`;
}

/** Done records grouped by (algorithm, search verifier set, budget), in algorithm, verifiers, budget order. */
function groupCells(done: SearchRecord[]): Group[] {
  const groups = new Map<string, Group>();
  for (const r of done) {
    const algorithm = algorithmLabel(r);
    const verifiers = verifierSet(r);
    const key = JSON.stringify([algorithm, verifiers, r.budgetNfe]);
    let g = groups.get(key);
    if (!g) {
      g = { algorithm, verifiers, series: seriesName(algorithm, verifiers), budget: r.budgetNfe, records: [], cells: [] };
      groups.set(key, g);
    }
    g.records.push(r);
    if (!g.cells.includes(r.cell)) g.cells.push(r.cell);
  }
  return [...groups.values()].sort(
    (a, b) => a.algorithm.localeCompare(b.algorithm) || a.verifiers.localeCompare(b.verifiers) || a.budget - b.budget,
  );
}

/** A metric of cells averaged by their sample counts; NaN when no cell has it. */
function weightedByCount(cells: CellMetricsRecord[], value: (m: CellMetricsRecord) => number | undefined): number {
  const have = cells.filter((m) => value(m) !== undefined);
  if (have.length === 0) return NaN;
  return sum(have.map((m) => value(m)! * Math.max(1, m.samples))) / sum(have.map((m) => Math.max(1, m.samples)));
}

/** The population metrics of a group: its cell's, averaged by sample count when the group spans cells. */
function groupMetrics(g: Group, byCell: Map<string, CellMetricsRecord>): { fd: number; is: number; clipFd: number; samples: number } | null {
  const found = g.cells.map((c) => byCell.get(c)).filter((m): m is CellMetricsRecord => m !== undefined);
  if (found.length === 0) return null;
  return {
    fd: weightedByCount(found, (m) => m.frechetDistance),
    is: weightedByCount(found, (m) => m.inceptionScore),
    clipFd: weightedByCount(found, (m) => m.clipFrechetDistance),
    samples: sum(found.map((m) => m.samples)),
  };
}

/** Evaluation verifiers: the campaign spec's order when it names them, then any others the records scored. */
function evaluationVerifiers(campaign: CampaignRecord, done: SearchRecord[]): string[] {
  const spec = (campaign.spec ?? {}) as Record<string, any>;
  const named: unknown[] = [spec.evaluationVerifiers, spec.evaluation?.verifiers, spec.evaluation, spec.evaluate]
    .find((v) => Array.isArray(v) && v.every((x) => typeof x === 'string')) ?? [];
  const scored = unique(done.flatMap((r) => Object.keys(r.evaluation ?? {})));
  return unique([...(named as string[]).filter((v) => scored.includes(v)), ...scored]);
}

interface DatasetSummary {
  names: string[];
  items: number;
  categories: Array<{ name: string; items: number }>;
}

/** Items and categories: from the spec's resolved items when it has them, otherwise from the searches. */
function datasetSummary(campaign: CampaignRecord, searches: SearchRecord[]): DatasetSummary {
  const spec = (campaign.spec ?? {}) as Record<string, any>;
  const datasets: any[] = [spec.dataset, ...(Array.isArray(spec.datasets) ? spec.datasets : [])].filter((d) => d && typeof d === 'object');
  const names = unique(datasets.map((d) => (typeof d.name === 'string' ? d.name : typeof d.kind === 'string' ? d.kind : null)).filter((n): n is string => !!n));
  const specItems: Array<{ id: string; category?: string }> = [spec.items, ...datasets.map((d) => d.items)]
    .filter(Array.isArray)
    .flat()
    .filter((i: any) => i && typeof i.id === 'string');
  const items = new Map<string, string | null>();
  if (specItems.length > 0) for (const i of specItems) items.set(i.id, typeof i.category === 'string' ? i.category : null);
  else for (const r of searches) items.set(r.itemId, r.itemCategory);
  const categories = new Map<string, number>();
  for (const c of items.values()) if (c) categories.set(c, (categories.get(c) ?? 0) + 1);
  return {
    names,
    items: items.size,
    categories: [...categories.entries()].map(([name, n]) => ({ name, items: n })).sort((a, b) => b.items - a.items || a.name.localeCompare(b.name)),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Figures

const PLOT_WIDTH = 290;
const PLOT_HEIGHT = 200;

interface Figure {
  svg: string;
  caption: string;
}

async function figure(spec: VlSpec, label: string, caption: string): Promise<Figure> {
  return { svg: inlineSvg(await renderSvg(spec), 'plot', label), caption };
}

interface ScalingPoint {
  algorithm: string;
  verifiers: string;
  series: string;
  budget: number;
  nfe: number;
  value: number;
  n: number;
}

function scalingSpec(title: string, yTitle: string, points: ScalingPoint[], logX: boolean): VlSpec {
  return {
    title: { text: title },
    width: PLOT_WIDTH,
    height: PLOT_HEIGHT,
    data: { values: points },
    mark: { type: 'line', point: { filled: true, size: 45 }, strokeWidth: 1.8, clip: false },
    encoding: {
      x: {
        field: 'nfe',
        type: 'quantitative',
        title: logX ? 'mean total NFEs per search (log scale)' : 'mean total NFEs per search',
        scale: logX ? { type: 'log', nice: false, padding: 8 } : { zero: false, nice: true, padding: 8 },
        axis: { format: ',~f', tickCount: 6 },
      },
      y: { field: 'value', type: 'quantitative', title: yTitle, scale: { zero: false, nice: true, padding: 6 } },
      color: { field: 'algorithm', type: 'nominal', title: 'algorithm', sort: 'ascending', legend: { orient: 'right' } },
      // Dash and marker both follow the search verifiers; one legend (Vega-Lite would draw two).
      strokeDash: { field: 'verifiers', type: 'nominal', sort: 'ascending', legend: null },
      shape: { field: 'verifiers', type: 'nominal', title: 'search verifiers', sort: 'ascending' },
      detail: { field: 'series', type: 'nominal' },
      order: { field: 'nfe', type: 'quantitative' },
    },
  };
}

/** The population metrics' names: FID and IS proper on an image model's pictures, their analogues on the embedded model. */
function populationNames(pictures: boolean) {
  return pictures
    ? { fd: 'FID', fdCaption: 'FID of each cell’s final pictures against the model server’s reference statistics (lower is better)', is: 'Inception Score', isShort: 'IS' }
    : { fd: 'Fréchet distance', fdCaption: 'Fréchet distance of each cell’s final samples to the true distribution (lower is better)', is: 'Inception Score analogue', isShort: 'IS analogue' };
}

const CLIP_FID_CAPTION = "CLIP-FID: Fréchet distance of CLIP image embeddings of each cell's final pictures against the server's reference (lower is better)";

/** Only an image model's server with a CLIP reference computes CLIP-FID: it is shown when some cell has it. */
function hasClipFd(byCell: Map<string, CellMetricsRecord>): boolean {
  return [...byCell.values()].some((m) => m.clipFrechetDistance !== undefined);
}

async function scalingFigures(groups: Group[], evalVerifiers: string[], byCell: Map<string, CellMetricsRecord>, pictures: boolean): Promise<Figure[]> {
  const names = populationNames(pictures);
  if (groups.length === 0) return [];
  const base = groups.map((g) => ({
    algorithm: g.algorithm,
    verifiers: g.verifiers,
    series: g.series,
    budget: g.budget,
    nfe: mean(g.records.map((r) => r.nfeTotal)),
    n: g.records.length,
  }));
  const nfes = base.map((p) => p.nfe).filter((v) => Number.isFinite(v) && v > 0);
  const logX = nfes.length > 0 && Math.max(...nfes) / Math.min(...nfes) > 10;
  const metrics: Array<{ name: string; title: string; yTitle: string; caption: string; value: (g: Group) => number }> = [
    ...evalVerifiers.map((v) => ({
      name: v,
      title: `${v} (evaluation)`,
      yTitle: 'mean final-sample score',
      caption: `Mean <b>${escapeHtml(v)}</b> score of the final samples (higher is better) against the mean total NFEs (search + final) per search, one point per budget.`,
      value: (g: Group) => mean(g.records.map((r) => r.evaluation?.[v] ?? NaN)),
    })),
    {
      name: 'fd',
      title: names.fd,
      yTitle: `${names.fd} ↓`,
      caption: `${names.fdCaption}, against the mean total NFEs per search.`,
      value: (g: Group) => groupMetrics(g, byCell)?.fd ?? NaN,
    },
    {
      name: 'is',
      title: names.is,
      yTitle: `${names.isShort} ↑`,
      caption: `${names.is} of each cell’s final samples (higher is better), against the mean total NFEs per search.`,
      value: (g: Group) => groupMetrics(g, byCell)?.is ?? NaN,
    },
    ...(hasClipFd(byCell)
      ? [
          {
            name: 'clip-fd',
            title: 'CLIP-FID',
            yTitle: 'CLIP-FID ↓',
            caption: `${CLIP_FID_CAPTION}, against the mean total NFEs per search.`,
            value: (g: Group) => groupMetrics(g, byCell)?.clipFd ?? NaN,
          },
        ]
      : []),
  ];
  const figures: Figure[] = [];
  for (const m of metrics) {
    const points = groups
      .map((g, i) => ({ ...base[i], value: m.value(g) }))
      .filter((p) => Number.isFinite(p.value) && Number.isFinite(p.nfe) && (!logX || p.nfe > 0));
    if (points.length === 0) continue;
    figures.push(await figure(scalingSpec(m.title, m.yTitle, points, logX), `Scaling curve: ${m.title}`, m.caption));
  }
  return figures;
}

async function costFigures(groups: Group[], done: SearchRecord[]): Promise<Figure[]> {
  const figures: Figure[] = [];
  if (groups.length > 0) {
    // One panel per algorithm, one bar (pair) per search verifier set and budget.
    const rowName = (g: Group) => `${g.verifiers} · ${fmt(g.budget)}`;
    const order = unique(groups.map(rowName));
    const facet = {
      row: {
        field: 'algorithm',
        type: 'nominal',
        sort: 'ascending',
        title: null,
        header: { labelAngle: 0, labelOrient: 'top', labelAnchor: 'start', labelAlign: 'left', labelFontSize: 11, labelFontWeight: 'bold', labelPadding: 4 },
      },
    };
    const y = { field: 'row', type: 'nominal', title: null, sort: order, axis: { labelLimit: 400 } };
    const split = groups.flatMap((g) => [
      { algorithm: g.algorithm, row: rowName(g), part: 'search', order: 0, nfe: mean(g.records.map((r) => r.nfeSearch)) },
      { algorithm: g.algorithm, row: rowName(g), part: 'final generation', order: 1, nfe: mean(g.records.map((r) => r.nfeFinal)) },
    ]);
    figures.push(
      await figure(
        {
          title: { text: 'NFEs per search: search vs final generation' },
          data: { values: split },
          facet,
          resolve: { scale: { y: 'independent' } },
          spacing: 10,
          spec: {
            width: 240,
            height: { step: 14 },
            mark: { type: 'bar', height: { band: 0.75 } },
            encoding: {
              y,
              x: { field: 'nfe', type: 'quantitative', stack: 'zero', title: 'mean NFEs per search', axis: { format: ',~f' } },
              color: { field: 'part', type: 'nominal', title: null, sort: ['search', 'final generation'], scale: { range: ['#4c78a8', '#f58518'] }, legend: { orient: 'bottom' } },
              order: { field: 'order', type: 'quantitative' },
            },
          },
        },
        'NFEs per search: search vs final',
        'Mean logical NFEs per search in each cell, split into the search itself and the final generation of the winner (stacked); one panel per algorithm, one bar per search verifier set and budget (NFEs).',
      ),
    );
    const kinds = ['logical', 'executed'];
    const executed = groups.flatMap((g) => [
      { algorithm: g.algorithm, row: rowName(g), kind: kinds[0], nfe: mean(g.records.map((r) => r.nfeTotal)) },
      { algorithm: g.algorithm, row: rowName(g), kind: kinds[1], nfe: mean(g.records.map((r) => r.nfeExecuted)) },
    ]);
    figures.push(
      await figure(
        {
          title: { text: 'NFEs per search: logical vs executed' },
          data: { values: executed },
          facet,
          resolve: { scale: { y: 'independent' } },
          spacing: 10,
          spec: {
            width: 240,
            // With an offset channel the step is the offset's: two bars of 6 px and the band padding, rows about as tall as beside.
            height: { step: 6 },
            mark: { type: 'bar', height: { band: 0.9 } },
            encoding: {
              y,
              yOffset: { field: 'kind', sort: kinds },
              x: { field: 'nfe', type: 'quantitative', title: 'mean NFEs per search', axis: { format: ',~f' } },
              color: { field: 'kind', type: 'nominal', title: null, sort: kinds, scale: { range: ['#9ecae9', '#54a24b'] }, legend: { orient: 'bottom' } },
            },
          },
        },
        'NFEs per search: logical vs executed',
        'Mean logical NFEs per search (the paper’s count: every NFE the algorithm asks for, light) beside the NFEs the servers executed after their lineage cache; one panel per algorithm, one pair of bars per search verifier set and budget (NFEs).',
      ),
    );
  }
  const costs = new Map<string, { verifier: string; algorithm: string; seconds: number; calls: number }>();
  for (const r of done) {
    for (const [verifier, cost] of Object.entries(r.result?.verifierCosts ?? {})) {
      const algorithm = algorithmLabel(r);
      const key = JSON.stringify([verifier, algorithm]);
      const c = costs.get(key) ?? { verifier, algorithm, seconds: 0, calls: 0 };
      c.seconds += Number.isFinite(cost.seconds) ? cost.seconds : 0;
      c.calls += Number.isFinite(cost.calls) ? cost.calls : 0;
      costs.set(key, c);
    }
  }
  if (costs.size > 0) {
    const values = [...costs.values()];
    const verifiers = unique(values.map((v) => v.verifier)).sort();
    figures.push(
      await figure(
        {
          title: { text: 'Verifier time during search' },
          width: 260,
          height: Math.max(60, verifiers.length * 34),
          data: { values },
          mark: { type: 'bar', height: { band: 0.7 } },
          encoding: {
            y: { field: 'verifier', type: 'nominal', title: 'verifier', sort: verifiers },
            x: { field: 'seconds', type: 'quantitative', stack: 'zero', title: 'total verifier time (s)' },
            color: { field: 'algorithm', type: 'nominal', title: 'algorithm', sort: 'ascending', legend: { orient: 'bottom' } },
          },
        },
        'Verifier seconds per verifier',
        'Total seconds each search verifier spent scoring candidates, over all finished searches, stacked by algorithm (from each result’s verifier costs).',
      ),
    );
  }
  return figures;
}

function verifierCostTable(done: SearchRecord[]): string {
  const costs = new Map<string, { seconds: number; calls: number }>();
  for (const r of done) {
    for (const [verifier, cost] of Object.entries(r.result?.verifierCosts ?? {})) {
      const c = costs.get(verifier) ?? { seconds: 0, calls: 0 };
      c.seconds += Number.isFinite(cost.seconds) ? cost.seconds : 0;
      c.calls += Number.isFinite(cost.calls) ? cost.calls : 0;
      costs.set(verifier, c);
    }
  }
  if (costs.size === 0) return '';
  const rows = [...costs.entries()]
    .sort((a, b) => a[0].localeCompare(b[0]))
    .map(
      ([v, c]) =>
        `<tr><th scope="row">${escapeHtml(v)}</th><td>${fmt(c.calls)}</td><td>${fmtSeconds(c.seconds)}</td><td>${c.calls > 0 ? fmtSeconds(c.seconds / c.calls) : '–'}</td></tr>`,
    )
    .join('');
  return `<table class="data compact"><caption>Verifier calls and time (all finished searches).</caption>
<thead><tr><th>verifier</th><th>calls</th><th>time</th><th>per call</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// ---------------------------------------------------------------------------------------------------------
// Tables

function crossTables(groups: Group[], evalVerifiers: string[], byCell: Map<string, CellMetricsRecord>): string {
  const clipFd = hasClipFd(byCell);
  const algorithms = unique(groups.map((g) => g.algorithm));
  const tables: string[] = [];
  for (const algorithm of algorithms) {
    const own = groups.filter((g) => g.algorithm === algorithm);
    const largest = Math.max(...own.map((g) => g.budget));
    const rows = own.filter((g) => g.budget === largest).sort((a, b) => a.verifiers.localeCompare(b.verifiers));
    const columns: Array<{ head: string; better: 'high' | 'low'; value: (g: Group) => number; spread?: (g: Group) => number; cls?: string }> = [
      ...evalVerifiers.map((v) => ({
        head: escapeHtml(v),
        better: 'high' as const,
        value: (g: Group) => mean(g.records.map((r) => r.evaluation?.[v] ?? NaN)),
        spread: (g: Group) => std(g.records.map((r) => r.evaluation?.[v] ?? NaN)),
      })),
      { head: 'FD&thinsp;↓', better: 'low', value: (g) => groupMetrics(g, byCell)?.fd ?? NaN, cls: 'pop' },
      { head: 'IS&thinsp;↑', better: 'high', value: (g) => groupMetrics(g, byCell)?.is ?? NaN, cls: 'pop' },
      ...(clipFd ? [{ head: 'CLIP-FID&thinsp;↓', better: 'low' as const, value: (g: Group) => groupMetrics(g, byCell)?.clipFd ?? NaN, cls: 'pop' }] : []),
    ];
    const best = columns.map((c) => {
      const vals = rows.map(c.value).filter((v) => Number.isFinite(v));
      if (vals.length < 2) return NaN;
      return c.better === 'high' ? Math.max(...vals) : Math.min(...vals);
    });
    const head = columns.map((c) => `<th class="${c.cls ?? 'eval'}">${c.head}</th>`).join('');
    const body = rows
      .map((g) => {
        const cells = columns
          .map((c, i) => {
            const v = c.value(g);
            const s = c.spread?.(g);
            const isBest = Number.isFinite(best[i]) && v === best[i];
            const spread = s !== undefined && Number.isFinite(s) ? `<span class="pm">±${fmt(s, 2)}</span>` : '';
            return `<td class="${isBest ? 'best' : ''}">${fmt(v)}${spread}</td>`;
          })
          .join('');
        return `<tr><th scope="row">${escapeHtml(g.verifiers)}</th>${cells}<td class="n">${g.records.length}</td><td class="n">${fmt(mean(g.records.map((r) => r.nfeTotal)), 4)}</td></tr>`;
      })
      .join('\n');
    tables.push(`<table class="data cross" data-algorithm="${escapeHtml(algorithm)}">
<caption><b>${escapeHtml(algorithm)}</b> at its largest budget, ${fmt(largest)} NFEs: mean evaluation score of the final samples (± standard deviation over items and seeds) for each search verifier set; ${clipFd ? 'FD, IS and CLIP-FID' : 'FD and IS'} are the cell’s population metrics. Best per column in bold.</caption>
<thead><tr><th rowspan="2">search verifiers</th><th colspan="${evalVerifiers.length}" class="group">evaluation verifiers ↑</th><th colspan="${clipFd ? 3 : 2}" class="group">population</th><th rowspan="2">searches</th><th rowspan="2">mean NFEs</th></tr>
<tr>${head}</tr></thead>
<tbody>${body}</tbody></table>`);
  }
  return tables.join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// The document

const CSS = `
:root { --ink: #1d1d1f; --muted: #666a70; --rule: #d4d4d8; --soft: #f5f5f7; --accent: #1f4e89; --best: #e6f0e0; }
* { box-sizing: border-box; }
html { background: #fafafa; }
body { margin: 0 auto; max-width: 1120px; padding: 32px 40px 64px; background: white; color: var(--ink);
  font: 14px/1.5 "Helvetica Neue", Helvetica, Arial, sans-serif; }
h1 { font-size: 24px; font-weight: 600; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 17px; font-weight: 600; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--rule); }
h2 .num { color: var(--muted); font-weight: 400; margin-right: 6px; }
h4 { font-size: 13px; font-weight: 600; margin: 0 0 6px; }
p.note { color: var(--muted); margin: 4px 0 12px; font-size: 13px; }
.subtitle { color: var(--muted); font-size: 13px; margin-bottom: 18px; }
.subtitle code { font-size: 12px; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 10px 24px;
  padding: 14px 18px; background: var(--soft); border: 1px solid var(--rule); border-radius: 6px; }
.summary dl { margin: 0; }
.summary dt { font-size: 11px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); margin-top: 6px; }
.summary dd { margin: 0; font-size: 14px; }
.summary .big { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.summary .failed { color: #b3261e; }
.chips span { display: inline-block; padding: 0 7px; margin: 2px 4px 2px 0; border: 1px solid var(--rule); border-radius: 10px;
  background: white; font-size: 12px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 20px 28px; }
figure { margin: 0; }
figure.fig { break-inside: avoid; }
figure.fig svg.plot { display: block; max-width: 100%; height: auto; }
figure.fig figcaption { font-size: 12.5px; color: #333; margin-top: 4px; max-width: 560px; }
figure.fig figcaption b.label { font-weight: 600; }
table.data { border-collapse: collapse; margin: 8px 0 22px; font-size: 13px; font-variant-numeric: tabular-nums; }
table.data caption { caption-side: top; text-align: left; font-size: 12.5px; color: #333; padding-bottom: 6px; max-width: 900px; }
table.data caption b { color: var(--ink); }
table.data thead tr:first-child th { border-top: 2px solid var(--ink); }
table.data thead tr:last-child th, table.data thead th[rowspan] { border-bottom: 1px solid var(--ink); }
table.cross { width: 100%; }
table.cross td { width: 13%; }
table.data tbody tr:last-child th, table.data tbody tr:last-child td { border-bottom: 2px solid var(--ink); }
table.data th, table.data td { padding: 4px 12px; text-align: right; white-space: nowrap; }
table.data th { font-weight: 600; }
table.data th[scope=row], table.data thead th:first-child { text-align: left; font-weight: 500; }
table.data th.group { font-weight: 500; color: var(--muted); border-bottom: 1px solid var(--rule); text-align: center; }
table.data td.best { font-weight: 700; background: var(--best); }
table.data td .pm { color: var(--muted); font-size: 11px; margin-left: 3px; font-weight: 400; }
table.data td.n { color: var(--muted); }
table.data th.pop { border-left: 1px solid var(--rule); }
table.data tbody tr:nth-child(even) { background: #fbfbfc; }
table.compact th, table.compact td { padding: 3px 10px; }
.costs { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 20px 28px; align-items: start; }
ol.failures { list-style: none; padding: 0; margin: 8px 0; }
li.failure { border-left: 3px solid #c0392b; background: #fdf6f5; padding: 8px 12px; margin-bottom: 10px; border-radius: 0 4px 4px 0; }
li.failure .what { font-size: 13px; }
li.failure .sep { color: var(--muted); }
li.failure .when { color: var(--muted); font-size: 12px; margin-left: 8px; }
li.failure .wf { color: var(--muted); font-size: 12px; word-break: break-all; }
li.failure pre.error { margin: 6px 0 0; white-space: pre-wrap; word-break: break-word; font-size: 12px; color: #8a1c14; }
details { margin-top: 28px; font-size: 13px; }
details pre { background: var(--soft); border: 1px solid var(--rule); padding: 10px 12px; overflow: auto; max-height: 480px; font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--rule); padding-top: 8px; }
@media print { html { background: white; } body { padding: 0; max-width: none; } h2 { break-after: avoid; } }
`;

function figuresHtml(figures: Figure[], counter: { figures: number }, cls = 'figures', extra = ''): string {
  return `<div class="${cls}">${figures
    .map((f) => {
      const n = ++counter.figures;
      return `<figure class="fig" id="figure-${n}">${f.svg}<figcaption><b class="label">Figure ${n}.</b> ${f.caption}</figcaption></figure>`;
    })
    .join('\n')}${extra ? `<div>${extra}</div>` : ''}</div>`;
}

function chips(values: string[]): string {
  return values.length === 0 ? '–' : `<span class="chips">${values.map((v) => `<span>${escapeHtml(v)}</span>`).join('')}</span>`;
}

function failuresHtml(failed: SearchRecord[]): string {
  if (failed.length === 0) return '<p class="note">No search failed.</p>';
  const items = [...failed]
    .sort((a, b) => a.cell.localeCompare(b.cell) || a.itemId.localeCompare(b.itemId) || a.seed - b.seed)
    .map(
      (r) => `<li class="failure"><div class="what"><b>${escapeHtml(r.itemLabel)}</b> <span class="sep">·</span> <code>${escapeHtml(r.cell)}</code> <span class="sep">·</span> seed ${
        r.seed
      } <span class="when">finished ${escapeHtml(r.finishedAt)}</span></div><div class="wf">workflow <code>${escapeHtml(r.workflowId)}</code></div><pre class="error">${escapeHtml(
        r.error ?? 'unknown error',
      )}</pre></li>`,
    )
    .join('\n');
  return `<p class="note">${failed.length} search${failed.length === 1 ? '' : 'es'} failed; ${
    failed.length === 1 ? 'it is' : 'they are'
  } left out of every figure and table above.</p><ol class="failures">${items}</ol>`;
}

function specHtml(spec: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(spec, null, 2) ?? 'null';
  } catch {
    text = String(spec);
  }
  const limit = 20000;
  if (text.length > limit) text = `${text.slice(0, limit)}\n… (${text.length - limit} more characters)`;
  return `<details><summary>Campaign spec</summary><pre>${escapeHtml(text)}</pre></details>`;
}

/** The campaign's report as one self-contained HTML document. */
export async function renderReport(input: ReportInput): Promise<string> {
  const counter = { figures: 0 };
  const { campaign, searches, cellMetrics } = input;
  const done = searches.filter((r) => r.status === 'done');
  const failed = searches.filter((r) => r.status !== 'done');
  const byCell = new Map(cellMetrics.filter((m) => m.campaignId === campaign.campaignId || !m.campaignId).map((m) => [m.cell, m]));
  const groups = groupCells(done);
  const evalVerifiers = evaluationVerifiers(campaign, done);
  const dataset = datasetSummary(campaign, searches);
  const algorithms = unique(searches.map(algorithmLabel)).sort();
  const verifierSets = unique(searches.map(verifierSet)).sort();
  const budgets = unique(searches.map((r) => r.budgetNfe)).sort((a, b) => a - b);

  const scaling = await scalingFigures(groups, evalVerifiers, byCell, Boolean(input.images && input.images.searches.size > 0));
  const costs = await costFigures(groups, done);
  const pictures = input.images && input.images.searches.size > 0 ? imageGallery(groups, evalVerifiers, input.images) : null;
  const galleryHtml = pictures ? pictures.html : await latentGallery(groups, evalVerifiers);

  const categories =
    dataset.categories.length === 0
      ? 'none'
      : dataset.categories
          .slice(0, 12)
          .map((c) => `${c.name} (${c.items})`)
          .join(', ') + (dataset.categories.length > 12 ? `, … ${dataset.categories.length - 12} more` : '');

  let section = 0;
  const h2 = (id: string, title: string) => `<h2 id="${id}"><span class="num">${++section}</span>${title}</h2>`;

  const header = `<header>
<h1>${escapeHtml(campaign.name)}</h1>
<div class="subtitle">Noise-search campaign <code>${escapeHtml(campaign.campaignId)}</code> · created ${escapeHtml(campaign.createdAt)} · inference-time search over diffusion noises (Ma et al. 2025, arXiv 2501.09732)</div>
<div class="summary">
<dl><dt>Dataset</dt><dd>${dataset.names.length > 0 ? `${chips(dataset.names)}<br>` : ''}<span class="big">${dataset.items}</span> items · ${dataset.categories.length} categories</dd>
<dt>Categories</dt><dd>${escapeHtml(categories)}</dd></dl>
<dl><dt>Algorithms</dt><dd>${chips(algorithms)}</dd><dt>Search verifiers</dt><dd>${chips(verifierSets)}</dd>
<dt>Evaluation verifiers</dt><dd>${chips(evalVerifiers)}</dd><dt>Budgets (NFEs)</dt><dd>${chips(budgets.map((b) => fmt(b)))}</dd></dl>
<dl><dt>Searches</dt><dd><span class="big">${done.length}</span> done · <span class="big${failed.length > 0 ? ' failed' : ''}">${failed.length}</span> failed</dd>
<dt>Total NFEs (logical / executed)</dt><dd><span class="big">${fmt(sum(searches.map((r) => r.nfeTotal)))}</span> / ${fmt(sum(searches.map((r) => r.nfeExecuted)))}</dd>
<dt>Verifier time · wall time (summed)</dt><dd>${fmtSeconds(sum(searches.map((r) => r.verifierSeconds)))} · ${fmtSeconds(sum(searches.map((r) => r.wallSeconds)))}</dd></dl>
</div>
</header>`;

  const body: string[] = [header];
  body.push(h2('scaling', 'Scaling with inference compute'));
  body.push(
    scaling.length > 0
      ? `<p class="note">Each line is one algorithm with one search verifier set; each point one budget, placed at the mean total NFEs (search + final generation) its searches spent. Colour: algorithm; dash and marker: search verifiers.</p>${figuresHtml(scaling, counter)}`
      : '<p class="note">No finished search to plot.</p>',
  );
  body.push(h2('table', 'Search verifiers against evaluation verifiers'));
  body.push(groups.length > 0 ? crossTables(groups, evalVerifiers, byCell) : '<p class="note">No finished search.</p>');
  body.push(h2('costs', 'Compute breakdown'));
  body.push(costs.length > 0 ? figuresHtml(costs, counter, 'costs', verifierCostTable(done)) : '<p class="note">No finished search.</p>');
  if (pictures) {
    const shown = Math.min(pictures.prompts, GALLERY_PROMPTS);
    body.push(h2('gallery', 'Final samples against no search'));
    body.push(
      `<p class="note">For ${shown === pictures.prompts ? `each of the ${shown}` : `the first ${shown} of ${pictures.prompts}`} prompts (by item id), at its smallest seed: the no-search baseline (the noise random search draws first, generated once with the model's default sampler, outside every budget) beside the final sample of each algorithm and search verifier set at each budget, with its evaluation scores (${
        evalVerifiers[0] ? `<b>${escapeHtml(evalVerifiers[0])}</b> first` : 'none'
      }). Images are the decoded PNGs, embedded in this file as data: URIs, so it opens offline${
        pictures.left > 0 ? `; ${pictures.left} more over ${MAX_EMBEDDED_BYTES >> 20} MB are left out here and kept in the campaign's samples/ folder` : ''
      }.</p>${pictures.html}`,
    );
  } else {
    body.push(h2('gallery', 'Best final samples at the largest budget'));
    body.push(
      galleryHtml
        ? `<p class="note">For each algorithm and search verifier set, the ${GALLERY_SIZE} final samples with the highest ${
            evalVerifiers[0] ? `<b>${escapeHtml(evalVerifiers[0])}</b> score` : 'score'
          }; each latent drawn as a near-square heatmap (4×4 for the 16-dim latent, row-major), blue negative, red positive, one colour scale for all.</p>${galleryHtml}`
        : '<p class="note">No final sample to show.</p>',
    );
  }
  body.push(h2('failures', 'Failed searches'));
  body.push(failuresHtml(failed));
  body.push(specHtml(campaign.spec));
  body.push(`<footer>noisesearch report · ${searches.length} searches · ${cellMetrics.length} cell metric records · rendered with Vega-Lite to inline SVG</footer>`);

  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(campaign.name)} · noisesearch report</title>
<style>${CSS}${GALLERY_CSS}</style>
</head>
<body>
${body.join('\n')}
</body>
</html>
`;
}

/** Writes the report (creating its folder) and returns the path written. */
export async function writeReport(input: ReportInput, outFile: string): Promise<string> {
  const html = await renderReport(input);
  const file = path.resolve(outFile);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, html, 'utf8');
  return file;
}
