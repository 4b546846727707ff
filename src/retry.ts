// One retry policy for model-server calls, used by the Temporal activities' proxies (in Temporal's
// RetryPolicy shape) and by the in-process driver alike. A retryable failure (a server down, restarting,
// overloaded) is retried without an attempt limit, so a fleet outage pauses a search instead of failing
// it; the backoff is capped so the search resumes within seconds of the fleet coming back. What cannot
// succeed by trying again is non-retryable and fails at once (src/fleet/errors.ts).
export const FLEET_RETRY = {
  initialInterval: 200,
  backoffCoefficient: 2,
  maximumInterval: 5_000,
} as const;

export function backoffMs(attempt: number): number {
  return Math.min(FLEET_RETRY.maximumInterval, FLEET_RETRY.initialInterval * FLEET_RETRY.backoffCoefficient ** (attempt - 1));
}
