// One retry policy for model-server calls, used by the Temporal activities' proxies (in Temporal's
// RetryPolicy shape) and by the in-process driver alike, so a transient fleet failure is survived the
// same way through either driver.
export const FLEET_RETRY = {
  initialInterval: 200,
  backoffCoefficient: 2,
  maximumInterval: 5_000,
  maximumAttempts: 60,
} as const;

export function backoffMs(attempt: number): number {
  return Math.min(FLEET_RETRY.maximumInterval, FLEET_RETRY.initialInterval * FLEET_RETRY.backoffCoefficient ** (attempt - 1));
}
