// Tells the user, one line per change, when a search (or a campaign's searches) waits for model servers
// that are down, and when they are back. Polls Temporal's description of the workflow while `work` runs.
import type { Client, WorkflowHandle } from '@temporalio/client';
import { describeWait, type FleetWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';

const POLL_MS = 2_000;

/** Runs one client call with its own abort signal, so that no listener is left on a shared one. */
export async function abortable<T>(client: Client, stop: AbortSignal, call: () => Promise<T>): Promise<T> {
  const own = new AbortController();
  const onStop = () => own.abort();
  stop.addEventListener('abort', onStop, { once: true });
  try {
    return await client.withAbortSignal(own.signal, call);
  } finally {
    stop.removeEventListener('abort', onStop);
  }
}

/** Logs a line when `wait` starts, changes its reason, or ends; returns what to remember. */
export function reportWait(previous: FleetWait | null, wait: FleetWait | null, log: (line: string) => void): FleetWait | null {
  if (wait && (!previous || previous.lastFailure !== wait.lastFailure)) log(describeWait(wait));
  if (!wait && previous) log('model servers answer again; the search goes on');
  return wait;
}

/** Resolves after `ms`, or at once when `signal` aborts; leaves no listener behind. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

export async function watchingWaits<T>(client: Client, handle: WorkflowHandle, log: (line: string) => void, work: Promise<T>): Promise<T> {
  const stop = new AbortController();
  let last: FleetWait | null = null;
  const polling = (async () => {
    while (!stop.signal.aborted) {
      await sleep(POLL_MS, stop.signal);
      if (stop.signal.aborted) break;
      const wait = await abortable(client, stop.signal, () => fleetWait(handle)).catch(() => last);
      if (!stop.signal.aborted) last = reportWait(last, wait, log);
    }
  })();
  const stopPolling = async () => {
    stop.abort();
    await polling;
  };
  try {
    const result = await work;
    await stopPolling();
    // Rounds chain quickly once the servers are back: a search may end before the next poll sees it go on.
    reportWait(last, null, log);
    return result;
  } finally {
    await stopPolling();
  }
}
