// The compute breakdown: where each search's NFEs went, and what the fleet measured it spent, on
// denoising and on each verifier.
import type { SearchRecord } from '../store/types';
import { fmt } from './format';
import { algorithmLabel, fleetSeconds, fmtSeconds, mean, unique, type Group } from './groups';
import { escapeHtml, figure, type Figure } from './plot';

export async function costFigures(groups: Group[], done: SearchRecord[]): Promise<Figure[]> {
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

export function verifierCostTable(done: SearchRecord[]): string {
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

/**
 * Per cell: mean NFEs beside the mean measured fleet seconds, split into denoising and each verifier, and the
 * verifiers' share of the time. Two cells at the same NFEs can differ several-fold here.
 */
export function secondsTable(groups: Group[]): string {
  const measured = groups
    .map((g) => ({ g, seconds: g.records.map(fleetSeconds).filter((s) => s !== null) }))
    .filter(({ seconds }) => seconds.length > 0);
  if (measured.length === 0) return '';
  const verifiers = unique(measured.flatMap(({ seconds }) => seconds.flatMap((s) => Object.keys(s.verifiers)))).sort();
  const rows = measured
    .map(({ g, seconds }) => {
      const denoise = mean(seconds.map((s) => s.denoise));
      const total = mean(seconds.map((s) => s.total));
      const each = verifiers.map((v) => (g.verifiers.split('+').includes(v) ? fmtSeconds(mean(seconds.map((s) => s.verifiers[v] ?? 0))) : '–'));
      const share = total > 0 ? `${fmt((100 * (total - denoise)) / total, 3)} %` : '–';
      return `<tr><th scope="row">${escapeHtml(g.algorithm)}</th><td class="text">${escapeHtml(g.verifiers)}</td><td>${fmt(g.budget)}</td><td>${fmt(mean(g.records.map((r) => r.nfeTotal)), 4)}</td><td>${fmtSeconds(denoise)}</td>${each
        .map((e) => `<td>${e}</td>`)
        .join('')}<td>${fmtSeconds(total)}</td><td>${share}</td><td class="n">${seconds.length}</td></tr>`;
    })
    .join('\n');
  return `<table class="data compact seconds"><caption>Measured fleet seconds per search (mean over the cell's searches that measured them): the servers' denoising and each search verifier, not wall time; NFE-matched cells can differ here by what their verifiers cost.</caption>
<thead><tr><th>algorithm</th><th>search verifiers</th><th>budget</th><th>mean NFEs</th><th>denoising</th>${verifiers.map((v) => `<th>${escapeHtml(v)}</th>`).join('')}<th>total</th><th>verifier share</th><th>searches</th></tr></thead>
<tbody>${rows}</tbody></table>`;
}
