// A campaign: child search workflows in a sliding window of bounded concurrency, each recorded once in
// the results store. Searches already in the store are skipped, so a campaign run again (to retry its
// failed searches, or after anything died) never redoes finished work.
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  defineQuery,
  executeChild,
  isCancellation,
  ParentClosePolicy,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { CampaignActivities } from '../src/campaign/activities';
import { allCells, campaignItem, campaignSize, type CampaignInput, type CampaignItem } from '../src/campaign/plan';
import { FLEET_RETRY } from '../src/retry';
import { searchWorkflow } from './search';

// Recording a search takes milliseconds: a short timeout lets a worker that died mid-call be noticed fast.
const activities = proxyActivities<CampaignActivities>({ startToCloseTimeout: '30 seconds', retry: FLEET_RETRY });
const metrics = proxyActivities<CampaignActivities>({ startToCloseTimeout: '10 minutes', heartbeatTimeout: '30 seconds', retry: FLEET_RETRY });
// Searches are recorded by the durable activity, not a local one: a local activity in flight when the
// campaign's workflow task times out, with a child's completion arriving meanwhile, can leave the workflow
// stuck on a nondeterminism error (SDK 1.24; docs/architecture.md, "Orchestration overhead"), and a stuck
// campaign is worse than a slower one.

/**
 * When a campaign continues as new: far later than Temporal's suggestion (4,096 events), which 1,000
 * concurrent searches pass before the first of them ends, and which would stop the campaign to drain its
 * running searches every few hundred. Each finished search adds about 7 events and 4 KB; draining 1,000
 * running searches adds about 5,000 more, within Temporal's limits (51,200 events, 50 MB).
 */
const CONTINUE_AS_NEW_EVENTS = 20_000;
const CONTINUE_AS_NEW_BYTES = 20 * 2 ** 20;

export interface CellCounts {
  total: number;
  done: number;
  failed: number;
  running: number;
}

export interface CampaignProgress {
  campaignId: string;
  total: number;
  done: number;
  failed: number;
  running: number;
  /** Searches already in the store when this run started (skipped). */
  skipped: number;
  nfeSpent: number;
  cells: Record<string, CellCounts>;
  phase: 'searching' | 'metrics' | 'done';
  /** The searches running now (in the progress query only): a client can ask Temporal whether they wait. */
  runningIds?: string[];
}

export interface CampaignOptions {
  /** Children keep the Noisesearch* search attributes current (the namespace must have them). */
  indexed?: boolean;
  /** Where a continued-as-new run picks up. */
  carry?: { next: number; progress: CampaignProgress };
}

/** Searches asked about per donePage call: a page of workflow IDs stays far under 256 KB. */
const DONE_PAGE = 500;

export const campaignProgressQuery = defineQuery<CampaignProgress>('campaignProgress');

/** The innermost cause: what actually went wrong under the child and activity wrappers. */
function rootMessage(error: unknown): string {
  let e = error as Error | undefined;
  while (e?.cause) e = e.cause as Error;
  return e?.message ?? String(error);
}

export async function campaignWorkflow(input: CampaignInput, options: CampaignOptions = {}): Promise<CampaignProgress> {
  const { carry, indexed = false } = options;
  const total = campaignSize(input);
  const perCell = input.items.length * input.seeds.length;
  const { items: _items, ...withoutItems } = input;
  const progress: CampaignProgress = carry?.progress ?? {
    campaignId: input.campaignId,
    total,
    done: 0,
    failed: 0,
    running: 0,
    skipped: 0,
    nfeSpent: 0,
    cells: Object.fromEntries(allCells(input).map((cell) => [cell, { total: perCell, done: 0, failed: 0, running: 0 }])),
    phase: 'searching',
  };
  const runningIds = new Set<string>();
  setHandler(campaignProgressQuery, () => ({ ...progress, runningIds: [...runningIds] }));

  await activities.openCampaign({ ...withoutItems, itemCount: input.items.length });
  // Which searches are already in the store, a page at a time.
  let page = { done: new Set<number>(), to: 0 };
  const alreadyDone = async (index: number): Promise<boolean> => {
    if (index >= page.to) {
      const to = Math.min(total, index + DONE_PAGE);
      const workflowIds = Array.from({ length: to - index }, (_, i) => campaignItem(input, index + i).workflowId);
      const done = await activities.donePage({ store: input.store, campaignId: input.campaignId, workflowIds });
      page = { done: new Set(done.map((i) => index + i)), to };
    }
    return page.done.has(index);
  };
  const campaign = { campaignId: input.campaignId, model: input.model, evaluation: input.evaluation, store: input.store, folder: input.folder };

  let storeFailure: unknown;
  const runOne = async (item: CampaignItem): Promise<void> => {
    const cell = progress.cells[item.cell];
    progress.running++;
    cell.running++;
    runningIds.add(item.workflowId);
    const started = Date.now();
    try {
      const result = await executeChild(searchWorkflow, {
        workflowId: item.workflowId,
        args: [item.spec, { indexed }],
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      });
      await activities.recordSearch({ campaign, item, result, wallSeconds: (Date.now() - started) / 1000 });
      progress.done++;
      cell.done++;
      progress.nfeSpent += result.nfe.total;
    } catch (error) {
      // A cancelled campaign records nothing more; its loop sees the cancellation and ends.
      if (isCancellation(error)) return;
      try {
        await activities.recordFailure({ campaign, item, error: rootMessage(error), wallSeconds: (Date.now() - started) / 1000 });
        progress.failed++;
        cell.failed++;
      } catch (recordError) {
        // The store itself is failing: stop the campaign rather than lose track of this search.
        if (!isCancellation(recordError)) storeFailure ??= recordError;
      }
    } finally {
      progress.running--;
      cell.running--;
      runningIds.delete(item.workflowId);
    }
  };

  const inFlight = new Set<Promise<void>>();
  let next = carry?.next ?? 0;
  try {
    for (; next < total; next++) {
      const item = campaignItem(input, next);
      if (await alreadyDone(next)) {
        progress.skipped++;
        progress.done++;
        progress.cells[item.cell].done++;
        continue;
      }
      await condition(() => inFlight.size < input.concurrency || storeFailure !== undefined);
      if (storeFailure !== undefined) throw storeFailure;
      const { historyLength, historySize } = workflowInfo();
      if (historyLength >= CONTINUE_AS_NEW_EVENTS || historySize >= CONTINUE_AS_NEW_BYTES) {
        await condition(() => inFlight.size === 0);
        await continueAsNew<typeof campaignWorkflow>(input, { indexed, carry: { next, progress } });
      }
      const running: Promise<void> = runOne(item).finally(() => inFlight.delete(running));
      inFlight.add(running);
    }
    await condition(() => inFlight.size === 0);
    if (storeFailure !== undefined) throw storeFailure;
  } catch (error) {
    if (isCancellation(error)) {
      await CancellationScope.nonCancellable(() => condition(() => inFlight.size === 0));
    }
    throw error;
  }
  progress.phase = 'metrics';
  await metrics.computeCellMetrics(withoutItems);
  progress.phase = 'done';
  if (progress.failed > 0) {
    throw ApplicationFailure.nonRetryable(
      `${progress.failed} of ${total} searches failed; "noisesearch campaign retry ${input.campaignId}" runs them again`,
      'CampaignIncomplete',
    );
  }
  return progress;
}
