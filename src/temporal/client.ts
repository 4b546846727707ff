import { createHash } from 'node:crypto';
import { Client, WorkflowIdConflictPolicy, type WorkflowHandle } from '@temporalio/client';
import type { SearchSpec } from '../search/spec';
import { searchWorkflow, type SearchWorkflowOptions } from '../../workflows/search';
import { SEARCH_ATTRIBUTES } from './search-attributes';
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

/** Whether the namespace has every Noisesearch* search attribute, so workflows may keep them current. */
export async function hasSearchAttributes(client: Client): Promise<boolean> {
  try {
    const { customAttributes } = await client.connection.operatorService.listSearchAttributes({ namespace: client.options.namespace });
    return Object.values(SEARCH_ATTRIBUTES).every((key) => customAttributes && key.name in customAttributes);
  } catch {
    return false;
  }
}

export interface StartSearchOptions extends Omit<SearchWorkflowOptions, 'resume'> {
  workflowId?: string;
  taskQueue?: string;
}

export async function startSearch(
  client: Client,
  spec: SearchSpec,
  options: StartSearchOptions = {},
): Promise<WorkflowHandle<typeof searchWorkflow>> {
  const { workflowId, taskQueue, ...workflowOptions } = options;
  const indexed = workflowOptions.indexed ?? (await hasSearchAttributes(client));
  return client.workflow.start(searchWorkflow, {
    args: [spec, { ...workflowOptions, indexed }],
    taskQueue: taskQueue ?? TASK_QUEUE,
    workflowId: workflowId ?? searchWorkflowId(spec),
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
  });
}
