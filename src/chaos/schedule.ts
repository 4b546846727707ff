// The fault schedule of a chaos run: pure, so the same seed gives the same faults in the same order.
import { mulberry32 } from '../search/seeds';

/** The faults the campaign is put through, each one what an operator would meet in production. */
export const FAULT_KINDS = [
  'kill-worker', // SIGKILL of a worker process, restarted after a pause
  'kill-server', // SIGKILL of a model server, restarted on its port after a pause
  'restart-temporal', // SIGKILL of the Temporal dev server, restarted on its port and database file
  'partition', // one model server unreachable: its proxy holds connections and forwards nothing
  'reset', // every connection to one model server reset (TCP RST), new ones too
  'slow-server', // latency added to every chunk to and from one model server
  'server-errors', // one model server fails every Evaluate call with UNAVAILABLE (its fault-injection mode)
  'kill-cli', // SIGKILL of the `campaign run` command, run again after a pause (it attaches)
  'lose-server', // SIGKILL of a model server never restarted: the other one carries the campaign
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultEvent {
  kind: FaultKind;
  /** The model server (0 or 1) or worker (0..workers-1) hit; 0 for Temporal and the CLI. */
  target: number;
  /** How long the fault lasts: the pause before a restart, or the time a mode is on. */
  durationMs: number;
  /** How long to wait, after the previous fault ended and the campaign moved again, before this one. */
  gapMs: number;
  /** slow-server only: the delay added to each chunk each way. */
  latencyMs?: number;
}

export interface ScheduleOptions {
  seed: number;
  /** How many times each kind but lose-server occurs (lose-server occurs once). */
  repeats: number;
  workers: number;
  /** Multiplies every duration and gap (default 1): a short test run takes the same faults, briefer. */
  pace?: number;
}

/** Duration ranges (ms) per kind: long enough to be felt by calls in flight, short enough for a run of minutes. */
const DURATIONS: Record<FaultKind, [number, number]> = {
  'kill-worker': [1_000, 4_000],
  'kill-server': [2_000, 6_000],
  'restart-temporal': [2_000, 5_000],
  partition: [4_000, 10_000],
  reset: [3_000, 6_000],
  'slow-server': [5_000, 10_000],
  'server-errors': [4_000, 10_000],
  'kill-cli': [500, 3_000],
  'lose-server': [0, 0],
};
const GAP_MS: [number, number] = [1_000, 3_000];
const LATENCY_MS: [number, number] = [200, 800];

const SERVER_KINDS: ReadonlySet<FaultKind> = new Set(['kill-server', 'partition', 'reset', 'slow-server', 'server-errors', 'lose-server']);

/**
 * Every kind `repeats` times in a seeded order, and one lose-server in the last third (so that most
 * faults meet two servers, and the campaign still has work for the survivor to carry). Server faults
 * after it hit the survivor.
 */
export function faultSchedule({ seed, repeats, workers, pace = 1 }: ScheduleOptions): FaultEvent[] {
  if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`repeats: got ${repeats}; want a whole number >= 1`);
  if (!Number.isInteger(workers) || workers < 1) throw new Error(`workers: got ${workers}; want a whole number >= 1`);
  if (!(pace > 0 && pace <= 1)) throw new Error(`pace: got ${pace}; want a number in (0, 1]`);
  const random = mulberry32(seed);
  const between = ([low, high]: [number, number]) => low + Math.floor(random() * (high - low + 1));
  const paced = (range: [number, number]) => Math.round(between(range) * pace);
  const kinds: FaultKind[] = [];
  for (let r = 0; r < repeats; r++) kinds.push(...FAULT_KINDS.filter((k) => k !== 'lose-server'));
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
  }
  const lastThird = Math.ceil((kinds.length * 2) / 3);
  kinds.splice(lastThird + Math.floor(random() * (kinds.length - lastThird + 1)), 0, 'lose-server');

  let lost: number | null = null;
  return kinds.map((kind) => {
    let target = 0;
    if (SERVER_KINDS.has(kind)) target = lost === null ? Math.floor(random() * 2) : 1 - lost;
    else if (kind === 'kill-worker') target = Math.floor(random() * workers);
    if (kind === 'lose-server') lost = target;
    const event: FaultEvent = { kind, target, durationMs: paced(DURATIONS[kind]), gapMs: paced(GAP_MS) };
    if (kind === 'slow-server') event.latencyMs = between(LATENCY_MS);
    return event;
  });
}
