import { DefaultLogger, NativeConnection, Runtime, Worker, makeTelemetryFilterString } from '@temporalio/worker';
import { createActivities } from '../activities';
import { createCampaignActivities } from '../campaign/activities';
import type { Fleet } from '../fleet/client';
import { workflowSource } from './bundle';
import { DEFAULT_NAMESPACE, TASK_QUEUE } from './constants';

let runtimeInstalled = false;

/** Keeps the SDK core quiet unless asked: the CLI's stdout is for results. Call before any connection. */
export function installQuietRuntime(defaultLevel: 'WARN' | 'ERROR' = 'WARN'): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  const level = (process.env.NOISESEARCH_LOG_LEVEL ?? defaultLevel).toUpperCase() as 'WARN';
  Runtime.install({
    logger: new DefaultLogger(level),
    telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: level }) } },
  });
}

export interface WorkerOptions {
  connection: NativeConnection;
  fleet: Fleet;
  namespace?: string;
  taskQueue?: string;
}

export async function createSearchWorker({ connection, fleet, namespace, taskQueue }: WorkerOptions): Promise<Worker> {
  return Worker.create({
    connection,
    namespace: namespace ?? DEFAULT_NAMESPACE,
    taskQueue: taskQueue ?? TASK_QUEUE,
    ...workflowSource(),
    activities: { ...createActivities({ fleet }), ...createCampaignActivities({ fleet }) },
  });
}
