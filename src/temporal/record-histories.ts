// Records workflow histories for the replay tests (test/replay.test.ts), so that a change which breaks
// workflow determinism fails CI: one search per algorithm; one search that takes a budget update and a
// stop signal and continues as new with them; a small campaign with its child searches; and a search on
// the local-activity fast path whose first batch met an outage and went to the durable activity. Rerun
// after an intended change of the workflows' commands: `npm run record-histories`, or name the recordings
// to make (`node dist/src/temporal/record-histories.js fast-path`) to keep the others as they were.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { CampaignInput } from '../campaign/plan';
import { PROJECT_ROOT, TEMPORAL_BIN } from '../embedded/paths';
import { startModelServer, startTemporal, stopProcess } from '../embedded/processes';
import { Fleet } from '../fleet/client';
import type { SearchSpec } from '../search/spec';
import { progressQuery, setBudgetUpdate, stopSignal } from '../../workflows/search';
import { startCampaign, startSearch } from './client';
import { fleetWait } from './waiting';
import { createSearchWorker, installQuietRuntime } from './worker';

export const HISTORY_DIR = path.join(PROJECT_ROOT, 'test', 'histories');

const SEARCHES: Record<string, SearchSpec> = {
  random: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random', roundSize: 8 }, verifiers: ['gmm-classifier'], budgetNfe: 400, seed: 1 },
  'zero-order': { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'zero-order', n: 4, restart: true }, verifiers: ['gmm-classifier', 'gmm-oracle'], budgetNfe: 400, seed: 2 },
  paths: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'paths', n: 2, m: 3 }, verifiers: ['gmm-classifier'], budgetNfe: 400, seed: 3 },
  fk: { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'fk', k: 4 }, verifiers: ['gmm-oracle'], budgetNfe: 400, seed: 4 },
};

/** The names of the recorded histories, one file each. */
export const RECORDED = [...Object.keys(SEARCHES), 'control', 'campaign', 'fast-path'];

interface Recorder {
  client: Client;
  taskQueue: string;
  dir: string;
  /** While this file exists, the model server answers every Evaluate with UNAVAILABLE. */
  outageFile: string;
}

async function roundAtLeast(handle: WorkflowHandle, round: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (((await handle.query(progressQuery))?.round ?? 0) < round) {
    if (Date.now() > deadline) throw new Error(`round ${round} never came`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A search that takes a raised budget and a stop, then continues as new carrying both (its first run is recorded). */
async function control({ client, taskQueue }: Recorder): Promise<{ workflowId: string; runId: string }> {
  const spec: SearchSpec = { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random', roundSize: 4 }, verifiers: ['gmm-classifier'], budgetNfe: 4000, seed: 6 };
  const handle = await startSearch(client, spec, { taskQueue, workflowId: 'history-control', continueAsNewEveryRounds: 3 });
  await roundAtLeast(handle, 1);
  await handle.executeUpdate(setBudgetUpdate, { args: [5000] });
  // During round 3: the run stops asking for more, but first continues as new with the stop in its state.
  await roundAtLeast(handle, 3);
  await handle.signal(stopSignal);
  await handle.result();
  return { workflowId: handle.workflowId, runId: handle.firstExecutionRunId };
}

/** A search on the fast path whose first batch fails as a local activity and waits as a durable one. */
async function fastPath({ client, taskQueue, outageFile }: Recorder): Promise<{ workflowId: string }> {
  const spec: SearchSpec = { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random', roundSize: 4 }, verifiers: ['gmm-classifier'], budgetNfe: 400, seed: 7 };
  writeFileSync(outageFile, '');
  const handle = await startSearch(client, spec, { taskQueue, workflowId: 'history-fast-path', localActivities: true });
  const deadline = Date.now() + 60_000;
  while (!(await fleetWait(handle))) {
    if (Date.now() > deadline) throw new Error('the fast-path search never waited for the outage');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  rmSync(outageFile);
  await handle.result();
  return { workflowId: handle.workflowId };
}

async function campaign({ client, taskQueue, dir }: Recorder): Promise<{ workflowId: string }> {
  const input: CampaignInput = {
    campaignId: 'history-campaign',
    name: 'history',
    model: 'gmm',
    items: [1, 4].map((c) => ({ id: `class-${c}`, label: `class ${c}`, condition: { classLabel: c } })),
    algorithms: [{ name: 'random' }, { name: 'paths', n: 2, m: 2 }],
    verifierSets: [['gmm-classifier']],
    budgets: [400],
    seeds: [0],
    evaluation: ['gmm-oracle', 'gmm-classifier'],
    concurrency: 2,
    store: { kind: 'sqlite', path: path.join(dir, 'results.sqlite') },
    folder: path.join(dir, 'campaign'),
  };
  const handle = await startCampaign(client, input, { taskQueue });
  await handle.result();
  return { workflowId: handle.workflowId };
}

async function main(): Promise<void> {
  installQuietRuntime('ERROR');
  const only = process.argv.slice(2);
  const unknown = only.filter((name) => !RECORDED.includes(name));
  if (unknown.length > 0) throw new Error(`record-histories: no recording named ${unknown.join(', ')}; the recordings are ${RECORDED.join(', ')}`);
  const wanted = (name: string) => only.length === 0 || only.includes(name);
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-record-'));
  const outageFile = path.join(dir, 'outage');
  const [temporal, server] = await Promise.all([
    startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log') }),
    // Slow rounds leave time to signal and update a search between them.
    startModelServer({
      logFile: path.join(dir, 'server.log'),
      extraArgs: ['--allow-fault-injection', '--faults', JSON.stringify({ seed: 0, rules: [{ latency_ms: 300 }, { request_status: 'UNAVAILABLE', while_file: outageFile }] })],
    }),
  ]);
  const fleet = new Fleet([server.address]);
  const connection = await Connection.connect({ address: temporal.address });
  const nativeConnection = await NativeConnection.connect({ address: temporal.address });
  const client = new Client({ connection });
  const taskQueue = 'record';
  const worker = await createSearchWorker({ connection: nativeConnection, fleet, taskQueue });
  const running = worker.run();
  const recorder = { client, taskQueue, dir, outageFile };
  const save = (name: string, workflowId: string, runId?: string) => {
    // The CLI writes the canonical proto3 JSON of a history, the form historyFromJSON reads back.
    const json = execFileSync(TEMPORAL_BIN, ['workflow', 'show', '--address', temporal.address, '--workflow-id', workflowId, ...(runId ? ['--run-id', runId] : []), '--output', 'json']);
    writeFileSync(path.join(HISTORY_DIR, `${name}.json`), json);
    console.log(`recorded ${name}`);
  };
  try {
    mkdirSync(HISTORY_DIR, { recursive: true });
    for (const [name, spec] of Object.entries(SEARCHES)) {
      if (!wanted(name)) continue;
      const handle = await startSearch(client, spec, { taskQueue, workflowId: `history-${name}` });
      await handle.result();
      save(name, handle.workflowId);
    }
    if (wanted('control')) {
      const controlled = await control(recorder);
      save('control', controlled.workflowId, controlled.runId);
    }
    if (wanted('campaign')) save('campaign', (await campaign(recorder)).workflowId);
    if (wanted('fast-path')) save('fast-path', (await fastPath(recorder)).workflowId);
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
