// Tells the user, one line per change, when a search (or a campaign's searches) waits for model servers
// that are down, and when they are back. Polls Temporal's description of the workflow while `work` runs.
import type { Client, WorkflowHandle } from '@temporalio/client';
import { describeWait, type FleetWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';
import { ServiceUnreachableError } from './errors';
import { type Outage, seconds } from './outage';

const POLL_MS = 2_000;
const DESCRIBE_DEADLINE_MS = 3_000;

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

/** A fleet that stays down past --wait: the command gives up waiting (exit 3); the search waits on in Temporal. */
export class FleetPatience {
  private since: number | null = null;

  constructor(private readonly options: { waitMs?: number; reattach?: string } = {}) {}

  /** Throws ServiceUnreachableError once the fleet has been waited for longer than --wait. */
  check(wait: FleetWait | null): void {
    if (!wait) {
      this.since = null;
      return;
    }
    this.since ??= Date.now();
    const waited = Date.now() - this.since;
    if (waited > (this.options.waitMs ?? Number.POSITIVE_INFINITY)) {
      throw new ServiceUnreachableError(`model servers unreachable for ${seconds(waited)} (--wait; ${describeWait(wait)}); ${this.options.reattach ?? 'the work goes on in Temporal'}`);
    }
  }
}

export async function watchingWaits<T>(
  client: Client,
  handle: WorkflowHandle,
  log: (line: string) => void,
  work: Promise<T>,
  patience: { waitMs?: number; reattach?: string; outage?: Outage } = {},
): Promise<T> {
  const stop = new AbortController();
  let last: FleetWait | null = null;
  const fleet = new FleetPatience(patience);
  let gaveUp: (error: Error) => void = () => {};
  const givenUp = new Promise<never>((_, reject) => (gaveUp = reject));
  givenUp.catch(() => {});
  const polling = (async () => {
    while (!stop.signal.aborted) {
      await sleep(POLL_MS, stop.signal);
      if (stop.signal.aborted) break;
      // A deadline: while Temporal is away the client retries a call for some 20 s before it fails, and
      // the result's long poll longer; this poll is what notices the outage first.
      const wait = await abortable(client, stop.signal, () => client.withDeadline(Date.now() + DESCRIBE_DEADLINE_MS, () => fleetWait(handle))).catch(async (error) => {
        if (!stop.signal.aborted) await patience.outage?.checkAfter(error);
        return last;
      });
      if (!stop.signal.aborted) last = reportWait(last, wait, log);
      try {
        fleet.check(last);
      } catch (error) {
        gaveUp(error as Error);
        break;
      }
    }
  })();
  const stopPolling = async () => {
    stop.abort();
    await polling;
  };
  try {
    const result = await Promise.race([work, givenUp]);
    await stopPolling();
    // Rounds chain quickly once the servers are back: a search may end before the next poll sees it go on.
    reportWait(last, null, log);
    return result;
  } finally {
    await stopPolling();
  }
}
