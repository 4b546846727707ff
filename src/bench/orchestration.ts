// What durability costs: the wall time of a search through Temporal against the in-process driver on the
// same simulated GPU server (a fixed sleep per batch call), per algorithm at the paper's sizes, alternated
// and measured side by side. Timed runs use seeds of their own so neither driver gets the other's cache
// hits; one untimed run per case and driver takes the same seed and is checked bit-identical to the
// in-process result. The Temporal driver is measured on both of its paths: the default, durable one (an
// activity per batch) and the opt-in local-activity one (docs/architecture.md, "Orchestration overhead"). Targets (issue 12): Temporal / in-process <= 1.25 at 10 ms per batch call, <= 1.05 at
// 100 ms. `BENCH_QUICK=1` runs one repeat at 10 ms only. stdout is the table; progress goes to stderr.
import { Client } from '@temporalio/client';
import type { Fleet } from '../fleet/client';
import { runLocalSearch } from '../local';
import type { SearchResult } from '../search/run';
import type { SearchSpec } from '../search/spec';
import { startSearch } from '../temporal/client';
import { withBenchServices, type Bench } from './harness';

const QUICK = process.env.BENCH_QUICK === '1';
const REPEATS = Number(process.env.BENCH_REPEATS ?? (QUICK ? 1 : 5));
const PACES = QUICK ? [10] : [10, 100];
const TARGET: Record<number, number> = { 10: 1.25, 100: 1.05 };
/** Every round of these searches fits one batch call, so a round costs one sleep of the pace. */
const MAX_BATCH = 64;

/** The paper's ImageNet sampler (Ma et al. 2025, Sec. 4): Heun, 25 search steps (49 NFEs), 125 final steps (249 NFEs). */
const SIT = { searchSampler: { solver: 'heun' as const, steps: 25 }, finalSampler: { solver: 'heun' as const, steps: 125 } };

interface Case {
  algorithm: string;
  label: string;
  spec(seed: number): SearchSpec;
}

function base(seed: number): Pick<SearchSpec, 'model' | 'condition' | 'verifiers' | 'seed'> {
  return { model: 'gmm', condition: { classLabel: 3 }, verifiers: ['gmm-classifier'], seed };
}

const CASES: Case[] = [
  { algorithm: 'random', label: 'N=64 in rounds of 32, sit sampler', spec: (seed) => ({ ...base(seed), ...SIT, algorithm: { name: 'random', n: 64 }, budgetNfe: 49 * 64 + 249 }) },
  { algorithm: 'zero-order', label: '50 moves of N=8, sit sampler', spec: (seed) => ({ ...base(seed), ...SIT, algorithm: { name: 'zero-order', n: 8 }, budgetNfe: 49 * (1 + 50 * 8) + 249 }) },
  {
    algorithm: 'paths',
    label: 'paths-paper (N=4, M=8), sit sampler',
    spec: (seed) => ({ ...base(seed), ...SIT, algorithm: { name: 'paths', n: 4, m: 8, sigmaStart: 0.11, deltaF: 0.78, deltaB: 0.81 }, budgetNfe: 520 }),
  },
  { algorithm: 'fk', label: 'k=64, 250 steps, resampling every 25', spec: (seed) => ({ ...base(seed), algorithm: { name: 'fk', k: 64, resampleEvery: 25 }, searchSampler: { steps: 250 }, budgetNfe: 64 * 250 }) },
];

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** A result without what is measured (seconds) or what a server's cache saved (executed NFEs). */
function comparable(result: SearchResult): unknown {
  const { verifierSeconds, verifierCosts, seconds, nfe, ...rest } = result;
  const { executed, ...logical } = nfe;
  return { ...rest, nfe: logical, verifierCalls: Object.fromEntries(Object.entries(verifierCosts).map(([name, cost]) => [name, cost.calls])) };
}

/** Where one search's wall time went, from the moments its model-server calls started and ended. */
interface Timeline {
  total: number;
  /** From the start of the search to its first call (Describe). */
  leadIn: number;
  /** Between the end of one call and the start of the next, on average. */
  gap: number;
  /** From the end of the last call to the result in hand. */
  tail: number;
  calls: number;
}

/** Times every call the fleet makes, whichever driver makes it (the benchmark's worker shares this fleet). */
function callRecorder(fleet: Fleet): (work: () => Promise<unknown>) => Promise<Timeline> {
  let marks: Array<{ start: number; end: number }> = [];
  for (const method of ['describe', 'evaluate'] as const) {
    const call = fleet[method].bind(fleet) as (...args: unknown[]) => Promise<unknown>;
    (fleet as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
      const mark = { start: performance.now(), end: Number.NaN };
      marks.push(mark);
      try {
        return await call(...args);
      } finally {
        mark.end = performance.now();
      }
    };
  }
  return async (work) => {
    marks = [];
    const start = performance.now();
    await work();
    const end = performance.now();
    // Calls of one round overlap: a gap is only time when no call was in flight.
    let idle = 0;
    let busyUntil = marks[0].end;
    for (const mark of marks.slice(1)) {
      if (mark.start > busyUntil) idle += mark.start - busyUntil;
      busyUntil = Math.max(busyUntil, mark.end);
    }
    return { total: end - start, leadIn: marks[0].start - start, gap: idle / Math.max(1, marks.length - 1), tail: end - busyUntil, calls: marks.length };
  };
}

interface Row {
  pace: number;
  c: Case;
  local: Timeline[];
  /** The default path: every batch an activity through the Temporal server. */
  durable: Timeline[];
  /** The opt-in path: batches as local activities, chained inside workflow tasks. */
  fast: Timeline[];
  identical: { durable: boolean; fast: boolean };
  /** How long the first workflow task of a search started without eager dispatch waited for the worker. */
  plainDispatch: number;
}

const timestamp = (event: { eventTime?: { seconds?: unknown; nanos?: number | null } | null }) => Number(event.eventTime?.seconds ?? 0) * 1000 + (event.eventTime?.nanos ?? 0) / 1e6;

async function measurePace(pace: number): Promise<Row[]> {
  return withBenchServices(
    `orchestration-${pace}ms`,
    async ({ env, fleet, taskQueue }: Bench) => {
      // A client on the worker's own connection may ask for the first workflow task in the start's reply.
      const eagerClient = new Client({ connection: env.nativeConnection, namespace: env.client.options.namespace });
      const timeline = callRecorder(fleet);
      let runs = 0;
      const viaTemporal = (client: Client, spec: SearchSpec, eager: boolean, localActivities: boolean) =>
        startSearch(client, spec, { taskQueue, workflowId: `orchestration-${process.pid}-${pace}-${runs++}`, requestEagerStart: eager, indexed: false, localActivities });
      const rows: Row[] = [];
      for (const [index, c] of CASES.entries()) {
        const seedBase = 1000 * (index + 1);
        // The same seed through both drivers: the check, and each driver's warm-up.
        const reference = await runLocalSearch(c.spec(seedBase), fleet);
        const plain = await viaTemporal(env.client, c.spec(seedBase), false, false);
        const durable = await plain.result();
        const fast = await (await viaTemporal(eagerClient, c.spec(seedBase), true, true)).result();
        const events = (await plain.fetchHistory()).events ?? [];
        const firstTaskStarted = events.find((e) => e.workflowTaskStartedEventAttributes);
        const row: Row = {
          pace,
          c,
          local: [],
          durable: [],
          fast: [],
          identical: {
            durable: JSON.stringify(comparable(reference)) === JSON.stringify(comparable(durable)),
            fast: JSON.stringify(comparable(reference)) === JSON.stringify(comparable(fast)),
          },
          plainDispatch: firstTaskStarted ? timestamp(firstTaskStarted) - timestamp(events[0]) : Number.NaN,
        };
        for (let i = 0; i < REPEATS; i++) {
          row.local.push(await timeline(() => runLocalSearch(c.spec(seedBase + 1 + 3 * i), fleet)));
          row.durable.push(await timeline(async () => (await viaTemporal(eagerClient, c.spec(seedBase + 2 + 3 * i), true, false)).result()));
          row.fast.push(await timeline(async () => (await viaTemporal(eagerClient, c.spec(seedBase + 3 + 3 * i), true, true)).result()));
        }
        const totals = (timelines: Timeline[]) => timelines.map((t) => t.total.toFixed(0)).join(',');
        process.stderr.write(`orchestration ${pace} ms ${c.algorithm}: in-process [${totals(row.local)}] durable [${totals(row.durable)}] local activities [${totals(row.fast)}] ms\n`);
        rows.push(row);
      }
      return rows;
    },
    { sim: { batchMs: pace, itemMs: 0 }, maxBatch: MAX_BATCH },
  );
}

const ms = (value: number, width: number) => `${value.toFixed(value < 10 ? 1 : 0)} ms`.padStart(width);
const medianOf = (timelines: Timeline[], field: keyof Timeline) => median(timelines.map((t) => t[field]));

async function main(): Promise<void> {
  const rows: Row[] = [];
  for (const pace of PACES) rows.push(...(await measurePace(pace)));
  const verdict = (ratio: number, target: number) => `${ratio.toFixed(2)} ${ratio <= target ? 'met' : 'NOT met'}`.padStart(12);
  console.log(`Temporal driver / in-process driver on the same simulated server (--model sim --sim-item-ms 0 --max-batch ${MAX_BATCH}), median of ${REPEATS} alternated runs with their own seeds;`);
  console.log('durable: the default path, an activity per batch; local: the opt-in path, batches as local activities:');
  console.log(`  ${'algorithm'.padEnd(11)} ${'search'.padEnd(38)} ${'pace'.padStart(6)} ${'calls'.padStart(5)} ${'in-process'.padStart(10)} ${'durable'.padStart(9)} ${'local'.padStart(9)} ${'target'.padStart(6)} ${'durable ratio'.padStart(13)} ${'local ratio'.padStart(12)}  same seed, same result`);
  for (const r of rows) {
    const inProcess = medianOf(r.local, 'total');
    const target = TARGET[r.pace];
    const same = r.identical.durable && r.identical.fast ? 'bit-identical' : `DIFFERENT (${r.identical.durable ? '' : 'durable '}${r.identical.fast ? '' : 'local'})`;
    console.log(
      `  ${r.c.algorithm.padEnd(11)} ${r.c.label.padEnd(38)} ${`${r.pace} ms`.padStart(6)} ${String(r.local[0].calls).padStart(5)} ${ms(inProcess, 10)} ${ms(medianOf(r.durable, 'total'), 9)} ${ms(medianOf(r.fast, 'total'), 9)} ${`<=${target}`.padStart(6)} ${verdict(medianOf(r.durable, 'total') / inProcess, target).padStart(13)} ${verdict(medianOf(r.fast, 'total') / inProcess, target)}  ${same}`,
    );
  }
  console.log('  calls: sequential model-server calls per search (Describe, each round, the final generation); pace: the simulated cost of one batch call.');
  console.log("Where the Temporal driver's extra time goes (medians, durable / local activities; in-process in brackets):");
  console.log(`  ${'algorithm'.padEnd(11)} ${'pace'.padStart(6)} ${'before the first call'.padStart(28)} ${'between calls'.padStart(28)} ${'after the last call'.padStart(28)} ${'first task, no eager start'.padStart(27)}`);
  for (const r of rows) {
    const trio = (field: keyof Timeline) => `${ms(medianOf(r.durable, field), 8)} / ${ms(medianOf(r.fast, field), 8).trim()} [${ms(medianOf(r.local, field), 7).trim()}]`;
    console.log(`  ${r.c.algorithm.padEnd(11)} ${`${r.pace} ms`.padStart(6)} ${trio('leadIn').padStart(28)} ${trio('gap').padStart(28)} ${trio('tail').padStart(28)} ${ms(r.plainDispatch, 27)}`);
  }
  console.log("  Searches started eagerly from a client on the worker's connection; the last column is a durable search started without.");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
