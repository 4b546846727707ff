import { DefaultLogger, NativeConnection, Runtime, Worker, makeTelemetryFilterString } from '@temporalio/worker';
import { createActivities } from '../activities';
import { createCampaignActivities } from '../campaign/activities';
import type { Fleet } from '../fleet/client';
import { workflowSource } from './bundle';
import { DEFAULT_NAMESPACE, TASK_QUEUE } from './constants';

let runtimeInstalled = false;
let temporalMetricsAddress: string | undefined;

/**
 * Where the SDK core serves its own Prometheus metrics (temporal_*; docs/metrics.md): set before the
 * runtime is installed, which happens once per process.
 */
export function useTemporalMetrics(bindAddress: string): void {
  if (runtimeInstalled) throw new Error('useTemporalMetrics: the Temporal runtime is installed already; set the metrics address first');
  temporalMetricsAddress = bindAddress;
}

/** What a worker logs as each workflow or activity fails: a command that reports its own failures drops them. */
const OUTCOME_MESSAGES = new Set(['Workflow failed', 'Activity failed']);

/**
 * Keeps the SDK core quiet unless asked: the CLI's stdout is for results. Call before any connection.
 * With `ownFailures`, the command says itself, in one line, why its search failed or what it waits for,
 * so the worker's own multi-line reports of the same failures are dropped.
 */
export function installQuietRuntime(defaultLevel: 'WARN' | 'ERROR' = 'WARN', options: { ownFailures?: boolean } = {}): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  const level = (process.env.NOISESEARCH_LOG_LEVEL ?? defaultLevel).toUpperCase() as 'WARN';
  const logger = options.ownFailures
    ? new DefaultLogger(level, (entry) => {
        if (OUTCOME_MESSAGES.has(entry.message)) return;
        process.stderr.write(`[${entry.level}] ${entry.message}\n`);
      })
    : new DefaultLogger(level);
  // Prometheus conventions, as our own metrics follow them: seconds, and counters ending in _total.
  const metrics = temporalMetricsAddress
    ? { metrics: { prometheus: { bindAddress: temporalMetricsAddress, countersTotalSuffix: true, useSecondsForDurations: true } } }
    : {};
  Runtime.install({ logger, telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: level }) }, ...metrics } });
}

export interface WorkerOptions {
  connection: NativeConnection;
  fleet: Fleet;
  namespace?: string;
  taskQueue?: string;
}

/**
 * Activities (and local activities) one worker runs at once. They wait on model servers, not on this
 * process's CPU, so the SDK's default of 100 was what bounded the fleet: 128 searches on 16 servers keep
 * 128 batches in flight, and 1,000 concurrent searches of a campaign up to 1,000.
 */
const ACTIVITY_SLOTS = 1_000;

export async function createSearchWorker({ connection, fleet, namespace, taskQueue }: WorkerOptions): Promise<Worker> {
  return Worker.create({
    connection,
    namespace: namespace ?? DEFAULT_NAMESPACE,
    taskQueue: taskQueue ?? TASK_QUEUE,
    maxConcurrentActivityTaskExecutions: ACTIVITY_SLOTS,
    maxConcurrentLocalActivityExecutions: ACTIVITY_SLOTS,
    ...workflowSource(),
    activities: { ...createActivities({ fleet }), ...createCampaignActivities({ fleet }) },
  });
}
