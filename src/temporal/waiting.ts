// Whether a search is waiting out a fleet outage. The workflow cannot tell (its activity is being retried
// by Temporal, which records nothing in the history until an attempt ends), but Temporal's description of
// the workflow lists the activity with its attempt and last failure: a client reads it there, so waiting
// costs no history at all.
import type { WorkflowHandle } from '@temporalio/client';
import { withStatus, type FleetWait } from '../fleet/wait';

/** The first activity of the workflow that has failed at least once and is being retried; null when none is. */
export async function fleetWait(handle: WorkflowHandle): Promise<FleetWait | null> {
  const { raw } = await handle.describe();
  for (const pending of raw.pendingActivities ?? []) {
    const attempt = pending.attempt ?? 1;
    if (attempt > 1 && pending.lastFailure) {
      // The failure's type is its classified gRPC status (src/fleet/errors.ts).
      const lastFailure = withStatus(pending.lastFailure.applicationFailureInfo?.type ?? '', pending.lastFailure.message ?? '');
      return { activity: pending.activityType?.name ?? 'activity', attempt, lastFailure };
    }
  }
  return null;
}
