// Searches as files for analysis, read by pandas as they are: `pd.read_csv(path)` (RFC 4180, header row,
// one row per search, flat columns) or `pd.read_json(path, lines=True)` (the same flat fields plus the
// nested `result` and `sample`). Each row carries its grid cell's population metrics (`cell_*`, empty
// where the cell has none), so a cell-level table is a `groupby('cell').first()` away. Numbers are written in the shortest form that reads back to the same
// double; pass `float_precision='round_trip'` (read_csv) or `precise_float=True` (read_json) for exactness.
import type { CellMetricsRecord, SearchRecord } from './types';

export type ExportFormat = 'csv' | 'jsonl';

type Flat = Record<string, string | number | null>;

const FIXED_COLUMNS = [
  'workflow_id', 'campaign_id', 'item_id', 'item_label', 'item_category', 'cell', 'algorithm', 'search_verifiers',
  'budget_nfe', 'seed', 'status', 'error', 'best_score', 'nfe_search', 'nfe_final', 'nfe_total', 'nfe_executed',
  'verifier_seconds', 'denoise_seconds', 'fleet_seconds', 'wall_seconds', 'finished_at', 'cell_frechet_distance', 'cell_inception_score', 'cell_clip_frechet_distance',
] as const;

function searchScores(record: SearchRecord): Record<string, number> {
  return record.result?.best.scores ?? {};
}

function verifierSecondsByName(record: SearchRecord): Record<string, number> {
  return record.result?.seconds?.verifiers ?? {};
}

/**
 * The column names: the fixed ones, then `eval_<name>`, `score_<name>` and `seconds_<verifier>` (the
 * measured seconds of each search verifier) over all records, each sorted.
 */
export function exportColumns(records: SearchRecord[]): string[] {
  const evals = new Set<string>();
  const scores = new Set<string>();
  const seconds = new Set<string>();
  for (const r of records) {
    for (const name of Object.keys(r.evaluation ?? {})) evals.add(name);
    for (const name of Object.keys(searchScores(r))) scores.add(name);
    for (const name of Object.keys(verifierSecondsByName(r))) seconds.add(name);
  }
  const sorted = (names: Set<string>) => [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return [...FIXED_COLUMNS, ...sorted(evals).map((n) => `eval_${n}`), ...sorted(scores).map((n) => `score_${n}`), ...sorted(seconds).map((n) => `seconds_${n}`)];
}

function flatten(record: SearchRecord, columns: string[], cell: CellMetricsRecord | undefined): Flat {
  const fixed: Record<(typeof FIXED_COLUMNS)[number], string | number | null> = {
    workflow_id: record.workflowId,
    campaign_id: record.campaignId,
    item_id: record.itemId,
    item_label: record.itemLabel,
    item_category: record.itemCategory,
    cell: record.cell,
    algorithm: record.algorithm,
    search_verifiers: record.searchVerifiers.join('+'),
    budget_nfe: record.budgetNfe,
    seed: record.seed,
    status: record.status,
    error: record.error,
    best_score: record.result?.best.score ?? null,
    nfe_search: record.nfeSearch,
    nfe_final: record.nfeFinal,
    nfe_total: record.nfeTotal,
    nfe_executed: record.nfeExecuted,
    verifier_seconds: record.verifierSeconds,
    denoise_seconds: record.result?.seconds?.denoise ?? null,
    fleet_seconds: record.result?.seconds?.total ?? null,
    wall_seconds: record.wallSeconds,
    finished_at: record.finishedAt,
    cell_frechet_distance: cell?.frechetDistance ?? null,
    cell_inception_score: cell?.inceptionScore ?? null,
    cell_clip_frechet_distance: cell?.clipFrechetDistance ?? null,
  };
  const flat: Flat = {};
  const scores = searchScores(record);
  const seconds = verifierSecondsByName(record);
  for (const column of columns) {
    if (column in fixed) flat[column] = fixed[column as keyof typeof fixed];
    else if (column.startsWith('eval_')) flat[column] = record.evaluation?.[column.slice(5)] ?? null;
    else if (column.startsWith('score_')) flat[column] = scores[column.slice(6)] ?? null;
    else flat[column] = seconds[column.slice(8)] ?? null;
  }
  return flat;
}

/** One CSV field: numbers as JS writes them (pandas reads `inf`, not `Infinity`), nulls and NaN empty. */
function csvField(value: string | number | null): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number') {
    if (Number.isNaN(value)) return '';
    if (value === Infinity) return 'inf';
    if (value === -Infinity) return '-inf';
    return String(value);
  }
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** The searches, each with the population metrics of its cell among `cellMetrics` (the same campaign's). */
export function exportSearches(records: SearchRecord[], format: ExportFormat, cellMetrics: CellMetricsRecord[] = []): string {
  const columns = exportColumns(records);
  const byCell = new Map(cellMetrics.map((m) => [JSON.stringify([m.campaignId, m.cell]), m]));
  const cellOf = (r: SearchRecord) => byCell.get(JSON.stringify([r.campaignId, r.cell]));
  if (format === 'csv') {
    const lines = [columns.map(csvField).join(',')];
    for (const r of records) {
      const flat = flatten(r, columns, cellOf(r));
      lines.push(columns.map((c) => csvField(flat[c])).join(','));
    }
    return lines.map((l) => `${l}\r\n`).join('');
  }
  if (format === 'jsonl') {
    // Non-finite numbers have no JSON form: JSON.stringify writes them as null.
    return records.map((r) => `${JSON.stringify({ ...flatten(r, columns, cellOf(r)), result: r.result, sample: r.sample })}\n`).join('');
  }
  throw new Error(`export format "${String(format)}" is unknown; use csv or jsonl`);
}
