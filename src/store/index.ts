// Opening the results store a campaign writes to: a SQLite file, or a PostgreSQL database for many workers.
import { PostgresStore } from './postgres';
import { SqliteStore } from './sqlite';
import type { ResultsStore, StoreConfig } from './types';

export { exportSearches, type ExportFormat } from './export';
export { PostgresStore } from './postgres';
export { SqliteStore } from './sqlite';
export type { CampaignRecord, CellMetricsRecord, ResultsStore, SearchRecord, StoreConfig } from './types';

/** Opens the store and creates its tables if they do not exist. */
export async function openStore(config: StoreConfig): Promise<ResultsStore> {
  const store: ResultsStore = config.kind === 'sqlite' ? new SqliteStore(config.path) : new PostgresStore(config.url);
  await store.init();
  return store;
}
