// Records one workflow history per algorithm for the replay tests (test/replay.test.ts), so that a
// change which breaks workflow determinism fails CI. Rerun after an intended change of the workflow's
// commands: `npm run record-histories`.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { PROJECT_ROOT, TEMPORAL_BIN } from '../embedded/paths';
import { startModelServer, startTemporal, stopProcess } from '../embedded/processes';
import { Fleet } from '../fleet/client';
import type { SearchSpec } from '../search/spec';
import { startSearch } from './client';
import { createSearchWorker, installQuietRuntime } from './worker';

export const HISTORY_DIR = path.join(PROJECT_ROOT, 'test', 'histories');

export const RECORDED: Record<string, SearchSpec & { continueAsNewEveryRounds?: number }> = {
  random: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random', roundSize: 8 }, verifiers: ['gmm-classifier'], budgetNfe: 400, seed: 1 },
  'zero-order': { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'zero-order', n: 4, restart: true }, verifiers: ['gmm-classifier', 'gmm-oracle'], budgetNfe: 400, seed: 2 },
  paths: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'paths', n: 2, m: 3 }, verifiers: ['gmm-classifier'], budgetNfe: 400, seed: 3 },
  fk: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'fk', k: 4 }, verifiers: ['gmm-oracle'], budgetNfe: 400, seed: 4 },
};

async function main(): Promise<void> {
  installQuietRuntime('ERROR');
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-record-'));
  const [temporal, server] = await Promise.all([
    startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log') }),
    startModelServer({ logFile: path.join(dir, 'server.log') }),
  ]);
  const fleet = new Fleet([server.address]);
  const connection = await Connection.connect({ address: temporal.address });
  const nativeConnection = await NativeConnection.connect({ address: temporal.address });
  const client = new Client({ connection });
  const worker = await createSearchWorker({ connection: nativeConnection, fleet, taskQueue: 'record' });
  const running = worker.run();
  try {
    mkdirSync(HISTORY_DIR, { recursive: true });
    for (const [name, spec] of Object.entries(RECORDED)) {
      const handle = await startSearch(client, spec, { taskQueue: 'record', workflowId: `history-${name}` });
      await handle.result();
      // The CLI writes the canonical proto3 JSON of a history, the form historyFromJSON reads back.
      const json = execFileSync(TEMPORAL_BIN, ['workflow', 'show', '--address', temporal.address, '--workflow-id', handle.workflowId, '--output', 'json']);
      writeFileSync(path.join(HISTORY_DIR, `${name}.json`), json);
      console.log(`recorded ${name}`);
    }
  } finally {
    worker.shutdown();
    await running;
    fleet.close();
    await connection.close();
    await nativeConnection.close();
    await Promise.all([stopProcess(server.pid), stopProcess(temporal.pid)]);
  }
}

if (require.main === module) {
  main().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
