// The results store: the same round-trip suite against SQLite (a temporary file) and a real PostgreSQL
// server of our own; then the CSV and JSONL exports, read back with a small RFC 4180 parser.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { Client } from 'pg';
import type { SearchResult } from '../src/search/run';
import { exportSearches } from '../src/store/export';
import { openStore } from '../src/store/index';
import type { CampaignRecord, CellMetricsRecord, ResultsStore, SearchRecord, StoreConfig } from '../src/store/types';
import { tempDir, uniqueId } from './helpers';
import { withPostgres, type StartedPostgres } from './helpers-postgres';

const PROMPT = 'a "quoted" cat, sitting\non a mat\r\nwith commas, ünïcödé 猫 and emoji 🐈 \'single\' \\ backslash';
const AWKWARD_NUMBERS = [0.1 + 0.2, -1e-300, 1e300, Number.MIN_VALUE, Number.MAX_VALUE, Number.EPSILON, 1 / 3, -123.456e-7, 2 ** 53 - 1];

function result(seed: number, score: number): SearchResult {
  return {
    algorithm: 'random',
    verifiers: ['gmm-classifier', 'clip'],
    model: 'gmm',
    condition: { classLabel: 3, prompt: PROMPT, guidanceScale: 0.1 + 0.2 },
    seed,
    budget: { nfe: 400 },
    nfe: { search: 380, final: 19, total: 399, executed: 399, failed: 19 },
    best: {
      score,
      scores: { 'gmm-classifier': score, clip: -1e-300 },
      searchScore: 1e300,
      noise: { seed: 2 ** 53 - 1, perturbations: [] },
      candidateId: 'r0-c7',
      lineage: { noise: { seed: 2 ** 53 - 1, perturbations: [] }, ops: [{ solve: { sigmaFrom: 80, sigmaTo: 0.5, solver: 'heun', steps: 10 } }] },
      key: 'AAECAwQFBgcICQoLDA0ODw',
    },
    candidates: 20,
    failedCandidates: 0,
    rounds: 3,
    stopped: false,
    verifierSeconds: 0.1 + 0.2,
    verifierCosts: { 'gmm-classifier': { calls: 20, seconds: 1 / 3 }, clip: { calls: 20, seconds: 1e-300 } },
    seconds: { denoise: 0.1 + 0.7, verifiers: { 'gmm-classifier': 1 / 3, clip: 1e-300 }, total: 0.1 + 0.7 + 1 / 3 },
  };
}

function search(campaignId: string, workflowId: string, overrides: Partial<SearchRecord> = {}): SearchRecord {
  const seed = 9_007_199_254_740_991;
  return {
    workflowId,
    campaignId,
    itemId: 'item-1',
    itemLabel: PROMPT,
    itemCategory: 'animals, "pets"',
    cell: 'random|gmm-classifier+clip|400',
    algorithm: 'random',
    searchVerifiers: ['gmm-classifier', 'clip'],
    budgetNfe: 400,
    seed,
    status: 'done',
    error: null,
    spec: { model: 'gmm', condition: { classLabel: 3, prompt: PROMPT }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier', 'clip'], budgetNfe: 400, seed },
    result: result(seed, 0.1 + 0.2),
    evaluation: { 'gmm-classifier': 0.1 + 0.2, 'aesthetic': -1e-300, 'image-reward': 1e300 },
    sample: AWKWARD_NUMBERS,
    nfeSearch: 380,
    nfeFinal: 19,
    nfeTotal: 399,
    nfeExecuted: 399,
    verifierSeconds: 0.1 + 0.2,
    wallSeconds: 1e-300,
    finishedAt: '2025-01-02T03:04:05.678Z',
    ...overrides,
  };
}

function failed(campaignId: string, workflowId: string, overrides: Partial<SearchRecord> = {}): SearchRecord {
  return search(campaignId, workflowId, { status: 'failed', error: 'model server unreachable, "retries" exhausted', result: null, evaluation: {}, sample: [], ...overrides });
}

function campaign(campaignId: string, overrides: Partial<CampaignRecord> = {}): CampaignRecord {
  return {
    campaignId,
    name: 'grid, "quoted" ✓',
    spec: { name: 'grid', items: [{ id: 'item-1', prompt: PROMPT }], budgets: [100, 400], weights: AWKWARD_NUMBERS, nested: { a: null, b: [true, false] } },
    createdAt: '2025-01-01T00:00:00.000Z',
    ...overrides,
  };
}

/** cell_metrics as stores made before CLIP-FID created it (its column list then), and a row written then. */
const OLD_CELL_METRICS = {
  sqlite: `CREATE TABLE cell_metrics (campaign_id TEXT NOT NULL, cell TEXT NOT NULL, samples INTEGER NOT NULL, frechet_distance REAL NOT NULL,
    inception_score REAL NOT NULL, computed_at TEXT NOT NULL, PRIMARY KEY (campaign_id, cell)) STRICT`,
  postgres: `CREATE TABLE cell_metrics (campaign_id TEXT COLLATE "C" NOT NULL, cell TEXT COLLATE "C" NOT NULL, samples BIGINT NOT NULL,
    frechet_distance DOUBLE PRECISION NOT NULL, inception_score DOUBLE PRECISION NOT NULL, computed_at TEXT COLLATE "C" NOT NULL, PRIMARY KEY (campaign_id, cell))`,
};
/** searches as stores made before measured seconds created it (its column list then). */
const OLD_SEARCH_COLUMNS = [
  ['workflow_id', 'text'], ['campaign_id', 'text'], ['item_id', 'text'], ['item_label', 'text'], ['item_category', 'text?'], ['cell', 'text'],
  ['algorithm', 'text'], ['search_verifiers', 'json'], ['budget_nfe', 'int'], ['seed', 'int'], ['status', 'text'], ['error', 'text?'],
  ['spec', 'json'], ['result', 'json?'], ['evaluation', 'json'], ['sample', 'json'], ['nfe_search', 'int'], ['nfe_final', 'int'],
  ['nfe_total', 'int'], ['nfe_executed', 'int'], ['verifier_seconds', 'real'], ['wall_seconds', 'real'], ['finished_at', 'text'],
];
function oldSearches(dialect: 'sqlite' | 'postgres'): string {
  const types: Record<string, string> = dialect === 'sqlite'
    ? { text: 'TEXT', int: 'INTEGER', real: 'REAL', json: 'TEXT' }
    : { text: 'TEXT COLLATE "C"', int: 'BIGINT', real: 'DOUBLE PRECISION', json: 'JSONB' };
  const columns = OLD_SEARCH_COLUMNS.map(([name, kind]) => `${name} ${types[kind.replace('?', '')]}${kind.endsWith('?') ? '' : ' NOT NULL'}`);
  return `CREATE TABLE searches (${columns.join(', ')}, PRIMARY KEY (workflow_id))${dialect === 'sqlite' ? ' STRICT' : ''}`;
}

/** Rows straight from the database the config names, not through the store: what SQL users of it see. */
async function selectRows(config: StoreConfig, sql: string, params: unknown[]): Promise<Array<Record<string, unknown>>> {
  if (config.kind === 'sqlite') {
    const db = new Database(config.path, { readonly: true });
    try {
      return db.prepare(sql).all(...params) as Array<Record<string, unknown>>;
    } finally {
      db.close();
    }
  }
  const client = new Client({ connectionString: config.url });
  await client.connect();
  try {
    let i = 0;
    return (await client.query(sql.replace(/\?/g, () => `$${++i}`), params)).rows;
  } finally {
    await client.end();
  }
}

const OLD_ROW = `INSERT INTO cell_metrics VALUES ('old-campaign', 'random|clip|400', 64, 1.5, 2.5, '2024-12-01T00:00:00.000Z')`;

/**
 * The whole suite, against one backend; `config()` gives a config for a fresh store of it, `oldStore()` one
 * for a fresh store holding OLD_CELL_METRICS with OLD_ROW.
 */
function storeSuite(backend: string, config: () => StoreConfig, oldStore: () => Promise<StoreConfig>, setUp: () => Promise<void>, tearDown: () => Promise<void>): void {
  describe(`results store (${backend})`, () => {
    let store: ResultsStore;

    before(async () => {
      await setUp();
      store = await openStore(config());
    });

    after(async () => {
      await store?.close();
      await tearDown();
    });

    it('upserts and gets a campaign, keeping when it was created', async () => {
      const id = uniqueId('campaign');
      assert.equal(await store.getCampaign(id), null);
      await store.upsertCampaign(campaign(id));
      assert.deepEqual(await store.getCampaign(id), campaign(id));
      await store.upsertCampaign(campaign(id, { name: 'renamed', spec: { v: 2 }, createdAt: '2030-01-01T00:00:00.000Z' }));
      assert.deepEqual(await store.getCampaign(id), campaign(id, { name: 'renamed', spec: { v: 2 } }));
    });

    it('writes the same search twice as one row, with the fields of the second write', async () => {
      const id = uniqueId('campaign');
      await store.upsertSearch(search(id, 'wf-1'));
      await store.upsertSearch(search(id, 'wf-1', { wallSeconds: 12.5, nfeExecuted: 401, evaluation: { clip: 0.25 }, finishedAt: '2025-01-03T00:00:00.000Z' }));
      const rows = await store.searches(id);
      assert.equal(rows.length, 1);
      assert.deepEqual(rows[0], search(id, 'wf-1', { wallSeconds: 12.5, nfeExecuted: 401, evaluation: { clip: 0.25 }, finishedAt: '2025-01-03T00:00:00.000Z' }));
    });

    it('lets a done search replace a failed one', async () => {
      const id = uniqueId('campaign');
      await store.upsertSearch(failed(id, 'wf-1'));
      assert.deepEqual(await store.doneAmong(id, ['wf-1']), []);
      await store.upsertSearch(search(id, 'wf-1'));
      assert.deepEqual(await store.searches(id), [search(id, 'wf-1')]);
      assert.deepEqual(await store.doneAmong(id, ['wf-1']), ['wf-1']);
    });

    it('never lets a later failure overwrite a done search', async () => {
      const id = uniqueId('campaign');
      await store.upsertSearch(search(id, 'wf-1'));
      await store.upsertSearch(failed(id, 'wf-1', { finishedAt: '2025-02-01T00:00:00.000Z' }));
      assert.deepEqual(await store.searches(id), [search(id, 'wf-1')]);
      assert.deepEqual(await store.doneAmong(id, ['wf-1']), ['wf-1']);
      // A failure may still replace a failure (the last attempt's error).
      await store.upsertSearch(failed(id, 'wf-2', { error: 'first' }));
      await store.upsertSearch(failed(id, 'wf-2', { error: 'second' }));
      assert.equal((await store.searches(id)).find((s) => s.workflowId === 'wf-2')?.error, 'second');
    });

    it('says which of a page of workflow IDs are done in one campaign only, and lists searches by finish time then workflow ID', async () => {
      const id = uniqueId('campaign');
      const other = uniqueId('campaign');
      await store.upsertSearch(search(id, 'wf-b', { finishedAt: '2025-01-02T00:00:00.000Z' }));
      await store.upsertSearch(failed(id, 'wf-c', { finishedAt: '2025-01-01T00:00:00.000Z' }));
      await store.upsertSearch(search(id, 'wf-a', { finishedAt: '2025-01-02T00:00:00.000Z' }));
      await store.upsertSearch(search(id, 'WF-Z', { finishedAt: '2025-01-03T00:00:00.000Z' }));
      await store.upsertSearch(search(id, 'wf-_', { finishedAt: '2025-01-03T00:00:00.000Z' }));
      await store.upsertSearch(search(other, 'wf-other'));
      assert.deepEqual((await store.searches(id)).map((s) => s.workflowId), ['wf-c', 'wf-a', 'wf-b', 'WF-Z', 'wf-_']);
      const page = ['wf-a', 'wf-b', 'wf-c', 'wf-other', 'WF-Z', 'wf-_', 'wf-missing', "wf-'quoted\"", 'wf-a'];
      assert.deepEqual(await store.doneAmong(id, page), ['wf-a', 'wf-b', 'WF-Z', 'wf-_', 'wf-a'], 'in the order asked, failed and other campaigns left out');
      assert.deepEqual(await store.doneAmong(other, page), ['wf-other']);
      assert.deepEqual(await store.doneAmong(id, []), []);
      assert.deepEqual(await store.searches(uniqueId('none')), []);
    });

    it('upserts cell metrics as one row per campaign and cell', async () => {
      const id = uniqueId('campaign');
      const metrics = (cell: string, overrides: Partial<CellMetricsRecord> = {}): CellMetricsRecord => ({
        campaignId: id, cell, samples: 64, frechetDistance: 0.1 + 0.2, inceptionScore: 1e300, computedAt: '2025-01-04T00:00:00.000Z', ...overrides,
      });
      await store.upsertCellMetrics(metrics('random|clip|400'));
      await store.upsertCellMetrics(metrics('random|clip|400', { samples: 128, frechetDistance: -1e-300 }));
      await store.upsertCellMetrics(metrics('fk|clip|100', { clipFrechetDistance: 1 / 3 }));
      await store.upsertCellMetrics(metrics('paths|clip|100', { clipFrechetDistance: 0 }));
      assert.deepEqual(await store.cellMetrics(id), [
        metrics('fk|clip|100', { clipFrechetDistance: 1 / 3 }),
        metrics('paths|clip|100', { clipFrechetDistance: 0 }),
        metrics('random|clip|400', { samples: 128, frechetDistance: -1e-300 }),
      ]);
      // Computed again without a CLIP reference: the cell has none.
      await store.upsertCellMetrics(metrics('fk|clip|100'));
      assert.deepEqual((await store.cellMetrics(id))[0], metrics('fk|clip|100'));
      assert.deepEqual(await store.cellMetrics(uniqueId('none')), []);
    });

    it('opens a store made before CLIP-FID, adding its column, and keeps its rows', async () => {
      const old = await oldStore();
      // Two workers of the new version starting on it at once: one adds the column, the other finds it.
      const [a, b] = await Promise.all([openStore(old), openStore(old)]);
      try {
        assert.deepEqual(await a.cellMetrics('old-campaign'), [
          { campaignId: 'old-campaign', cell: 'random|clip|400', samples: 64, frechetDistance: 1.5, inceptionScore: 2.5, computedAt: '2024-12-01T00:00:00.000Z' },
        ]);
        const id = uniqueId('campaign');
        const cell = (name: string, clipFrechetDistance?: number): CellMetricsRecord => ({
          campaignId: id, cell: name, samples: 2, frechetDistance: 0.5, inceptionScore: 1, ...(clipFrechetDistance !== undefined ? { clipFrechetDistance } : {}), computedAt: '2025-05-01T00:00:00.000Z',
        });
        await a.upsertCellMetrics(cell('fk|clip|100', 0.1 + 0.2));
        await b.upsertCellMetrics(cell('random|clip|400'));
        assert.deepEqual(await b.cellMetrics(id), [cell('fk|clip|100', 0.1 + 0.2), cell('random|clip|400')]);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
      const reopened = await openStore(old);
      try {
        assert.equal((await reopened.cellMetrics('old-campaign')).length, 1);
        await reopened.upsertCellMetrics({ campaignId: 'old-campaign', cell: 'random|clip|400', samples: 64, frechetDistance: 1.5, inceptionScore: 2.5, clipFrechetDistance: 7, computedAt: '2025-05-02T00:00:00.000Z' });
        assert.equal((await reopened.cellMetrics('old-campaign'))[0].clipFrechetDistance, 7);
      } finally {
        await reopened.close();
      }
    });

    it('keeps each search\'s measured seconds in columns of their own, null for a failed search', async () => {
      for (const target of [config(), await oldStore()]) {
        const reopened = await openStore(target);
        const id = uniqueId('campaign');
        try {
          await reopened.upsertSearch(search(id, 'wf-1'));
          await reopened.upsertSearch(failed(id, 'wf-2'));
          assert.deepEqual((await reopened.searches(id))[0], search(id, 'wf-1'));
        } finally {
          await reopened.close();
        }
        const rows = await selectRows(target, 'SELECT workflow_id, denoise_seconds, verifier_seconds_by_name FROM searches WHERE campaign_id = ? ORDER BY workflow_id', [id]);
        const byName = (v: unknown) => (typeof v === 'string' ? JSON.parse(v) : v);
        assert.deepEqual(
          rows.map((r) => [r.workflow_id, r.denoise_seconds, byName(r.verifier_seconds_by_name)]),
          [['wf-1', 0.1 + 0.7, { 'gmm-classifier': 1 / 3, clip: 1e-300 }], ['wf-2', null, null]],
        );
      }
    });

    it('round-trips JSON and doubles exactly', async () => {
      const id = uniqueId('campaign');
      for (const [i, x] of AWKWARD_NUMBERS.entries()) {
        const record = search(id, `wf-${i}`, {
          wallSeconds: x,
          verifierSeconds: -x,
          evaluation: { v: x },
          result: { ...result(i, x), best: { ...result(i, x).best, searchScore: -x } },
          sample: [x, -x, x / 7, 0],
          itemCategory: null,
        });
        await store.upsertSearch(record);
        const [back] = (await store.searches(id)).filter((s) => s.workflowId === `wf-${i}`);
        assert.deepEqual(back, record);
        assert.ok(Object.is(back.wallSeconds, x) && Object.is(back.sample[2], x / 7), `${x} did not round-trip`);
      }
    });

    it('leaves exactly one row per workflow ID when two stores write the same searches at once', async () => {
      const id = uniqueId('campaign');
      const ids = Array.from({ length: 40 }, (_, i) => `wf-${String(i).padStart(2, '0')}`);
      // Both open (and create the schema) at once, as two workers starting together would.
      const [a, b] = await Promise.all([openStore(config()), openStore(config())]);
      try {
        const writes = (s: ResultsStore, tag: string) =>
          ids.map((wf, i) =>
            s.upsertSearch(i % 3 === 0 ? failed(id, wf, { error: tag }) : search(id, wf, { error: null, wallSeconds: tag === 'a' ? 1 : 2 })),
          );
        await Promise.all([...writes(a, 'a'), ...writes(b, 'b'), ...writes(a, 'a'), ...writes(b, 'b')]);
        const rows = await store.searches(id);
        assert.equal(rows.length, ids.length);
        assert.deepEqual(rows.map((r) => r.workflowId).sort(), ids);
        assert.deepEqual((await store.doneAmong(id, ids)).length, ids.filter((_, i) => i % 3 !== 0).length);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });
  });
}

let sqliteDir = '';
storeSuite(
  'SQLite',
  () => ({ kind: 'sqlite', path: path.join(sqliteDir, 'nested', 'folder', 'results.db') }),
  async () => {
    const file = path.join(tempDir('store-old'), 'results.db');
    const db = new Database(file);
    db.exec(OLD_CELL_METRICS.sqlite);
    db.exec(OLD_ROW);
    db.exec(oldSearches('sqlite'));
    db.close();
    return { kind: 'sqlite', path: file };
  },
  async () => {
    sqliteDir = tempDir('store');
  },
  async () => {},
);

let postgres: StartedPostgres | undefined;
storeSuite(
  'PostgreSQL',
  () => ({ kind: 'postgres', url: postgres!.url }),
  async () => {
    // A database of its own: the suite's already has the current tables.
    const database = `old_${uniqueId('store').replace(/[^a-z0-9]/gi, '_').toLowerCase()}`;
    const url = postgres!.url.replace(/\/[^/]+$/, `/${database}`);
    for (const [target, sql] of [[postgres!.url, [`CREATE DATABASE ${database}`]], [url, [OLD_CELL_METRICS.postgres, OLD_ROW, oldSearches('postgres')]]] as const) {
      const client = new Client({ connectionString: target });
      await client.connect();
      try {
        for (const statement of sql) await client.query(statement);
      } finally {
        await client.end();
      }
    }
    return { kind: 'postgres', url };
  },
  async () => {
    // Fails (does not skip) when the server cannot start: `npm run setup` installs it.
    postgres = await withPostgres();
    console.log(`# PostgreSQL started in ${postgres.startMs} ms`);
  },
  async () => {
    await postgres?.stop();
  },
);

describe('SQLite across threads', () => {
  it('creates the folder, uses WAL, and leaves one row per workflow ID when four threads write at once', async () => {
    const file = path.join(tempDir('store-threads'), 'a', 'b', 'results.db');
    const id = uniqueId('campaign');
    const record = search(id, 'template');
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { openStore } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'store', 'index.js'))});
      (async () => {
        const store = await openStore({ kind: 'sqlite', path: workerData.file });
        for (let round = 0; round < 3; round++) {
          for (let i = 0; i < 50; i++) {
            const status = (i + workerData.n) % 2 === 0 ? 'done' : 'failed';
            await store.upsertSearch({ ...workerData.record, workflowId: 'wf-' + i, status, wallSeconds: workerData.n });
          }
        }
        await store.close();
        parentPort.postMessage('ok');
      })();`;
    const runs = [0, 1, 2, 3].map(
      (n) =>
        new Promise((resolve, reject) => {
          const worker = new Worker(code, { eval: true, workerData: { file, n, record } });
          worker.once('message', resolve);
          worker.once('error', reject);
          worker.once('exit', (code) => code !== 0 && reject(new Error(`worker exited with ${code}`)));
        }),
    );
    await Promise.all(runs);
    assert.ok(existsSync(file));
    const db = new Database(file, { readonly: true });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    db.close();
    const store = await openStore({ kind: 'sqlite', path: file });
    try {
      const rows = await store.searches(id);
      assert.equal(rows.length, 50);
      // Each ID was written 'done' by two of the threads: whatever the interleaving, it ends done.
      assert.equal((await store.doneAmong(id, rows.map((r) => r.workflowId))).length, 50);
    } finally {
      await store.close();
    }
  });
});

/** RFC 4180: fields separated by commas, records by CRLF (or LF), quoted fields with "" for a quote. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let i = 0;
  let quoted = false;
  while (i < text.length) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        field += '"';
        i += 2;
      } else if (ch === '"') {
        quoted = false;
        i += 1;
      } else {
        field += ch;
        i += 1;
      }
    } else if (ch === '"') {
      assert.equal(field, '', 'a quote inside an unquoted field');
      quoted = true;
      i += 1;
    } else if (ch === ',') {
      row.push(field);
      field = '';
      i += 1;
    } else if (ch === '\r' || ch === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      i += ch === '\r' && text[i + 1] === '\n' ? 2 : 1;
    } else {
      field += ch;
      i += 1;
    }
  }
  assert.equal(quoted, false, 'an unterminated quoted field');
  if (field !== '' || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

describe('export', () => {
  const id = 'campaign-x';
  const records: SearchRecord[] = [
    search(id, 'wf-1'),
    failed(id, 'wf-2', { itemCategory: null, evaluation: { extra: 0.5 } }),
    search(id, 'wf-3', { searchVerifiers: ['clip'], evaluation: { 'gmm-classifier': 1 / 3 }, result: { ...result(1, -0.25), best: { ...result(1, -0.25).best, scores: { clip: -0.25 } } } }),
  ];
  const expectedColumns = [
    'workflow_id', 'campaign_id', 'item_id', 'item_label', 'item_category', 'cell', 'algorithm', 'search_verifiers',
    'budget_nfe', 'seed', 'status', 'error', 'best_score', 'nfe_search', 'nfe_final', 'nfe_total', 'nfe_executed',
    'verifier_seconds', 'denoise_seconds', 'fleet_seconds', 'wall_seconds', 'finished_at', 'cell_frechet_distance', 'cell_inception_score', 'cell_clip_frechet_distance',
    'eval_aesthetic', 'eval_extra', 'eval_gmm-classifier', 'eval_image-reward',
    'score_clip', 'score_gmm-classifier',
    'seconds_clip', 'seconds_gmm-classifier',
  ];

  it('writes CSV with a header and one row per search, read back field for field', () => {
    const csv = exportSearches(records, 'csv');
    const rows = parseCsv(csv);
    assert.deepEqual(rows[0], expectedColumns);
    assert.equal(rows.length, 1 + records.length);
    for (const row of rows) assert.equal(row.length, expectedColumns.length);
    const byName = rows.slice(1).map((row) => Object.fromEntries(expectedColumns.map((c, i) => [c, row[i]])));
    assert.equal(byName[0].item_label, PROMPT);
    assert.equal(byName[0].item_category, 'animals, "pets"');
    assert.equal(byName[0].search_verifiers, 'gmm-classifier+clip');
    assert.equal(byName[0].seed, '9007199254740991');
    assert.equal(Number(byName[0].best_score), 0.1 + 0.2);
    assert.equal(Number(byName[0].wall_seconds), 1e-300);
    assert.equal(Number(byName[0]['eval_image-reward']), 1e300);
    assert.equal(Number(byName[0]['eval_aesthetic']), -1e-300);
    assert.equal(byName[0].eval_extra, '');
    assert.equal(Number(byName[0]['score_clip']), -1e-300);
    assert.equal(Number(byName[0].denoise_seconds), 0.1 + 0.7);
    assert.equal(Number(byName[0].fleet_seconds), 0.1 + 0.7 + 1 / 3);
    assert.equal(Number(byName[0]['seconds_gmm-classifier']), 1 / 3);
    assert.equal(byName[1].denoise_seconds, '');
    assert.equal(byName[1].seconds_clip, '');
    assert.equal(byName[1].status, 'failed');
    assert.equal(byName[1].error, 'model server unreachable, "retries" exhausted');
    assert.equal(byName[1].item_category, '');
    assert.equal(byName[1].best_score, '');
    assert.equal(byName[1]['score_gmm-classifier'], '');
    assert.equal(Number(byName[1].eval_extra), 0.5);
    assert.equal(byName[2].search_verifiers, 'clip');
    assert.equal(Number(byName[2]['eval_gmm-classifier']), 1 / 3);
    assert.equal(Number(byName[2].score_clip), -0.25);
    assert.equal(byName[2]['score_gmm-classifier'], '');
    // Records end with CRLF; the prompt's own newlines stay inside its quoted field.
    assert.ok(csv.endsWith('\r\n'));
  });

  it('writes non-finite numbers as pandas reads them and a header only for no searches', () => {
    const csv = exportSearches([search(id, 'wf-1', { wallSeconds: Infinity, verifierSeconds: NaN, evaluation: { v: -Infinity } })], 'csv');
    const [header, row] = parseCsv(csv);
    const get = (name: string) => row[header.indexOf(name)];
    assert.equal(get('wall_seconds'), 'inf');
    assert.equal(get('verifier_seconds'), '');
    assert.equal(get('eval_v'), '-inf');
    assert.deepEqual(parseCsv(exportSearches([], 'csv')), [expectedColumns.slice(0, 25)]);
    assert.equal(exportSearches([], 'jsonl'), '');
  });

  it('writes JSONL with the same flat fields plus the nested result and sample', () => {
    const jsonl = exportSearches(records, 'jsonl');
    const lines = jsonl.split('\n');
    assert.equal(lines.pop(), '');
    assert.equal(lines.length, records.length);
    const objects = lines.map((l) => JSON.parse(l));
    const rows = parseCsv(exportSearches(records, 'csv')).slice(1);
    for (const [i, object] of objects.entries()) {
      assert.deepEqual(Object.keys(object), [...expectedColumns, 'result', 'sample']);
      assert.deepEqual(object.result, records[i].result);
      assert.deepEqual(object.sample, records[i].sample);
      // The same values as the CSV row.
      for (const [j, column] of expectedColumns.entries()) {
        const value = object[column];
        assert.equal(value === null ? '' : String(value), rows[i][j], `${column} of row ${i}`);
      }
    }
    assert.equal(objects[0].seed, 9_007_199_254_740_991);
    assert.equal(objects[0].best_score, 0.1 + 0.2);
    assert.equal(objects[1].result, null);
  });

  it('gives each search its cell\'s population metrics, CLIP-FID where the cell has it', () => {
    const computedAt = '2025-01-04T00:00:00.000Z';
    const cells: CellMetricsRecord[] = [
      { campaignId: id, cell: 'random|gmm-classifier+clip|400', samples: 3, frechetDistance: 0.1 + 0.2, inceptionScore: 2, clipFrechetDistance: 1 / 3, computedAt },
      { campaignId: id, cell: 'fk|clip|100', samples: 2, frechetDistance: 4, inceptionScore: 1.5, computedAt },
      { campaignId: 'another-campaign', cell: 'paths|clip|100', samples: 2, frechetDistance: 99, inceptionScore: 99, clipFrechetDistance: 99, computedAt },
    ];
    const searches = [search(id, 'wf-1'), search(id, 'wf-2', { cell: 'fk|clip|100' }), search(id, 'wf-3', { cell: 'paths|clip|100' })];
    const [header, ...rows] = parseCsv(exportSearches(searches, 'csv', cells));
    const metrics = (row: string[]) => ['cell_frechet_distance', 'cell_inception_score', 'cell_clip_frechet_distance'].map((c) => row[header.indexOf(c)]);
    assert.deepEqual(rows.map(metrics), [[String(0.1 + 0.2), '2', String(1 / 3)], ['4', '1.5', ''], ['', '', '']]);
    const objects = exportSearches(searches, 'jsonl', cells).trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(objects.map((o) => o.cell_clip_frechet_distance), [1 / 3, null, null]);
  });

  it('rejects an unknown format', () => {
    assert.throws(() => exportSearches(records, 'xlsx' as 'csv'), /unknown/);
  });
});
