// Activities: the only place the orchestrator touches the network. Each call is one batch, evaluated end
// to end on one server; the workflow sees plain outcomes or a classified Temporal failure.
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Fleet } from './fleet/client';
import { FleetError } from './fleet/errors';
import { countBatch, countCancelled } from './metrics';
import { packOutcome, unpackBatch, type PackedBatch, type PackedOutcome } from './search/packing';
import type { ModelInfo } from './search/types';

const HEARTBEAT_EVERY_MS = 1_000;

export function toActivityFailure(error: unknown): ApplicationFailure {
  if (error instanceof FleetError) {
    return ApplicationFailure.create({ type: error.code, message: error.message, nonRetryable: !error.retryable });
  }
  return ApplicationFailure.create({ type: 'UNKNOWN', message: String((error as Error)?.message ?? error) });
}

/** Wraps an activity so that whatever it throws reaches the workflow classified, in one place. */
export function classified<A extends unknown[], R>(activity: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args: A): Promise<R> => {
    try {
      return await activity(...args);
    } catch (error) {
      throw toActivityFailure(error);
    }
  };
}

export interface ActivityDependencies {
  fleet: Fleet;
}

export function createActivities({ fleet }: ActivityDependencies) {
  return {
    describeModel: classified((model: string): Promise<ModelInfo> => fleet.describe(model)),

    /** One batch, packed as it travels through Temporal (src/search/packing.ts). */
    evaluateBatch: classified(async (packed: PackedBatch): Promise<PackedOutcome> => {
      const batch = unpackBatch(packed);
      const context = Context.current();
      // A local activity cannot heartbeat: a worker that dies during one loses its workflow task instead.
      const heartbeat = context.info.isLocal ? undefined : setInterval(() => context.heartbeat({ candidates: batch.candidates.length }), HEARTBEAT_EVERY_MS);
      // A batch from a workflow started before batches carried labels counts as its search's.
      const labels = packed.labels ?? { algorithm: 'unknown', phase: 'search' };
      try {
        const outcome = await fleet.evaluate(batch, context.cancellationSignal);
        countBatch(batch, outcome, labels);
        return packOutcome(outcome, batch);
      } catch (error) {
        if (context.cancellationSignal.aborted) countCancelled(batch, labels.algorithm);
        throw error;
      } finally {
        clearInterval(heartbeat);
      }
    }),
  };
}

export type Activities = ReturnType<typeof createActivities>;
