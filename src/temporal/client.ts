import { createHash } from 'node:crypto';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { Client, type Connection, WorkflowExecutionAlreadyStartedError, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, type WorkflowHandle, type WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { canonicalJson } from '../campaign/hash';
import type { CampaignInput } from '../campaign/plan';
import { campaignWorkflow } from '../../workflows/campaign';
import type { SearchSpec } from '../search/spec';
import { SEARCH_WORKFLOW_TASK_TIMEOUT, searchWorkflow, type SearchWorkflowOptions } from '../../workflows/search';
import { SEARCH_ATTRIBUTES } from './search-attributes';
import { TASK_QUEUE } from './constants';

export function configHash(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value)).digest('hex').slice(0, 16);
}

/** The same spec gets the same ID, so starting it again attaches to the search already running. */
export function searchWorkflowId(spec: SearchSpec): string {
  return `search-${spec.model}-${spec.algorithm.name}-${configHash(spec)}`;
}

const NAMESPACE_RETENTION = '3 days';

/**
 * Registers the namespace unless it exists, and waits (bounded) until the server serves it: a new
 * namespace is in the database at once but reaches the frontend's namespace cache seconds later, so the
 * wait asks through a call that goes through that cache.
 */
export async function ensureNamespace(connection: Connection, namespace: string, timeoutMs = 60_000): Promise<void> {
  const exists = () =>
    connection.workflowService.listWorkflowExecutions({ namespace, pageSize: 1 }).then(
      () => true,
      (error: { code?: number }) => {
        if (error.code === GrpcStatus.NOT_FOUND) return false;
        throw error;
      },
    );
  if (await exists()) return;
  await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs(NAMESPACE_RETENTION) }).catch((error: { code?: number }) => {
    if (error.code !== GrpcStatus.ALREADY_EXISTS) throw error;
  });
  const deadline = Date.now() + timeoutMs;
  while (!(await exists())) {
    if (Date.now() > deadline) throw new Error(`namespace ${namespace} was registered but is not served after ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Clients whose namespace has been seen to have the attributes: they are never removed, so one look is enough. */
const indexedClients = new WeakSet<Client>();

/** Whether the namespace has every Noisesearch* search attribute, so workflows may keep them current. */
export async function hasSearchAttributes(client: Client): Promise<boolean> {
  if (indexedClients.has(client)) return true;
  try {
    const { customAttributes } = await client.connection.operatorService.listSearchAttributes({ namespace: client.options.namespace });
    const has = Object.values(SEARCH_ATTRIBUTES).every((key) => customAttributes && key.name in customAttributes);
    if (has) indexedClients.add(client);
    return has;
  } catch {
    return false;
  }
}

export interface StartSearchOptions extends Omit<SearchWorkflowOptions, 'resume'> {
  workflowId?: string;
  taskQueue?: string;
  requestEagerStart?: boolean;
}

/**
 * Whether searches take the local-activity fast path when the caller does not say: only with
 * NOISESEARCH_LOCAL_ACTIVITIES=1. A worker that stalls past the 2 s workflow task timeout while a stop
 * signal or a cancel arrives leaves the search stuck for ever on SDK 1.24 (docs/architecture.md,
 * "Orchestration overhead"; test/orchestration.test.ts), so the durable path is the default.
 */
export function localActivitiesRequested(): boolean {
  return process.env.NOISESEARCH_LOCAL_ACTIVITIES === '1';
}

export async function startSearch(
  client: Client,
  spec: SearchSpec,
  options: StartSearchOptions = {},
): Promise<WorkflowHandleWithFirstExecutionRunId<typeof searchWorkflow>> {
  const { workflowId, taskQueue, requestEagerStart, ...workflowOptions } = options;
  const indexed = workflowOptions.indexed ?? (await hasSearchAttributes(client));
  const localActivities = workflowOptions.localActivities ?? localActivitiesRequested();
  return client.workflow.start(searchWorkflow, {
    args: [spec, { ...workflowOptions, localActivities, indexed }],
    taskQueue: taskQueue ?? TASK_QUEUE,
    workflowId: workflowId ?? searchWorkflowId(spec),
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
    // The short timeout only bounds how long a chain of local activities holds off a stop or a query.
    workflowTaskTimeout: localActivities ? SEARCH_WORKFLOW_TASK_TIMEOUT : undefined,
    requestEagerStart,
  });
}

/**
 * Starts a campaign, or attaches to it: its ID is the campaign's, so a second `campaign run` of the same
 * spec joins the run in progress, and a finished campaign is not run again unless it failed (which
 * retries its failed searches; finished ones stay in the store and are skipped).
 */
export async function startCampaign(client: Client, input: CampaignInput, options: { taskQueue?: string } = {}): Promise<WorkflowHandle<typeof campaignWorkflow>> {
  try {
    return await client.workflow.start(campaignWorkflow, {
      args: [input, { indexed: await hasSearchAttributes(client) }],
      taskQueue: options.taskQueue ?? TASK_QUEUE,
      workflowId: input.campaignId,
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    });
  } catch (error) {
    if (error instanceof WorkflowExecutionAlreadyStartedError) return client.workflow.getHandle<typeof campaignWorkflow>(input.campaignId);
    throw error;
  }
}
