import { DefaultLogger, NativeConnection, Runtime, Worker, makeTelemetryFilterString } from '@temporalio/worker';
import { commandLogLevel, LOG_LEVELS, type LogLevel, writeLogEntry } from '../cli/log';
import { createActivities } from '../activities';
import { createCampaignActivities } from '../campaign/activities';
import type { Fleet } from '../fleet/client';
import { workflowSource } from './bundle';
import { DEFAULT_NAMESPACE, TASK_QUEUE } from './constants';
import { StuckTaskWatcher } from './stuck';

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

/** The more verbose of two levels: a stuck workflow's report needs core's WARN lines even at --log-level error. */
function verbosest(a: LogLevel, b: LogLevel): LogLevel {
  return LOG_LEVELS.indexOf(a) <= LOG_LEVELS.indexOf(b) ? a : b;
}

export interface QuietRuntimeOptions {
  /** Called once per workflow whose workflow task this process's worker fails (the `worker` command prints it). */
  onStuckWorkflow?: (workflowId: string, firstError: string) => void;
  /** The workflow ID of a run whose task fails, for runs that were failing before this worker started. */
  workflowOfRun?: (runId: string) => Promise<string | undefined>;
}

/**
 * Sends every line of the SDK and of its Rust core to the command's log file (src/cli/log.ts), at
 * --log-level (NOISESEARCH_LOG_LEVEL, else `defaultLevel`): the terminal is for the command's own output.
 * Call before any connection.
 */
export function installQuietRuntime(defaultLevel: LogLevel = 'INFO', options: QuietRuntimeOptions = {}): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  const level = commandLogLevel(defaultLevel);
  const watcher = options.onStuckWorkflow ? new StuckTaskWatcher(options.onStuckWorkflow, options.workflowOfRun) : null;
  const collected = verbosest(level, watcher ? 'WARN' : level);
  const logger = new DefaultLogger(collected, (entry) => {
    watcher?.observe(entry.message, entry.meta);
    if (LOG_LEVELS.indexOf(entry.level) < LOG_LEVELS.indexOf(level)) return;
    writeLogEntry(entry.level, entry.message, entry.meta, new Date(Number(entry.timestampNanos / 1_000_000n)));
  });
  // Prometheus conventions, as our own metrics follow them: seconds, and counters ending in _total.
  const metrics = temporalMetricsAddress
    ? { metrics: { prometheus: { bindAddress: temporalMetricsAddress, countersTotalSuffix: true, useSecondsForDurations: true } } }
    : {};
  // `forward`: the core's lines go through the logger above, not straight to the console.
  Runtime.install({ logger, telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: collected }), forward: {} }, ...metrics } });
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
