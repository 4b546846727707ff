// A large campaign: 10,000 searches at a concurrency of 1,000 on simulated GPU servers, one worker process,
// started and inspected with the real CLI. Reports searches per minute, the worker's RSS while 1,000 searches
// run, history bytes per search, the results store's write rate, and the wall time of `campaign status` (while
// it runs and at the end) and of `report`. Run with `npm run bench` (or `node dist/src/bench/campaign.js`);
// BENCH_QUICK=1 runs 1,000 searches at a concurrency of 200.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { temporal as proto } from '@temporalio/proto';
import { openStore } from '../store';
import type { SearchRecord } from '../store/types';
import { campaignProgressQuery, type CampaignProgress } from '../../workflows/campaign';
import { cli, fmt, log, processUsage, startSimFleet, startWorker, stopWorker, writeSpec } from './sim-fleet';

const QUICK = process.env.BENCH_QUICK === '1';
const SEARCHES = Number(process.env.BENCH_CAMPAIGN_SEARCHES ?? (QUICK ? 1_000 : 10_000));
const CONCURRENCY = Number(process.env.BENCH_CAMPAIGN_CONCURRENCY ?? (QUICK ? 200 : 1_000));
const SERVERS = Number(process.env.BENCH_CAMPAIGN_SERVERS ?? 4);
/** A quick GPU: the campaign measures the orchestration of many small searches, not the fleet. */
const PACE = { batchMs: 20, itemMs: 0.5 };
const MAX_BATCH = 64;
/** Each server takes this many calls at once: 1,000 searches' rounds are in flight across the fleet. */
const MAX_CONCURRENCY = 256;
/** The cheapest search that is still a search: best of 2 noises in one round, and the final generation. */
const CANDIDATES = 2;
const GENERATION_NFE = 55;
const HISTORY_SAMPLE = 20;
/**
 * The campaign's share of the benchmark's 8 minutes: a campaign still running then is cancelled, and the
 * table says how far it got, its rate, and how long all of it would take.
 */
const DEADLINE_S = Number(process.env.BENCH_CAMPAIGN_DEADLINE_S ?? 390);
const RSS_TARGET = 300 * 2 ** 20;
const HISTORY_TARGET = 100 * 1024;

interface Observation {
  at: number;
  running: number;
  done: number;
  rssBytes: number;
}

/** A workflow's history over all its runs, binary-encoded, read a page at a time (a campaign's is megabytes). */
async function historyBytes(client: Client, workflowId: string): Promise<number> {
  let bytes = 0;
  for await (const execution of client.workflow.list({ query: `WorkflowId = "${workflowId}"` })) {
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await client.workflowService.getWorkflowExecutionHistory({
        namespace: client.options.namespace,
        execution: { workflowId, runId: execution.runId },
        maximumPageSize: 1_000,
        nextPageToken,
      });
      bytes += proto.api.history.v1.History.encode(page.history ?? {}).finish().length;
      nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  }
  return bytes;
}

/** Rows a second the store takes when nothing else runs: the campaign's own rows written again to a fresh file. */
async function storeCapacity(dir: string, rows: SearchRecord[]): Promise<number> {
  const store = await openStore({ kind: 'sqlite', path: path.join(dir, 'capacity.sqlite') });
  try {
    const sample = rows.slice(0, 2_000);
    const started = process.hrtime.bigint();
    for (const row of sample) await store.upsertSearch({ ...row, campaignId: 'capacity' });
    return sample.length / (Number(process.hrtime.bigint() - started) / 1e9);
  } finally {
    await store.close();
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-campaign-'));
  log(`campaign bench in ${dir}: ${SEARCHES} searches at concurrency ${CONCURRENCY} on ${SERVERS} simulated servers`);
  const fleet = await startSimFleet({ dir, servers: SERVERS, pace: PACE, maxBatch: MAX_BATCH, maxConcurrency: MAX_CONCURRENCY });
  const addresses = fleet.servers.map((s) => s.address).join(',');
  const connection = await Connection.connect({ address: fleet.temporal.address });
  const client = new Client({ connection });
  try {
    const name = 'large';
    const spec = writeSpec(dir, {
      name,
      dataset: { kind: 'gmm-classes', classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
      grid: { algorithms: [{ name: 'random', n: CANDIDATES }], verifiers: ['gmm-classifier'], budgets: [(CANDIDATES + 1) * GENERATION_NFE] },
      evaluation: ['gmm-classifier'],
      seeds: Array.from({ length: Math.ceil(SEARCHES / 10) }, (_, i) => i),
      concurrency: CONCURRENCY,
    });
    const worker = await startWorker(dir, fleet.temporal.address, fleet.servers.map((s) => s.address));
    const started = Date.now();
    const running = cli(['campaign', 'run', spec, '--temporal', fleet.temporal.address, '--fleet', addresses, '--no-worker'], dir, 1_800_000);
    // The campaign's ID is the first thing the command says.
    let campaignId: string | undefined;
    const observations: Observation[] = [];
    let statusWhileRunning: { seconds: number; code: number | null } | null = null;
    let finished = false;
    void running.then(() => (finished = true));
    let cancelled = false;
    while (!finished) {
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      if (!cancelled && campaignId && Date.now() - started > DEADLINE_S * 1000) {
        log(`  ${DEADLINE_S} s passed: cancelling the campaign`);
        await cli(['campaign', 'cancel', campaignId, '--temporal', fleet.temporal.address], dir, 60_000);
        cancelled = true;
      }
      campaignId ??= (await client.workflow.list({ query: 'WorkflowType = "campaignWorkflow"' })[Symbol.asyncIterator]().next()).value?.workflowId;
      if (!campaignId || finished) continue;
      const progress: CampaignProgress | null = await client.workflow.getHandle(campaignId).query(campaignProgressQuery).catch(() => null);
      if (!progress) continue;
      let rssBytes = 0;
      try {
        rssBytes = processUsage(worker.pid!).rssBytes;
      } catch {
        // The worker is gone: the campaign is failing, which its command will say.
      }
      observations.push({ at: Date.now(), running: progress.running, done: progress.done, rssBytes });
      log(`  ${((Date.now() - started) / 1000).toFixed(0)} s: ${progress.done} done, ${progress.failed} failed, ${progress.running} running, worker RSS ${fmt(rssBytes / 2 ** 20)} MB`);
      if (!statusWhileRunning && progress.done >= SEARCHES / 2) {
        const status = await cli(['campaign', 'status', campaignId, '--temporal', fleet.temporal.address], dir, 300_000);
        statusWhileRunning = { seconds: status.seconds, code: status.code };
        log(`  campaign status while running: ${status.seconds.toFixed(2)} s (exit ${status.code})`);
      }
    }
    const run = await running;
    const wall = (Date.now() - started) / 1000;
    const peakWorker = processUsage(worker.pid!);
    await stopWorker(worker);
    if ((run.code !== 0 && !cancelled) || !campaignId) throw new Error(`campaign run exited with ${run.code}: ${run.stderr.slice(-2000)}`);

    const status = await cli(['campaign', 'status', campaignId, '--temporal', fleet.temporal.address], dir, 300_000);
    const report = await cli(['report', campaignId, '--out', path.join(dir, 'report.html')], dir, 600_000);
    if (status.code !== 0 || report.code !== 0) throw new Error(`status exited ${status.code}, report ${report.code}: ${status.stderr}${report.stderr}`);

    const store = await openStore({ kind: 'sqlite', path: path.join(dir, `${name}.sqlite`) });
    const rows = await store.searches(campaignId).finally(() => store.close());
    const done = rows.filter((r) => r.status === 'done');
    const finishes = rows.map((r) => Date.parse(r.finishedAt) / 1000).sort((a, b) => a - b);
    const writeRate = rows.length / (finishes[finishes.length - 1] - finishes[0]);
    const capacity = await storeCapacity(dir, rows);

    const sampleIds = Array.from({ length: HISTORY_SAMPLE }, (_, i) => rows[Math.floor((i * rows.length) / HISTORY_SAMPLE)].workflowId);
    const searchHistories = await Promise.all(sampleIds.map((id) => historyBytes(client, id)));
    const perSearchHistory = searchHistories.reduce((a, b) => a + b, 0) / searchHistories.length;
    const campaignHistory = await historyBytes(client, campaignId);

    const atFull = observations.filter((o) => o.running >= CONCURRENCY * 0.99);
    const rssAtFull = atFull.length > 0 ? Math.max(...atFull.map((o) => o.rssBytes)) : NaN;
    const rssMax = Math.max(...observations.map((o) => o.rssBytes), peakWorker.rssBytes);
    const perMinute = (rows.length / wall) * 60;

    console.log(
      `Large campaign: ${fmt(SEARCHES)} random searches (best of ${CANDIDATES} noises and the final generation, ${(CANDIDATES + 1) * GENERATION_NFE} NFEs each) at a concurrency of ${fmt(CONCURRENCY)}, ` +
        `on ${SERVERS} simulated servers (${PACE.batchMs} ms a batch + ${PACE.itemMs} ms a candidate, max batch ${MAX_BATCH}), one worker process, SQLite store; started with "noisesearch campaign run --no-worker".`,
    );
    console.log(`  searches finished:          ${fmt(done.length)} done, ${fmt(rows.length - done.length)} failed, of ${fmt(SEARCHES)} (target: every one done: ${done.length === SEARCHES ? 'met' : 'NOT met'})`);
    if (cancelled) {
      const workerMsPerSearch = (peakWorker.cpuSeconds / rows.length) * 1000;
      console.log(
        `  cancelled after ${DEADLINE_S} s, the benchmark's share of its 8 minutes: all ${fmt(SEARCHES)} would take ${(SEARCHES / perMinute).toFixed(0)} min at this rate; ` +
          `in 8 minutes they need ${fmt(SEARCHES / 8)} a minute, ${(SEARCHES / 8 / perMinute).toFixed(1)}x this, i.e. at most ${((2 * 60_000) / (SEARCHES / 8)).toFixed(0)} ms of CPU a search for the worker and Temporal together on 2 cores (the worker alone spends ${workerMsPerSearch.toFixed(0)} ms)`,
      );
    }
    console.log(`  wall time:                  ${wall.toFixed(0)} s, ${fmt(perMinute)} searches per minute`);
    console.log(`  worker RSS at ${fmt(CONCURRENCY)} running:  ${fmt(rssAtFull / 2 ** 20)} MB (peak over the run ${fmt(rssMax / 2 ** 20)} MB; target <= 300 MB: ${rssAtFull <= RSS_TARGET ? 'met' : 'NOT met'}); worker CPU ${peakWorker.cpuSeconds.toFixed(0)} s in all, ${((peakWorker.cpuSeconds / rows.length) * 1000).toFixed(1)} ms a search`);
    console.log(`  history per search:         ${(perSearchHistory / 1024).toFixed(1)} KB (mean of ${HISTORY_SAMPLE} searches, binary-encoded; target <= 100 KB: ${perSearchHistory <= HISTORY_TARGET ? 'met' : 'NOT met'}); the campaign workflow's own history ${(campaignHistory / 1024 / rows.length).toFixed(1)} KB a search over all its runs`);
    console.log(`  results store writes:       ${fmt(writeRate, 1)} rows/s during the campaign; the same rows upserted alone: ${fmt(capacity)} rows/s`);
    console.log(`  noisesearch campaign status: ${statusWhileRunning ? `${statusWhileRunning.seconds.toFixed(2)} s while it ran (half done), ` : ''}${status.seconds.toFixed(2)} s at the end`);
    console.log(`  noisesearch report:         ${report.seconds.toFixed(2)} s for ${fmt(rows.length)} searches`);
  } finally {
    await connection.close();
    await fleet.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
