import { createHash } from 'node:crypto';
import { Client, WorkflowIdConflictPolicy, type WorkflowHandle } from '@temporalio/client';
import type { SearchSpec } from '../search/spec';
import { searchWorkflow } from '../../workflows/search';
import { TASK_QUEUE } from './constants';

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function configHash(value: unknown): string {
  return createHash('sha256').update(canonical(value)).digest('hex').slice(0, 16);
}

/** The same spec gets the same ID, so starting it again attaches to the search already running. */
export function searchWorkflowId(spec: SearchSpec): string {
  return `search-${spec.model}-${spec.algorithm.name}-${configHash(spec)}`;
}

export async function startSearch(
  client: Client,
  spec: SearchSpec,
  options: { workflowId?: string; taskQueue?: string } = {},
): Promise<WorkflowHandle<typeof searchWorkflow>> {
  return client.workflow.start(searchWorkflow, {
    args: [spec],
    taskQueue: options.taskQueue ?? TASK_QUEUE,
    workflowId: options.workflowId ?? searchWorkflowId(spec),
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
  });
}
