// The durable driver: the generic search state machine, one activity per batch. No tensors, network,
// clock or randomness here; everything that decides the result is in src/search, so a stop, a budget
// change or a continue-as-new never changes what a round computes.
import {
  allHandlersFinished,
  ApplicationFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  isCancellation,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../src/activities';
import { FLEET_RETRY } from '../src/retry';
import {
  budgetRefusal,
  createRun,
  finishRound,
  nfeSpent,
  progressOf,
  requestStop,
  SearchFailure,
  setBudget,
  startRound,
  type RunState,
  type SearchProgress,
  type SearchResult,
} from '../src/search/run';
import { packBatch, unpackOutcome } from '../src/search/packing';
import type { BatchOutcome } from '../src/search/types';
import { SpecError, type SearchSpec } from '../src/search/spec';
import { SEARCH_ATTRIBUTES } from '../src/temporal/search-attributes';

// A batch's own gRPC deadline scales with its cost (src/fleet); the heartbeat notices a worker that died,
// and the start-to-close timeout is only a backstop. Retryable failures are retried for as long as they
// last (src/retry.ts): a fleet outage pauses the search.
const { evaluateBatch } = proxyActivities<Activities>({ startToCloseTimeout: '1 hour', heartbeatTimeout: '15 seconds', retry: FLEET_RETRY });
// A Describe answers in milliseconds: a short timeout notices a worker that died during one.
const { describeModel } = proxyActivities<Activities>({ startToCloseTimeout: '10 seconds', retry: FLEET_RETRY });

// The fast path (docs/architecture.md, "Orchestration overhead"): the same activities run as local
// activities, which chain inside one workflow task instead of costing a server round trip each (about
// 30 ms). One attempt only: the fleet client has already retried UNAVAILABLE on its channel. Whatever
// fails there is decided by the durable activities above, exactly as before local activities: an outage
// is retried by Temporal and described as a pending activity (src/temporal/waiting.ts), and a failure that
// cannot succeed fails the search with the same ActivityFailure as always. A worker that dies mid-chain
// loses the results not yet committed; they are computed again, identically.
const fast = proxyLocalActivities<Activities>({ startToCloseTimeout: '1 hour', retry: { ...FLEET_RETRY, maximumAttempts: 1 } });

/**
 * Start a search on the fast path with this workflow task timeout (startSearch). Signals, updates
 * and queries reach a workflow only between its workflow tasks, and while local activities chain the SDK
 * ends the task at 80 % of this timeout: so a stop, a budget change or a progress query waits at most
 * about 1.6 s (plus the batches in flight). It is also how soon a dead worker's task is retried.
 */
export const SEARCH_WORKFLOW_TASK_TIMEOUT = '2 seconds';

/**
 * A batch that the servers say took this long sends the rest of the search down the durable path: a local
 * activity longer than the workflow task timeout costs three history events every 1.6 s (the task's
 * heartbeats), while a round trip of about 30 ms is at most 3 % of a batch this long.
 */
const LONG_BATCH_SECONDS = 1;

function serverSeconds(outcome: BatchOutcome): number {
  return (outcome.denoiseSeconds ?? 0) + outcome.verifierTimings.reduce((sum, timing) => sum + timing.seconds, 0);
}

/** Histories recorded before local activities replay down the durable path they took. */
const LOCAL_ACTIVITIES_PATCH = 'local-activities-v1';

/** The local activity; when it fails, the durable one for this call, unless the search was cancelled. */
function fastThenDurable<A extends unknown[], R>(local: (...args: A) => Promise<R>, durable: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args: A): Promise<R> => {
    try {
      return await local(...args);
    } catch (error) {
      if (isCancellation(error)) throw error;
      return durable(...args);
    }
  };
}

export const progressQuery = defineQuery<SearchProgress | null>('progress');
export const stopSignal = defineSignal('stop');
export const setBudgetUpdate = defineUpdate<SearchProgress, [number]>('setBudget');

export interface SearchWorkflowOptions {
  /** The run carried over a continue-as-new. */
  resume?: RunState;
  /** Keep the Noisesearch* search attributes up to date (the namespace must have them). */
  indexed?: boolean;
  /** Continue as new after this many rounds even before Temporal suggests it (tests). */
  continueAsNewEveryRounds?: number;
  /**
   * Run batches and Describe as local activities: opt-in only (startSearch with `localActivities: true`
   * or NOISESEARCH_LOCAL_ACTIVITIES=1). A workflow task that times out while its local activities run and
   * a signal or cancel that arrives meanwhile leave the search stuck on a nondeterminism error on SDK 1.24
   * (docs/architecture.md, "Orchestration overhead").
   */
  localActivities?: boolean;
}

/** Search attributes are brought up to date every few rounds and at the end: each upsert is a history event. */
const INDEX_EVERY_ROUNDS = 10;

function indexProgress(run: RunState): void {
  if (run.round % INDEX_EVERY_ROUNDS !== 0 && run.phase !== 'done') return;
  const best = progressOf(run).best;
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.nfeSpent, value: nfeSpent(run) },
    ...(best ? [{ key: SEARCH_ATTRIBUTES.bestScore, value: best.score }] : []),
  ]);
}

export async function searchWorkflow(spec: SearchSpec, options: SearchWorkflowOptions = {}): Promise<SearchResult> {
  let run: RunState | null = options.resume ?? null;
  let stopBeforeRun = false;
  setHandler(progressQuery, () => run && progressOf(run));
  setHandler(stopSignal, () => {
    if (run) run = requestStop(run);
    else stopBeforeRun = true;
  });
  setHandler(
    setBudgetUpdate,
    (budgetNfe) => {
      run = setBudget(run!, budgetNfe);
      return progressOf(run);
    },
    {
      validator: (budgetNfe) => {
        const refusal = run ? budgetRefusal(run, budgetNfe) : 'budget: the search has not started yet; try again in a moment';
        if (refusal) throw new Error(refusal);
      },
    },
  );
  const local = options.localActivities === true && patched(LOCAL_ACTIVITIES_PATCH);
  const describe = local ? fastThenDurable(fast.describeModel, describeModel) : describeModel;
  const fastEvaluate = fastThenDurable(fast.evaluateBatch, evaluateBatch);
  // Decided from recorded results only, so a replay takes the same path.
  let longBatches = !local;
  try {
    if (!run) {
      const model = await describe(spec.model);
      run = createRun(spec, model);
      if (stopBeforeRun) run = requestStop(run);
      if (options.indexed) {
        upsertSearchAttributes([
          { key: SEARCH_ATTRIBUTES.algorithm, value: spec.algorithm.name },
          { key: SEARCH_ATTRIBUTES.model, value: spec.model },
          { key: SEARCH_ATTRIBUTES.verifier, value: spec.verifiers.join(',') },
        ]);
      }
    }
    let roundsThisRun = 0;
    while (run.phase !== 'done') {
      const round = startRound(run);
      run = round.run;
      if (round.batches.length > 0) {
        const labels = { algorithm: run.plan.spec.algorithm.name, phase: round.run.phase as 'search' | 'final' };
        const evaluate = longBatches ? evaluateBatch : fastEvaluate;
        const outcomes = await Promise.all(round.batches.map(async (batch) => unpackOutcome(await evaluate({ ...packBatch(batch), labels }), batch)));
        longBatches ||= outcomes.some((outcome) => serverSeconds(outcome) >= LONG_BATCH_SECONDS);
        run = finishRound(run, outcomes);
        roundsThisRun++;
      }
      if (options.indexed) indexProgress(run);
      const due = options.continueAsNewEveryRounds !== undefined && roundsThisRun >= options.continueAsNewEveryRounds;
      if (run.phase !== 'done' && (workflowInfo().continueAsNewSuggested || due)) {
        await condition(allHandlersFinished);
        await continueAsNew<typeof searchWorkflow>(run.plan.spec, { ...options, resume: run });
      }
    }
    return run.result!;
  } catch (error) {
    if (error instanceof SpecError || error instanceof SearchFailure) {
      throw ApplicationFailure.nonRetryable(error.message, error.name);
    }
    throw error;
  }
}
