// Stuck workflows: ones whose workflow tasks keep failing (an unregistered type, a bug or nondeterminism in
// workflow code, input it cannot take). Temporal retries such a task for ever without failing the workflow,
// so nothing ends and nothing says why; `status`, the dashboard and the worker say it, once per workflow.
import type { Client, WorkflowExecutionDescription } from '@temporalio/client';

/** Attempts of the pending workflow task from which a workflow counts as stuck: one failure may be a blip. */
export const STUCK_ATTEMPTS = 2;
/** Running workflows described one by one where visibility cannot find the stuck ones by itself. */
export const STUCK_SCAN_CAP = 200;
/** Stuck workflows reported at most, by one status or dashboard gathering. */
export const STUCK_REPORT_LIMIT = 20;

export interface StuckWorkflow {
  workflowId: string;
  runId: string;
  /** The pending workflow task's attempt: how often it failed, plus one. */
  attempts: number;
  /** The failure of the first task of the failing streak, as Temporal recorded it. */
  firstError: string;
}

export interface StuckScan {
  stuck: StuckWorkflow[];
  /** Set when visibility could not select the stuck workflows: only this many running ones were described. */
  scannedCap?: number;
}

/** One line in words, for a terminal or a page. */
export function describeStuck(stuck: StuckWorkflow): string {
  const attempt = stuck.attempts >= STUCK_ATTEMPTS ? ` (attempt ${stuck.attempts})` : '';
  return `workflow ${stuck.workflowId}: its workflow tasks keep failing${attempt}: ${stuck.firstError}`;
}

/**
 * The failure of the latest WorkflowTaskFailed event, read from the history's end: Temporal records only the
 * first failure of a streak (later attempts are transient), so that is the first error of this one.
 */
export async function firstWorkflowTaskError(client: Client, workflowId: string, runId: string, maxPages = 5): Promise<string> {
  let nextPageToken: Uint8Array | undefined;
  for (let page = 0; page < maxPages; page++) {
    const response = await client.workflowService.getWorkflowExecutionHistoryReverse({
      namespace: client.options.namespace,
      execution: { workflowId, runId },
      maximumPageSize: 100,
      nextPageToken,
    });
    const failed = response.history?.events?.find((event) => event.workflowTaskFailedEventAttributes);
    if (failed) return failed.workflowTaskFailedEventAttributes?.failure?.message?.split('\n')[0] || 'a workflow task failed without a message';
    if (!response.nextPageToken?.length) break;
    nextPageToken = response.nextPageToken;
  }
  return 'its history records no failed workflow task yet';
}

/**
 * The workflow, if it runs and its pending workflow task failed STUCK_ATTEMPTS - 1 times or more, or Temporal
 * reports problems with it (TemporalReportedProblems, set as its tasks keep failing: between two attempts
 * the pending task may not show its attempt).
 */
export async function stuckWorkflow(client: Client, workflowId: string, description?: WorkflowExecutionDescription): Promise<StuckWorkflow | null> {
  const described = description ?? (await client.workflow.getHandle(workflowId).describe());
  const attempts = described.raw.pendingWorkflowTask?.attempt ?? 0;
  // The untyped map: it holds system attributes by name.
  const problems = (described.searchAttributes as Record<string, unknown[] | undefined>).TemporalReportedProblems ?? [];
  if (described.status.name !== 'RUNNING' || (attempts < STUCK_ATTEMPTS && problems.length === 0)) return null;
  return { workflowId, runId: described.runId, attempts, firstError: await firstWorkflowTaskError(client, workflowId, described.runId) };
}

/**
 * The stuck workflows among the running ones that `scope` (a visibility query, e.g. on ParentWorkflowId)
 * selects. The embedded Temporal sets TemporalReportedProblems on them (src/embedded/processes.ts), so one
 * query finds them; where that attribute is unknown, the first STUCK_SCAN_CAP running ones are described.
 */
export async function findStuckWorkflows(client: Client, scope?: string): Promise<StuckScan> {
  const running = `ExecutionStatus = 'Running'${scope ? ` AND (${scope})` : ''}`;
  const candidates: string[] = [];
  let scannedCap: number | undefined;
  try {
    for await (const info of client.workflow.list({ query: `${running} AND TemporalReportedProblems IS NOT NULL`, pageSize: STUCK_REPORT_LIMIT })) {
      candidates.push(info.workflowId);
      if (candidates.length >= STUCK_REPORT_LIMIT) break;
    }
  } catch {
    scannedCap = STUCK_SCAN_CAP;
    for await (const info of client.workflow.list({ query: running, pageSize: STUCK_SCAN_CAP })) {
      candidates.push(info.workflowId);
      if (candidates.length >= STUCK_SCAN_CAP) break;
    }
  }
  const stuck = await stuckAmong(client, candidates);
  return { stuck: stuck.slice(0, STUCK_REPORT_LIMIT), scannedCap };
}

/** The stuck ones among `workflowIds`, described side by side; one that closed or vanished meanwhile is not stuck. */
export async function stuckAmong(client: Client, workflowIds: string[]): Promise<StuckWorkflow[]> {
  const found = await Promise.all(workflowIds.map((id) => stuckWorkflow(client, id).catch(() => null)));
  return found.filter((s): s is StuckWorkflow => s !== null);
}

/** The first error's message in a core "Failing workflow task" entry's `failure` (Rust debug format). */
function coreFailureMessage(failure: unknown): string {
  const match = /message: "((?:[^"\\]|\\.)*)"/.exec(String(failure ?? ''));
  return match ? match[1].replace(/\\(.)/g, '$1').split('\n')[0] : String(failure ?? 'unknown failure').split('\n')[0];
}

/** Runs whose workflow code threw once, remembered by a worker to tell a retried task from a failed workflow. */
const FAILED_RUNS_REMEMBERED = 10_000;

/** A log entry's `error` meta (an Error, or what the SDK made of one) as its first line. */
function errorMessage(error: unknown): string {
  const message = error instanceof Error ? error.message : (error as { message?: unknown } | undefined)?.message;
  return typeof message === 'string' && message ? message.split('\n')[0] : 'the workflow code threw (no message)';
}

/**
 * Watches a worker's log entries for failed workflow tasks, and calls `report` once per workflow ID. The SDK
 * core logs "Failing workflow task" (workflowId, failure) only for a task's first attempt. For every attempt,
 * the TypeScript worker logs "Workflow failed" (workflowId, error) where the workflow code threw, and "Failed
 * to process Workflow Activation" (runId, error) where it could not run at all (an unregistered type), so a
 * workflow stuck before this worker started is found by them, through `workflowOfRun` for the latter.
 */
export class StuckTaskWatcher {
  private readonly reportedRuns = new Set<string>();
  private readonly reportedWorkflows = new Set<string>();
  /** Runs whose workflow code threw once: the worker logs "Workflow failed" at every attempt. */
  private readonly failedOnce = new Set<string>();
  private readonly report: (workflowId: string, firstError: string) => void;

  constructor(
    report: (workflowId: string, firstError: string) => void,
    private readonly workflowOfRun?: (runId: string) => Promise<string | undefined>,
  ) {
    // Once per workflow ID, whichever of its runs and lines says it first.
    this.report = (workflowId, firstError) => {
      if (this.reportedWorkflows.has(workflowId)) return;
      this.reportedWorkflows.add(workflowId);
      report(workflowId, firstError);
    };
  }

  observe(message: string, meta: Record<string, unknown> | undefined): void {
    const runId = meta?.runId;
    if (typeof runId !== 'string' || this.reportedRuns.has(runId)) return;
    const workflowId = meta?.workflowId;
    if (message === 'Failing workflow task' && typeof workflowId === 'string') {
      this.reportedRuns.add(runId);
      this.report(workflowId, coreFailureMessage(meta?.failure));
    } else if (message === 'Workflow failed' && typeof workflowId === 'string') {
      // Said once by a run that fails for good; said again by the same run only when its task was retried.
      if (!this.failedOnce.has(runId)) {
        // A worker that runs for months sees many runs fail for good: forgetting them all now and then costs at most a late report.
        if (this.failedOnce.size >= FAILED_RUNS_REMEMBERED) this.failedOnce.clear();
        this.failedOnce.add(runId);
        return;
      }
      this.reportedRuns.add(runId);
      this.report(workflowId, errorMessage(meta?.error));
    } else if (message === 'Failed to process Workflow Activation' && this.workflowOfRun) {
      this.reportedRuns.add(runId);
      const error = errorMessage(meta?.error);
      // A run that cannot be resolved (Temporal away, the run just closed) is reported by its next failure's core line, if any.
      this.workflowOfRun(runId).then(
        (id) => (id ? this.report(id, error) : this.reportedRuns.delete(runId)),
        () => this.reportedRuns.delete(runId),
      );
    }
  }
}

/** The workflow ID of a run, through visibility (the only lookup by run ID alone). */
export async function workflowOfRun(client: Client, runId: string): Promise<string | undefined> {
  for await (const info of client.workflow.list({ query: `RunId = '${runId.replace(/[^\w-]/g, '')}'`, pageSize: 1 })) return info.workflowId;
  return undefined;
}
