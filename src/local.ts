// The in-process driver: the same state machine as the workflow, without Temporal. It is the quick way
// to run a search, and the baseline that measures what durability costs.
import type { Fleet } from './fleet/client';
import { FleetError } from './fleet/errors';
import { withStatus, type FleetWait } from './fleet/wait';
import { countBatch } from './metrics';
import { backoffMs } from './retry';
import { createRun, finishRound, startRound, type SearchProgress, type SearchResult, progressOf } from './search/run';
import type { SearchSpec } from './search/spec';

export interface LocalSearchOptions {
  onProgress?: (progress: SearchProgress) => void;
  /** Told when calls start failing with retryable errors (the search waits) and when they succeed again. */
  onWaiting?: (wait: FleetWait | null) => void;
}

/** Retries retryable fleet failures with capped backoff, for as long as they last; anything else fails at once. */
async function withRetry<T>(call: () => Promise<T>, onWaiting?: (wait: FleetWait | null) => void): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      const value = await call();
      if (attempt > 1) onWaiting?.(null);
      return value;
    } catch (error) {
      if (!(error instanceof FleetError) || !error.retryable) throw error;
      onWaiting?.({ activity: 'evaluate', attempt, lastFailure: withStatus(error.code, error.message) });
      await new Promise((resolve) => setTimeout(resolve, backoffMs(attempt)));
    }
  }
}

export async function runLocalSearch(spec: SearchSpec, fleet: Fleet, options: LocalSearchOptions = {}): Promise<SearchResult> {
  const model = await withRetry(() => fleet.describe(spec.model), options.onWaiting);
  let run = createRun(spec, model);
  while (run.phase !== 'done') {
    const round = startRound(run);
    const labels = { algorithm: spec.algorithm.name, phase: round.run.phase as 'search' | 'final' };
    const outcomes = await Promise.all(
      round.batches.map(async (batch) => {
        const outcome = await withRetry(() => fleet.evaluate(batch), options.onWaiting);
        countBatch(batch, outcome, labels);
        return outcome;
      }),
    );
    run = finishRound(round.run, outcomes);
    options.onProgress?.(progressOf(run));
  }
  return run.result!;
}
