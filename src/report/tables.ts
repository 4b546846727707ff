// The paper's table: search verifiers against evaluation verifiers, per algorithm at its largest budget.
import type { CellMetricsRecord } from '../store/types';
import { fmt } from './format';
import { fleetSeconds, fmtSeconds, groupMetrics, mean, std, unique, type Group } from './groups';
import { escapeHtml } from './plot';
import { hasClipFd } from './scaling';

export function crossTables(groups: Group[], evalVerifiers: string[], byCell: Map<string, CellMetricsRecord>): string {
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
        return `<tr><th scope="row">${escapeHtml(g.verifiers)}</th>${cells}<td class="n">${g.records.length}</td><td class="n">${fmt(mean(g.records.map((r) => r.nfeTotal)), 4)}</td><td class="n">${fmtSeconds(mean(g.records.map((r) => fleetSeconds(r)?.total ?? NaN)))}</td></tr>`;
      })
      .join('\n');
    tables.push(`<table class="data cross" data-algorithm="${escapeHtml(algorithm)}">
<caption><b>${escapeHtml(algorithm)}</b> at its largest budget, ${fmt(largest)} NFEs: mean evaluation score of the final samples (± standard deviation over items and seeds) for each search verifier set; ${clipFd ? 'FD, IS and CLIP-FID' : 'FD and IS'} are the cell’s population metrics. Best per column in bold.</caption>
<thead><tr><th rowspan="2">search verifiers</th><th colspan="${evalVerifiers.length}" class="group">evaluation verifiers ↑</th><th colspan="${clipFd ? 3 : 2}" class="group">population</th><th rowspan="2">searches</th><th rowspan="2">mean NFEs</th><th rowspan="2">mean fleet seconds</th></tr>
<tr>${head}</tr></thead>
<tbody>${body}</tbody></table>`);
  }
  return tables.join('\n');
}
