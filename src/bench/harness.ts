// What every benchmark runs against: a Temporal dev server and a model server of its own, a worker on a
// task queue of its own, all stopped when the benchmark ends.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { startModelServer, startTemporal, stopProcess, type ModelServerOptions } from '../embedded/processes';
import { Fleet } from '../fleet/client';
import { createSearchWorker, installQuietRuntime } from '../temporal/worker';

export interface Bench {
  env: TestWorkflowEnvironment;
  fleet: Fleet;
  taskQueue: string;
}

/** The model server's options beyond its log file: the embedded gmm unless told otherwise (e.g. `{ sim }`). */
export type BenchServer = Omit<ModelServerOptions, 'logFile'>;

export async function withBenchServices<T>(name: string, work: (bench: Bench) => Promise<T>, server: BenchServer = {}): Promise<T> {
  installQuietRuntime('ERROR');
  const dir = mkdtempSync(path.join(tmpdir(), `noisesearch-${name}-`));
  const [temporal, model] = await Promise.all([
    startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log') }),
    startModelServer({ ...server, logFile: path.join(dir, 'server.log') }),
  ]);
  const env = await TestWorkflowEnvironment.createFromExistingServer({ address: temporal.address });
  const fleet = new Fleet([model.address]);
  const taskQueue = `${name}-${process.pid}`;
  const worker = await createSearchWorker({ connection: env.nativeConnection, fleet, taskQueue });
  const running = worker.run();
  try {
    return await work({ env, fleet, taskQueue });
  } finally {
    worker.shutdown();
    await running;
    fleet.close();
    await stopProcess(model.pid);
    await env.teardown();
    await stopProcess(temporal.pid);
  }
}
