// The numbers a report shows and how its searches group: by algorithm, search verifier set and budget.
import type { SearchSeconds } from '../search/run';
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from '../store/types';
import { fmt } from './format';


export function mean(values: number[]): number {
  const finite = values.filter((v) => Number.isFinite(v));
  return finite.length === 0 ? NaN : finite.reduce((a, b) => a + b, 0) / finite.length;
}

export function std(values: number[]): number {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length < 2) return NaN;
  const m = mean(finite);
  return Math.sqrt(finite.reduce((a, b) => a + (b - m) ** 2, 0) / (finite.length - 1));
}

export function sum(values: number[]): number {
  return values.filter((v) => Number.isFinite(v)).reduce((a, b) => a + b, 0);
}

export function fmtSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return '–';
  if (seconds < 1) return `${fmt(seconds * 1000, 3)} ms`;
  if (seconds < 120) return `${fmt(seconds, 3)} s`;
  if (seconds < 7200) return `${fmt(seconds / 60, 3)} min`;
  return `${fmt(seconds / 3600, 3)} h`;
}

export function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}

/**
 * The algorithm as the grid names it: the cell's first field when it is the algorithm with its parameters
 * (e.g. "zero-order(t=0.9)|..."), otherwise the record's algorithm.
 */
export function algorithmLabel(r: SearchRecord): string {
  const first = r.cell.split('|')[0]?.trim();
  return first && first !== r.algorithm && first.startsWith(r.algorithm) ? first : r.algorithm;
}

export function verifierSet(r: SearchRecord): string {
  return r.searchVerifiers.join('+');
}

export interface Group {
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
export function groupCells(done: SearchRecord[]): Group[] {
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
export function groupMetrics(g: Group, byCell: Map<string, CellMetricsRecord>): { fd: number; is: number; clipFd: number; samples: number } | null {
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
export function evaluationVerifiers(campaign: CampaignRecord, done: SearchRecord[]): string[] {
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
export function datasetSummary(campaign: CampaignRecord, searches: SearchRecord[]): DatasetSummary {
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

/** A search's measured fleet seconds; null for a result recorded before searches measured denoising. */
export function fleetSeconds(r: SearchRecord): SearchSeconds | null {
  return r.result?.seconds ?? null;
}
