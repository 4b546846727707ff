// Fleet scaling and the busy fleet: one campaign shape on 1, 2, 4, 8 and 16 simulated GPU servers, run by
// one worker process through the real CLI. Per fleet size: NFE/s (logical NFEs of finished searches over a
// steady window), each server's busy fraction, batch fill, and the worker's CPU per 1,000 NFE/s and RSS.
// Run with `npm run bench` (or `node dist/src/bench/fleet.js`); BENCH_QUICK=1 runs 1 and 4 servers only.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { openStore } from '../store';
import type { SearchRecord } from '../store/types';
import { cli, fmt, log, sampler, slope, startSimFleet, startWorker, stopWorker, writeSpec, type Sample, type SimFleet } from './sim-fleet';

const QUICK = process.env.BENCH_QUICK === '1';
const SIZES = (process.env.BENCH_FLEET_SIZES ?? (QUICK ? '1,4' : '1,2,4,8,16')).split(',').map(Number);
/** A GPU denoiser's pace: a fixed cost per engine run plus a cost per candidate, up to MAX_BATCH candidates. */
const PACE = { batchMs: Number(process.env.BENCH_SIM_BATCH_MS ?? 300), itemMs: Number(process.env.BENCH_SIM_ITEM_MS ?? 30) };
const MAX_BATCH = 64;
/** Requests a server takes at once (its Describe says so, and the fleet client keeps to it). */
const MAX_CONCURRENCY = 16;
/** Candidates per search round: four searches' rounds fill one engine run. */
const ROUND = 16;
const CANDIDATES = Number(process.env.BENCH_FLEET_CANDIDATES ?? 64);
/** Concurrent searches per server: two full batches of rounds, so one waits while the other runs. */
const SEARCHES_PER_SERVER = Number(process.env.BENCH_FLEET_SEARCHES_PER_SERVER ?? 8);
/** Each search slot runs this many searches one after another: the steady window lies between the first and last. */
const GENERATIONS = Number(process.env.BENCH_FLEET_GENERATIONS ?? 2);
/** The embedded model's default sampler, Heun with 28 steps: 55 NFEs a candidate and a final generation. */
const GENERATION_NFE = 55;

interface Measured {
  servers: number;
  concurrency: number;
  searches: number;
  failed: number;
  window: number;
  nfePerSecond: number;
  busy: number[];
  fill: number;
  workerCpu: number;
  workerRss: number;
  wall: number;
}

/**
 * The window in which every search slot was busy: from the campaign's start, after a quarter of a search's
 * median run (the first batches queue up), to the last search's start (after it, slots empty). Each finished
 * search's logical NFEs are spread evenly over its own run and the window gets the share that falls in it, so
 * a window shorter than one search still measures the rate, not the moments searches happened to end.
 */
function steadyNfe(rows: SearchRecord[]): { from: number; to: number; nfePerSecond: number } {
  const spans = rows.map((r) => {
    const end = Date.parse(r.finishedAt) / 1000;
    return { start: end - r.wallSeconds, end, nfe: r.nfeTotal };
  });
  const runs = spans.map((s) => s.end - s.start).sort((a, b) => a - b);
  const from = Math.min(...spans.map((s) => s.start)) + runs[Math.floor(runs.length / 2)] / 4;
  const to = Math.max(...spans.map((s) => s.start));
  let nfe = 0;
  for (const s of spans) {
    const overlap = Math.min(to, s.end) - Math.max(from, s.start);
    if (overlap > 0) nfe += (s.nfe * overlap) / Math.max(s.end - s.start, 1e-9);
  }
  return { from, to, nfePerSecond: nfe / (to - from) };
}

async function runSize(fleet: SimFleet, servers: number): Promise<Measured> {
  const used = fleet.servers.slice(0, servers);
  const addresses = used.map((s) => s.address);
  const concurrency = SEARCHES_PER_SERVER * servers;
  // Classes x seeds make the searches: the same shape at every size, more of it on a larger fleet.
  const seeds = Math.ceil((concurrency * GENERATIONS) / 10);
  const name = `fleet-${servers}`;
  const spec = writeSpec(fleet.dir, {
    name,
    dataset: { kind: 'gmm-classes', classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
    grid: { algorithms: [{ name: 'random', n: CANDIDATES, roundSize: ROUND }], verifiers: ['gmm-classifier'], budgets: [(CANDIDATES + 1) * GENERATION_NFE] },
    evaluation: ['gmm-classifier'],
    seeds: Array.from({ length: seeds }, (_, i) => i),
    concurrency,
  });
  const worker = await startWorker(fleet.dir, fleet.temporal.address, addresses, `worker-${servers}`);
  const sampling = sampler(worker.pid!, fleet.temporal.pid, used);
  const run = await cli(['campaign', 'run', spec, '--temporal', fleet.temporal.address, '--fleet', addresses.join(','), '--no-worker'], fleet.dir);
  await sampling.stop();
  await stopWorker(worker);
  const campaignId = /campaign (campaign-\S+) finished/.exec(run.stdout)?.[1] ?? /campaign (campaign-\S+):/.exec(run.stderr)?.[1];
  if (!campaignId) throw new Error(`campaign run on ${servers} servers said no campaign ID (exit ${run.code}): ${run.stderr.slice(-2000)}`);
  const store = await openStore({ kind: 'sqlite', path: path.join(fleet.dir, `${name}.sqlite`) });
  const rows = await store.searches(campaignId).finally(() => store.close());
  const done = rows.filter((r) => r.status === 'done');
  const { from, to, nfePerSecond } = steadyNfe(done);
  const inWindow = sampling.samples.filter((s) => s.at >= from && s.at <= to);
  if (inWindow.length < 3) throw new Error(`${servers} servers: the steady window (${(to - from).toFixed(1)} s) holds ${inWindow.length} scrapes; run more generations`);
  const [first, last] = [inWindow[0], inWindow[inWindow.length - 1]];
  const busy = used.map((_, i) => slope(inWindow.map((s: Sample) => [s.at, s.servers[i].busySeconds])));
  const batches = used.reduce((sum, _, i) => sum + last.servers[i].batches - first.servers[i].batches, 0);
  const candidates = used.reduce((sum, _, i) => sum + last.servers[i].batchCandidates - first.servers[i].batchCandidates, 0);
  const workerCpu = (last.worker.cpuSeconds - first.worker.cpuSeconds) / (last.at - first.at);
  return {
    servers,
    concurrency,
    searches: rows.length,
    failed: rows.length - done.length,
    window: to - from,
    nfePerSecond,
    busy,
    fill: candidates / batches / MAX_BATCH,
    workerCpu,
    workerRss: Math.max(...inWindow.map((s) => s.worker.rssBytes)),
    wall: run.seconds,
  };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-fleet-'));
  log(`fleet bench in ${dir}: starting Temporal and ${Math.max(...SIZES)} simulated servers`);
  const fleet = await startSimFleet({ dir, servers: Math.max(...SIZES), pace: PACE, maxBatch: MAX_BATCH, maxConcurrency: MAX_CONCURRENCY });
  const results: Measured[] = [];
  try {
    for (const servers of SIZES) {
      log(`fleet bench: ${servers} servers`);
      const m = await runSize(fleet, servers);
      log(`  ${JSON.stringify(m)}`);
      results.push(m);
    }
  } finally {
    await fleet.stop();
  }
  const one = results.find((r) => r.servers === 1);
  const full = (CANDIDATES + 1) * GENERATION_NFE;
  console.log(
    `Fleet scaling: a campaign of random searches (${CANDIDATES} candidates in rounds of ${ROUND}, heun 28 steps: ${fmt(full)} NFEs each) ` +
      `on N simulated servers (${PACE.batchMs} ms a batch + ${PACE.itemMs} ms a candidate, max batch ${MAX_BATCH}, max concurrency ${MAX_CONCURRENCY}), ` +
      `${SEARCHES_PER_SERVER} concurrent searches per server, one worker process; NFE/s over the window in which every search slot was busy.`,
  );
  console.log(`  ${'servers'.padStart(7)} ${'searches'.padStart(8)} ${'failed'.padStart(6)} ${'window s'.padStart(8)} ${'NFE/s'.padStart(8)} ${'x one'.padStart(6)} ${'busy min'.padStart(8)} ${'busy mean'.padStart(9)} ${'fill'.padStart(5)} ${'worker CPU/s'.padStart(12)} ${'CPU s per 1k NFE/s'.padStart(18)} ${'RSS MB'.padStart(6)}`);
  for (const r of results) {
    const scale = one ? r.nfePerSecond / one.nfePerSecond : NaN;
    console.log(
      `  ${String(r.servers).padStart(7)} ${String(r.searches).padStart(8)} ${String(r.failed).padStart(6)} ${r.window.toFixed(1).padStart(8)} ${fmt(r.nfePerSecond).padStart(8)} ${scale.toFixed(2).padStart(6)} ` +
        `${(Math.min(...r.busy) * 100).toFixed(1).padStart(7)}% ${((r.busy.reduce((a, b) => a + b, 0) / r.busy.length) * 100).toFixed(1).padStart(8)}% ${r.fill.toFixed(2).padStart(5)} ` +
        `${r.workerCpu.toFixed(2).padStart(12)} ${(r.workerCpu / (r.nfePerSecond / 1000)).toFixed(3).padStart(18)} ${fmt(r.workerRss / 2 ** 20).padStart(6)}`,
    );
  }
  const largest = results[results.length - 1];
  if (one && largest.servers > 1) {
    const ratio = largest.nfePerSecond / (largest.servers * one.nfePerSecond);
    console.log(`  NFE/s(${largest.servers}) / (${largest.servers} x NFE/s(1)) = ${ratio.toFixed(2)} (target >= 0.9: ${ratio >= 0.9 ? 'met' : 'NOT met'})`);
    const busyMin = Math.min(...largest.busy);
    console.log(`  busiest-to-idlest server at ${largest.servers}: every server busy >= ${(busyMin * 100).toFixed(1)}% of the window (target >= 95%: ${busyMin >= 0.95 ? 'met' : 'NOT met'})`);
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
