// Whether a search is waiting out a fleet outage. The workflow cannot tell (its activity is being retried
// by Temporal, which records nothing in the history until an attempt ends), but Temporal's description of
// the workflow lists the activity with its attempt and last failure: a client reads it there, so waiting
// costs no history at all.
import type { WorkflowHandle } from '@temporalio/client';

export interface FleetWait {
  /** The activity being retried (evaluateBatch, describeModel, recordSearch, ...). */
  activity: string;
  attempt: number;
  /** Why the last attempt failed. */
  lastFailure: string;
}

/** The first activity of the workflow that has failed at least once and is being retried; null when none is. */
export async function fleetWait(handle: WorkflowHandle): Promise<FleetWait | null> {
  const { raw } = await handle.describe();
  for (const pending of raw.pendingActivities ?? []) {
    const attempt = pending.attempt ?? 1;
    if (attempt > 1 && pending.lastFailure) {
      // The failure's type is its classified gRPC status (src/fleet/errors.ts); say it unless the message does.
      const type = pending.lastFailure.applicationFailureInfo?.type ?? '';
      const message = pending.lastFailure.message ?? '';
      return { activity: pending.activityType?.name ?? 'activity', attempt, lastFailure: type && !message.includes(type) ? `${type}: ${message}` : message };
    }
  }
  return null;
}

export function describeWait(wait: FleetWait): string {
  return `waiting for model servers (${wait.activity}, attempt ${wait.attempt}): ${wait.lastFailure}`;
}
