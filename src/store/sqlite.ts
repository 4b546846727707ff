// The results store in one SQLite file (better-sqlite3, WAL mode): for one machine, one or more processes.
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { addColumnStatements, CAMPAIGNS, CELL_METRICS, EXISTING_COLUMNS, QUERIES, SEARCHES, campaignFromRow, cellMetricsFromRow, schemaStatements, searchFromRow, toParams, upsertStatement } from './schema';
import type { CampaignRecord, CellMetricsRecord, ResultsStore, SearchRecord } from './types';

/** How long a write waits for another process's write to finish before failing with SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 30_000;

type Row = Record<string, unknown>;

export class SqliteStore implements ResultsStore {
  private db: Database.Database | null = null;
  private statements: Record<string, Database.Statement> = {};

  constructor(readonly file: string) {}

  async init(): Promise<void> {
    if (this.db) return;
    if (this.file !== ':memory:') mkdirSync(path.dirname(path.resolve(this.file)), { recursive: true });
    const db = new Database(this.file, { timeout: BUSY_TIMEOUT_MS });
    try {
      db.pragma('journal_mode = WAL');
      db.transaction(() => {
        for (const sql of schemaStatements('sqlite')) db.exec(sql);
        for (const sql of addColumnStatements('sqlite', db.prepare(EXISTING_COLUMNS.sqlite).all() as Row[])) db.exec(sql);
      }).immediate();
      this.statements = {
        upsertCampaign: db.prepare(upsertStatement(CAMPAIGNS, 'sqlite')),
        upsertSearch: db.prepare(upsertStatement(SEARCHES, 'sqlite')),
        upsertCellMetrics: db.prepare(upsertStatement(CELL_METRICS, 'sqlite')),
        ...Object.fromEntries(Object.entries(QUERIES).map(([name, sql]) => [name, db.prepare(sql)])),
      };
    } catch (error) {
      db.close();
      throw error;
    }
    this.db = db;
  }

  private statement(name: string): Database.Statement {
    if (!this.db) throw new Error('SqliteStore: call init() first (or open it with openStore)');
    return this.statements[name];
  }

  async upsertCampaign(campaign: CampaignRecord): Promise<void> {
    this.statement('upsertCampaign').run(toParams(CAMPAIGNS, campaign));
  }

  async getCampaign(campaignId: string): Promise<CampaignRecord | null> {
    const row = this.statement('getCampaign').get(campaignId) as Row | undefined;
    return row ? campaignFromRow(row) : null;
  }

  async upsertSearch(record: SearchRecord): Promise<void> {
    this.statement('upsertSearch').run(toParams(SEARCHES, record));
  }

  async searches(campaignId: string): Promise<SearchRecord[]> {
    return (this.statement('searches').all(campaignId) as Row[]).map(searchFromRow);
  }

  async doneAmong(campaignId: string, workflowIds: string[]): Promise<string[]> {
    const done = new Set((this.statement('doneAmong').all(campaignId, JSON.stringify(workflowIds)) as Row[]).map((r) => r.workflow_id as string));
    return workflowIds.filter((id) => done.has(id));
  }

  async upsertCellMetrics(metrics: CellMetricsRecord): Promise<void> {
    this.statement('upsertCellMetrics').run(toParams(CELL_METRICS, metrics));
  }

  async cellMetrics(campaignId: string): Promise<CellMetricsRecord[]> {
    return (this.statement('cellMetrics').all(campaignId) as Row[]).map(cellMetricsFromRow);
  }

  async close(): Promise<void> {
    this.db?.close();
    this.db = null;
    this.statements = {};
  }
}
