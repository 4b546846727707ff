// The in-process driver: the same state machine as the workflow, without Temporal. It is the quick way
// to run a search, and the baseline that measures what durability costs.
import type { Fleet } from './fleet/client';
import { FleetError } from './fleet/errors';
import { backoffMs, FLEET_RETRY } from './retry';
import { createRun, finishRound, startRound, type SearchProgress, type SearchResult, progressOf } from './search/run';
import type { SearchSpec } from './search/spec';

async function withRetry<T>(call: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (!(error instanceof FleetError) || !error.retryable || attempt >= FLEET_RETRY.maximumAttempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, backoffMs(attempt)));
    }
  }
}

export async function runLocalSearch(
  spec: SearchSpec,
  fleet: Fleet,
  onProgress?: (progress: SearchProgress) => void,
): Promise<SearchResult> {
  const model = await withRetry(() => fleet.describe(spec.model));
  let run = createRun(spec, model);
  while (run.phase !== 'done') {
    const round = startRound(run);
    const outcomes = await Promise.all(round.batches.map((batch) => withRetry(() => fleet.evaluate(batch))));
    run = finishRound(round.run, outcomes);
    onProgress?.(progressOf(run));
  }
  return run.result!;
}
