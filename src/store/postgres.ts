// The results store in PostgreSQL (a pg Pool): for many workers on many machines writing at once.
import { Pool, type PoolConfig } from 'pg';
import { connectionUrl, redactPassword } from './credentials';
import { addColumnStatements, CAMPAIGNS, CELL_METRICS, EXISTING_COLUMNS, QUERIES, SEARCHES, campaignFromRow, cellMetricsFromRow, numbered, schemaStatements, searchFromRow, toParams, upsertStatement } from './schema';
import type { CampaignRecord, CellMetricsRecord, ResultsStore, SearchRecord } from './types';

/** Serializes concurrent init() calls: CREATE TABLE IF NOT EXISTS races with itself across sessions. */
const SCHEMA_LOCK = 0x6e6f6973; // 'nois'

const SQL = {
  upsertCampaign: upsertStatement(CAMPAIGNS, 'postgres'),
  upsertSearch: upsertStatement(SEARCHES, 'postgres'),
  upsertCellMetrics: upsertStatement(CELL_METRICS, 'postgres'),
  getCampaign: numbered(QUERIES.getCampaign),
  searches: numbered(QUERIES.searches),
  doneAmong: `SELECT workflow_id FROM searches WHERE campaign_id = $1 AND status = 'done' AND workflow_id IN (SELECT json_array_elements_text($2::json))`,
  cellMetrics: numbered(QUERIES.cellMetrics),
};

export class PostgresStore implements ResultsStore {
  private pool: Pool | null = null;

  constructor(readonly url: string, private readonly poolConfig: Omit<PoolConfig, 'connectionString'> = {}) {}

  async init(): Promise<void> {
    if (this.pool) return;
    const connectionString = connectionUrl(this.url);
    const pool = new Pool({ max: 4, ...this.poolConfig, connectionString });
    // An idle client's error (the server restarting) must not crash the process; the next query reconnects.
    pool.on('error', () => {});
    try {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
        for (const sql of schemaStatements('postgres')) await client.query(sql);
        for (const sql of addColumnStatements('postgres', (await client.query(EXISTING_COLUMNS.postgres)).rows)) await client.query(sql);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        throw error;
      } finally {
        client.release();
      }
    } catch (error) {
      await pool.end();
      // Whatever the driver says, the password it was given is not repeated.
      const message = redactPassword(String((error as Error)?.message ?? error), connectionString).split('\n')[0];
      // A campaign's record and workflow input keep the URL without its password (src/store/credentials.ts).
      const hint = !new URL(connectionString).password && !process.env.PGPASSWORD && /password/i.test(message)
        ? '; the URL carries no password: give it as NOISESEARCH_STORE_URL (the URL with its password) or PGPASSWORD (docs/security.md)'
        : '';
      throw new Error(`results store: ${message}${hint}`);
    }
    this.pool = pool;
  }

  private async query(name: keyof typeof SQL, params: unknown[]): Promise<Record<string, unknown>[]> {
    if (!this.pool) throw new Error('PostgresStore: call init() first (or open it with openStore)');
    // Named statements are prepared once per connection.
    return (await this.pool.query({ name: `noisesearch_${name}`, text: SQL[name], values: params })).rows;
  }

  async upsertCampaign(campaign: CampaignRecord): Promise<void> {
    await this.query('upsertCampaign', toParams(CAMPAIGNS, campaign));
  }

  async getCampaign(campaignId: string): Promise<CampaignRecord | null> {
    const rows = await this.query('getCampaign', [campaignId]);
    return rows.length > 0 ? campaignFromRow(rows[0]) : null;
  }

  async upsertSearch(record: SearchRecord): Promise<void> {
    await this.query('upsertSearch', toParams(SEARCHES, record));
  }

  async searches(campaignId: string): Promise<SearchRecord[]> {
    return (await this.query('searches', [campaignId])).map(searchFromRow);
  }

  async doneAmong(campaignId: string, workflowIds: string[]): Promise<string[]> {
    const done = new Set((await this.query('doneAmong', [campaignId, JSON.stringify(workflowIds)])).map((r) => r.workflow_id as string));
    return workflowIds.filter((id) => done.has(id));
  }

  async upsertCellMetrics(metrics: CellMetricsRecord): Promise<void> {
    await this.query('upsertCellMetrics', toParams(CELL_METRICS, metrics));
  }

  async cellMetrics(campaignId: string): Promise<CellMetricsRecord[]> {
    return (await this.query('cellMetrics', [campaignId])).map(cellMetricsFromRow);
  }

  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = null;
    await pool?.end();
  }
}
