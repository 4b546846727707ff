// A search waiting out a fleet that is down: which call is being retried, how often, and why it failed
// last. Both drivers report it the same way (src/local.ts as it retries, src/temporal/waiting.ts from
// Temporal's description of the workflow).
export interface FleetWait {
  /** The call being retried (evaluate, evaluateBatch, describeModel, recordSearch, ...). */
  activity: string;
  attempt: number;
  /** Why the last attempt failed, with its classified status. */
  lastFailure: string;
}

export function describeWait(wait: FleetWait): string {
  return `waiting for model servers (${wait.activity}, attempt ${wait.attempt}): ${wait.lastFailure}`;
}

/** A failure's text with its status in front, unless the text already says it. */
export function withStatus(code: string, message: string): string {
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
