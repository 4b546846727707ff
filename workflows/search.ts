// The durable driver: the generic search state machine, one activity per batch. No tensors, network,
// clock or randomness here; everything that decides the result is in src/search.
import { ApplicationFailure, defineQuery, proxyActivities, setHandler } from '@temporalio/workflow';
import type { Activities } from '../src/activities';
import { FLEET_RETRY } from '../src/retry';
import { createRun, finishRound, progressOf, SearchFailure, startRound, type RunState, type SearchProgress, type SearchResult } from '../src/search/run';
import { SpecError, type SearchSpec } from '../src/search/spec';

const { describeModel, evaluateBatch } = proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '15 seconds',
  retry: {
    initialInterval: FLEET_RETRY.initialIntervalMs,
    backoffCoefficient: FLEET_RETRY.backoffCoefficient,
    maximumInterval: FLEET_RETRY.maximumIntervalMs,
    maximumAttempts: FLEET_RETRY.maximumAttempts,
  },
});

export const progressQuery = defineQuery<SearchProgress | null>('progress');

export async function searchWorkflow(spec: SearchSpec): Promise<SearchResult> {
  let run: RunState | null = null;
  setHandler(progressQuery, () => run && progressOf(run));
  const model = await describeModel(spec.model);
  try {
    run = createRun(spec, model);
    while (run.phase !== 'done') {
      const round = startRound(run);
      run = round.run;
      const outcomes = await Promise.all(round.batches.map((batch) => evaluateBatch(batch)));
      run = finishRound(run, outcomes);
    }
    return run.result!;
  } catch (error) {
    if (error instanceof SpecError || error instanceof SearchFailure) {
      throw ApplicationFailure.nonRetryable(error.message, error.name);
    }
    throw error;
  }
}
