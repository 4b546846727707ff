// A campaign's report: one self-contained HTML document (inline CSS and SVG, and an image model's PNGs
// as data: URIs: no script, no font, no image and no stylesheet from anywhere else, readable without
// JavaScript), laid out like the figures and tables of Ma et al. 2025 (arXiv 2501.09732): scaling curves
// against NFEs and against measured fleet seconds (scaling.ts), the search-verifier x evaluation-verifier
// table (tables.ts), cost breakdowns (costs.ts), a gallery of final samples (gallery.ts) and the failed
// searches. Grouping and numbers: groups.ts.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { SampleImages } from '../campaign/samples';
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from '../store/types';
import { costFigures, secondsTable, verifierCostTable } from './costs';
import { fmt } from './format';
import { GALLERY_CSS, GALLERY_PROMPTS, GALLERY_SIZE, imageGallery, latentGallery, MAX_EMBEDDED_BYTES } from './gallery';
import { algorithmLabel, datasetSummary, evaluationVerifiers, fleetSeconds, fmtSeconds, groupCells, sum, unique, verifierSet } from './groups';
import { escapeHtml, type Figure } from './plot';
import { scalingFigures } from './scaling';
import { crossTables } from './tables';

export { samplePicture } from './plot';

export interface ReportInput {
  campaign: CampaignRecord;
  searches: SearchRecord[];
  cellMetrics: CellMetricsRecord[];
  /** An image model's decoded final samples and no-search baselines (src/campaign/samples.ts). */
  images?: SampleImages;
}

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
  // Searches recorded before results carried seconds have none: left out, rather than counted as 0.
  const measured = searches.map(fleetSeconds).filter((s) => s !== null);

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
<dt>Verifier time · wall time (summed)</dt><dd>${fmtSeconds(sum(searches.map((r) => r.verifierSeconds)))} · ${fmtSeconds(sum(searches.map((r) => r.wallSeconds)))}</dd>
<dt>Fleet time: denoising · verifiers (summed)</dt><dd>${measured.length > 0 ? `${fmtSeconds(sum(measured.map((s) => s.denoise)))} · ${fmtSeconds(sum(measured.map((s) => s.total - s.denoise)))}` : 'not measured'}</dd></dl>
</div>
</header>`;

  const body: string[] = [header];
  body.push(h2('scaling', 'Scaling with inference compute'));
  body.push(
    scaling.length > 0
      ? `<p class="note">Each line is one algorithm with one search verifier set; each point one budget, placed at the mean total NFEs (search + final generation) its searches spent and, beside it, at the mean fleet seconds they measured (denoising and verifiers on the servers), where a costlier verifier moves a curve right. Colour: algorithm; dash and marker: search verifiers.</p>${figuresHtml(scaling, counter)}`
      : '<p class="note">No finished search to plot.</p>',
  );
  body.push(h2('table', 'Search verifiers against evaluation verifiers'));
  body.push(groups.length > 0 ? crossTables(groups, evalVerifiers, byCell) : '<p class="note">No finished search.</p>');
  body.push(h2('costs', 'Compute breakdown'));
  body.push(costs.length > 0 ? figuresHtml(costs, counter, 'costs', verifierCostTable(done)) + secondsTable(groups) : '<p class="note">No finished search.</p>');
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
