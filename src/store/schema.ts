// The one schema both stores share: the tables, their columns and the mapping between records and rows.
// Only the column types and the placeholders differ between SQLite and PostgreSQL; the statements,
// including the upsert that never lets a 'failed' search overwrite a 'done' one, are the same.
import type { CampaignRecord, CellMetricsRecord, SearchRecord } from './types';

export type Dialect = 'sqlite' | 'postgres';

/** text: strings (compared byte-wise); int: whole numbers up to 2^53; real: doubles; json: any JSON value. */
type ColumnKind = 'text' | 'int' | 'real' | 'json';

interface Column<R> {
  name: string;
  kind: ColumnKind;
  nullable?: boolean;
  get(record: R): unknown;
}

interface Table<R> {
  name: string;
  columns: Column<R>[];
  key: string[];
  /** Columns left as first written when a row is upserted again. */
  keep?: string[];
  /** Extra condition on the update of an upsert: the existing row is `<table>`, the new one `excluded`. */
  updateWhere?: string;
}

const TYPES: Record<Dialect, Record<ColumnKind, string>> = {
  sqlite: { text: 'TEXT', int: 'INTEGER', real: 'REAL', json: 'TEXT' },
  // TEXT COLLATE "C": ordered by bytes as SQLite does, whatever the database's locale.
  postgres: { text: 'TEXT COLLATE "C"', int: 'BIGINT', real: 'DOUBLE PRECISION', json: 'JSONB' },
};

export const CAMPAIGNS: Table<CampaignRecord> = {
  name: 'campaigns',
  key: ['campaign_id'],
  keep: ['created_at'],
  columns: [
    { name: 'campaign_id', kind: 'text', get: (r) => r.campaignId },
    { name: 'name', kind: 'text', get: (r) => r.name },
    { name: 'spec', kind: 'json', get: (r) => r.spec },
    { name: 'created_at', kind: 'text', get: (r) => r.createdAt },
  ],
};

export const SEARCHES: Table<SearchRecord> = {
  name: 'searches',
  key: ['workflow_id'],
  // A late failure report (an earlier attempt's) never erases a success.
  updateWhere: `NOT (searches.status = 'done' AND excluded.status = 'failed')`,
  columns: [
    { name: 'workflow_id', kind: 'text', get: (r) => r.workflowId },
    { name: 'campaign_id', kind: 'text', get: (r) => r.campaignId },
    { name: 'item_id', kind: 'text', get: (r) => r.itemId },
    { name: 'item_label', kind: 'text', get: (r) => r.itemLabel },
    { name: 'item_category', kind: 'text', nullable: true, get: (r) => r.itemCategory },
    { name: 'cell', kind: 'text', get: (r) => r.cell },
    { name: 'algorithm', kind: 'text', get: (r) => r.algorithm },
    { name: 'search_verifiers', kind: 'json', get: (r) => r.searchVerifiers },
    { name: 'budget_nfe', kind: 'int', get: (r) => r.budgetNfe },
    { name: 'seed', kind: 'int', get: (r) => r.seed },
    { name: 'status', kind: 'text', get: (r) => r.status },
    { name: 'error', kind: 'text', nullable: true, get: (r) => r.error },
    { name: 'spec', kind: 'json', get: (r) => r.spec },
    { name: 'result', kind: 'json', nullable: true, get: (r) => r.result },
    { name: 'evaluation', kind: 'json', get: (r) => r.evaluation },
    { name: 'sample', kind: 'json', get: (r) => r.sample },
    { name: 'nfe_search', kind: 'int', get: (r) => r.nfeSearch },
    { name: 'nfe_final', kind: 'int', get: (r) => r.nfeFinal },
    { name: 'nfe_total', kind: 'int', get: (r) => r.nfeTotal },
    { name: 'nfe_executed', kind: 'int', get: (r) => r.nfeExecuted },
    { name: 'verifier_seconds', kind: 'real', get: (r) => r.verifierSeconds },
    { name: 'wall_seconds', kind: 'real', get: (r) => r.wallSeconds },
    { name: 'finished_at', kind: 'text', get: (r) => r.finishedAt },
    // Added after the first release, copied from the result for SQL: the measured fleet seconds (null for a
    // failed search, and for one whose result predates them).
    { name: 'denoise_seconds', kind: 'real', nullable: true, get: (r) => r.result?.seconds?.denoise ?? null },
    { name: 'verifier_seconds_by_name', kind: 'json', nullable: true, get: (r) => r.result?.seconds?.verifiers ?? null },
  ],
};

export const CELL_METRICS: Table<CellMetricsRecord> = {
  name: 'cell_metrics',
  key: ['campaign_id', 'cell'],
  columns: [
    { name: 'campaign_id', kind: 'text', get: (r) => r.campaignId },
    { name: 'cell', kind: 'text', get: (r) => r.cell },
    { name: 'samples', kind: 'int', get: (r) => r.samples },
    { name: 'frechet_distance', kind: 'real', get: (r) => r.frechetDistance },
    { name: 'inception_score', kind: 'real', get: (r) => r.inceptionScore },
    // Added after the first release: a store made before it gets the column when opened.
    { name: 'clip_frechet_distance', kind: 'real', nullable: true, get: (r) => r.clipFrechetDistance },
    { name: 'computed_at', kind: 'text', get: (r) => r.computedAt },
  ],
};

const TABLES: Table<any>[] = [CAMPAIGNS, SEARCHES, CELL_METRICS];

function columnDefinition<R>(column: Column<R>, dialect: Dialect): string {
  return `${column.name} ${TYPES[dialect][column.kind]}${column.nullable ? '' : ' NOT NULL'}`;
}

function createTable<R>(table: Table<R>, dialect: Dialect): string {
  const columns = table.columns.map((c) => `  ${columnDefinition(c, dialect)}`);
  const strict = dialect === 'sqlite' ? ' STRICT' : '';
  return `CREATE TABLE IF NOT EXISTS ${table.name} (\n${columns.join(',\n')},\n  PRIMARY KEY (${table.key.join(', ')})\n)${strict}`;
}

/** The statements that create the schema; each is idempotent. */
export function schemaStatements(dialect: Dialect): string[] {
  return [
    createTable(CAMPAIGNS, dialect),
    createTable(SEARCHES, dialect),
    `CREATE INDEX IF NOT EXISTS searches_campaign ON searches (campaign_id, status)`,
    createTable(CELL_METRICS, dialect),
  ];
}

/** Each table's column names as the database has them: (table_name, column_name) rows of the schema in use. */
export const EXISTING_COLUMNS: Record<Dialect, string> = {
  sqlite: `SELECT m.name AS table_name, p.name AS column_name FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'`,
  postgres: `SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()`,
};

/**
 * ALTER TABLE ... ADD COLUMN for each column a store made by an earlier version lacks, run after
 * `schemaStatements` with the rows of EXISTING_COLUMNS. Rows written before a column was added have no
 * value for it, so such a column must be nullable.
 */
export function addColumnStatements(dialect: Dialect, existing: Array<Record<string, unknown>>): string[] {
  const statements: string[] = [];
  for (const table of TABLES) {
    const have = new Set(existing.filter((r) => r.table_name === table.name).map((r) => r.column_name));
    for (const column of table.columns.filter((c) => !have.has(c.name))) {
      if (!column.nullable) throw new Error(`results store: table ${table.name} lacks the column ${column.name}, which its existing rows have no value for; a column added to a released table must be nullable`);
      statements.push(`ALTER TABLE ${table.name} ADD COLUMN ${columnDefinition(column, dialect)}`);
    }
  }
  return statements;
}

/** INSERT ... ON CONFLICT (key) DO UPDATE: writing the same record twice leaves one row. */
export function upsertStatement<R>(table: Table<R>, dialect: Dialect): string {
  const names = table.columns.map((c) => c.name);
  const values = table.columns.map((c, i) => (dialect === 'sqlite' ? '?' : c.kind === 'json' ? `$${i + 1}::jsonb` : `$${i + 1}`));
  const updated = names.filter((n) => !table.key.includes(n) && !(table.keep ?? []).includes(n));
  return (
    `INSERT INTO ${table.name} (${names.join(', ')}) VALUES (${values.join(', ')})\n` +
    `ON CONFLICT (${table.key.join(', ')}) DO UPDATE SET ${updated.map((n) => `${n} = excluded.${n}`).join(', ')}` +
    (table.updateWhere ? `\nWHERE ${table.updateWhere}` : '')
  );
}

/**
 * PostgreSQL keeps no NUL in TEXT and no \u0000 in JSONB; SQLite would. Refused on both, so a value is
 * stored, or not, whichever store a campaign uses.
 */
function refuseNul(table: string, column: string, text: string, nul: string | RegExp): void {
  if (typeof nul === 'string' ? text.includes(nul) : nul.test(text)) throw new Error(`${table}.${column}: holds a NUL character (\\0), which the results store cannot keep`);
}

/** The record's values in column order; JSON values as JSON text (SQL NULL for a null nullable column). */
export function toParams<R>(table: Table<R>, record: R): unknown[] {
  return table.columns.map((c) => {
    const value = c.get(record);
    if (value === undefined || (value === null && c.nullable)) {
      if (!c.nullable) throw new Error(`${table.name}.${c.name}: a value is required`);
      return null;
    }
    if (c.kind === 'json') {
      const json = JSON.stringify(value);
      // \u0000 escaped, not a backslash of the text followed by "u0000" (that is \\u0000).
      refuseNul(table.name, c.name, json, /(^|[^\\])(\\\\)*\\u0000/);
      return json;
    }
    if (c.kind === 'text') refuseNul(table.name, c.name, String(value), '\0');
    if ((c.kind === 'int' || c.kind === 'real') && typeof value !== 'number') throw new Error(`${table.name}.${c.name}: ${String(value)} is not a number`);
    if (c.kind === 'int' && !Number.isSafeInteger(value)) throw new Error(`${table.name}.${c.name}: ${String(value)} is not a whole number up to 2^53`);
    return value;
  });
}

/** Reads a row back into column values: JSON text parsed (SQLite), BIGINT strings made numbers (pg). */
function columnValue(kind: ColumnKind, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  if (kind === 'json') return typeof value === 'string' ? JSON.parse(value) : value;
  if (kind === 'int' || kind === 'real') return typeof value === 'number' ? value : Number(value);
  return value;
}

type Row = Record<string, unknown>;

function read<R>(table: Table<R>, row: Row): Record<string, any> {
  const out: Record<string, any> = {};
  for (const c of table.columns) out[c.name] = columnValue(c.kind, row[c.name]);
  return out;
}

export function campaignFromRow(row: Row): CampaignRecord {
  const r = read(CAMPAIGNS, row);
  return { campaignId: r.campaign_id, name: r.name, spec: r.spec, createdAt: r.created_at };
}

export function searchFromRow(row: Row): SearchRecord {
  const r = read(SEARCHES, row);
  return {
    workflowId: r.workflow_id,
    campaignId: r.campaign_id,
    itemId: r.item_id,
    itemLabel: r.item_label,
    itemCategory: r.item_category,
    cell: r.cell,
    algorithm: r.algorithm,
    searchVerifiers: r.search_verifiers,
    budgetNfe: r.budget_nfe,
    seed: r.seed,
    status: r.status,
    error: r.error,
    spec: r.spec,
    result: r.result,
    evaluation: r.evaluation,
    sample: r.sample,
    nfeSearch: r.nfe_search,
    nfeFinal: r.nfe_final,
    nfeTotal: r.nfe_total,
    nfeExecuted: r.nfe_executed,
    verifierSeconds: r.verifier_seconds,
    wallSeconds: r.wall_seconds,
    finishedAt: r.finished_at,
  };
}

export function cellMetricsFromRow(row: Row): CellMetricsRecord {
  const r = read(CELL_METRICS, row);
  return {
    campaignId: r.campaign_id,
    cell: r.cell,
    samples: r.samples,
    frechetDistance: r.frechet_distance,
    inceptionScore: r.inception_score,
    ...(r.clip_frechet_distance !== null ? { clipFrechetDistance: r.clip_frechet_distance } : {}),
    computedAt: r.computed_at,
  };
}

/** The queries, with `?` placeholders; PostgreSQL's are numbered by `numbered`. */
export const QUERIES = {
  getCampaign: `SELECT * FROM campaigns WHERE campaign_id = ?`,
  searches: `SELECT * FROM searches WHERE campaign_id = ? ORDER BY finished_at, workflow_id`,
  // The candidate IDs travel as one JSON array parameter, so a page of hundreds needs no statement of its own.
  doneAmong: `SELECT workflow_id FROM searches WHERE campaign_id = ? AND status = 'done' AND workflow_id IN (SELECT value FROM json_each(?))`,
  cellMetrics: `SELECT * FROM cell_metrics WHERE campaign_id = ? ORDER BY cell`,
};

export function numbered(sql: string): string {
  let i = 0;
  return sql.replace(/\?/g, () => `$${++i}`);
}
