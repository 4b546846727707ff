// A Triton fleet end to end (docs/triton.md): a real tritonserver serving deploy/triton/gmm, a noisesearch server
// whose networks are those Triton models, real Temporal workers. Every search and campaign must give exactly
// what the native gmm server gives for the same spec (the expected values come from the native run), also when
// Triton is killed in the middle of a campaign and comes back on the same port.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Worker } from '@temporalio/worker';
import { resolveCampaign } from '../src/campaign/spec';
import type { CampaignInput } from '../src/campaign/plan';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import { openStore } from '../src/store';
import type { SearchRecord } from '../src/store/types';
import { startCampaign, startSearch } from '../src/temporal/client';
import { fleetWait } from '../src/temporal/waiting';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { campaignProgressQuery, type CampaignProgress } from '../workflows/campaign';
import { killTriton, stopServer, stopTriton, tempDir, uniqueId, waitUntil, withModelServer, withTemporal, withTriton, type StartedTriton } from './helpers';

const GMM_REPOSITORY = path.join(PROJECT_ROOT, 'deploy', 'triton', 'gmm');
const TRITON_MODEL = 'gmm@triton:gmm_denoiser';
const TRITON_VERIFIERS = ['gmm-oracle@triton:gmm_oracle', 'gmm-classifier@triton:gmm_classifier', 'gmm-selfsup@triton:gmm_selfsup'];

function tritonServerArgs(grpcAddress: string): string[] {
  // A short start wait: Triton is up before this server starts, so waiting longer would only hide a failure.
  return ['--triton', grpcAddress, ...TRITON_VERIFIERS.flatMap((v) => ['--verifier', v]), '--triton-wait', '30'];
}

/**
 * What must be equal between the fleets: everything but timings, what a server's cache saved (`executed`),
 * and the final sample's cache key, whose model identity names the numpy the network ran under (Triton's
 * stub runs numpy 1, the native server numpy 2; the numbers are the same, docs/triton.md).
 */
function comparable(result: SearchResult) {
  const { verifierSeconds, verifierCosts, seconds, nfe, best, ...rest } = result;
  const { key, ...bestWithoutKey } = best;
  const { executed, ...logical } = nfe;
  return { ...rest, nfe: logical, best: bestWithoutKey };
}

function comparableRow(row: SearchRecord) {
  return {
    status: row.status,
    error: row.error,
    spec: row.spec,
    evaluation: row.evaluation,
    sample: row.sample,
    nfe: [row.nfeSearch, row.nfeFinal, row.nfeTotal],
    result: row.result && comparable(row.result),
  };
}

/** A campaign's store as rows keyed by what they computed (item, cell, seed), and its cells' population metrics. */
async function storeContents(input: CampaignInput) {
  const store = await openStore(input.store);
  try {
    const [rows, cells] = await Promise.all([store.searches(input.campaignId), store.cellMetrics(input.campaignId)]);
    return {
      rows: Object.fromEntries(rows.map((r) => [`${r.itemId}|${r.cell}|${r.seed}`, comparableRow(r)])),
      cells: Object.fromEntries(cells.map((c) => [c.cell, [c.samples, c.frechetDistance, c.inceptionScore]])),
    };
  } finally {
    await store.close();
  }
}

/** Requests Triton answered for `model` since it started (its Prometheus counter). */
async function tritonInferences(triton: StartedTriton, model: string): Promise<number> {
  const text = await (await fetch(triton.metricsUrl, { signal: AbortSignal.timeout(5_000) })).text();
  const line = text.split('\n').find((l) => l.startsWith(`nv_inference_request_success{model="${model}",`));
  assert.ok(line, `Triton's metrics have no nv_inference_request_success for ${model}`);
  return Number(line.split(' ').pop());
}

function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Two classes x two algorithms x two seeds: 8 searches, enough work that Triton can be killed while some run.
function campaignSpec(dir: string, name: string, seeds: number[]) {
  return {
    name,
    dataset: { kind: 'gmm-classes', classes: [2, 5] },
    grid: { algorithms: ['random', { name: 'fk', k: 4 }], verifiers: ['gmm-classifier'], budgets: [1200] },
    evaluation: ['gmm-oracle', 'gmm-classifier'],
    seeds,
    concurrency: 2,
    results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
  };
}

describe('a Triton fleet through Temporal', { timeout: 600_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let triton: StartedTriton;
  let native: Awaited<ReturnType<typeof withModelServer>>;
  let viaTriton: Awaited<ReturnType<typeof withModelServer>>;
  let nativeFleet: Fleet;
  let tritonFleet: Fleet;
  const workers: { worker: Worker; running: Promise<void> }[] = [];
  const nativeQueue = uniqueId('native');
  const tritonQueue = uniqueId('triton');

  before(async () => {
    installQuietRuntime('ERROR');
    [temporal, triton, native] = await Promise.all([withTemporal(), withTriton(GMM_REPOSITORY), withModelServer()]);
    viaTriton = await withModelServer(tritonServerArgs(triton.grpcAddress), undefined, TRITON_MODEL);
    nativeFleet = new Fleet([native.address], { callDeadlineMs: 30_000 });
    tritonFleet = new Fleet([viaTriton.address], { callDeadlineMs: 30_000 });
    for (const [fleet, taskQueue] of [[nativeFleet, nativeQueue], [tritonFleet, tritonQueue]] as const) {
      const worker = await createSearchWorker({ connection: temporal.env.nativeConnection, fleet, taskQueue });
      workers.push({ worker, running: worker.run() });
    }
  });

  after(async () => {
    for (const { worker, running } of workers) {
      worker.shutdown();
      await running;
    }
    nativeFleet?.close();
    tritonFleet?.close();
    await stopServer(viaTriton);
    await stopServer(native);
    await stopTriton(triton);
    await temporal?.stop();
  });

  it('describes the same model as the native server', async () => {
    const [a, b] = await Promise.all([nativeFleet.describe('gmm'), tritonFleet.describe('gmm')]);
    assert.deepEqual(b, a);
  });

  it('gives every algorithm exactly the native result, computed by Triton', async () => {
    const before = await tritonInferences(triton, 'gmm_denoiser');
    // Every verifier is used by some search; FK scores particles above sigma 0.4, where gmm-selfsup has no x-prediction.
    const searches: [AlgorithmSpec, string[]][] = [
      [{ name: 'random' }, ['gmm-oracle', 'gmm-selfsup']],
      [{ name: 'zero-order', n: 4 }, ['gmm-classifier']],
      [{ name: 'paths', n: 2, m: 2 }, ['gmm-selfsup', 'gmm-classifier']],
      [{ name: 'fk', k: 4 }, ['gmm-oracle']],
    ];
    await Promise.all(searches.map(async ([algorithm, verifiers], i) => {
      const spec: SearchSpec = { model: 'gmm', condition: { classLabel: 3 + i }, algorithm, verifiers, budgetNfe: 600, seed: 11 + i };
      const run = async (taskQueue: string) => (await startSearch(temporal.env.client, spec, { taskQueue, workflowId: uniqueId(algorithm.name) })).result();
      const [expected, actual] = await within(120_000, `${algorithm.name} on both fleets`, Promise.all([run(nativeQueue), run(tritonQueue)]));
      assert.ok(expected.candidates > 1 && Number.isFinite(expected.best.score), `${algorithm.name}: ${JSON.stringify(expected.best)}`);
      assert.deepEqual(Object.keys(expected.best.scores).sort(), [...verifiers].sort());
      assert.deepEqual(comparable(actual), comparable(expected), algorithm.name);
    }));
    assert.ok((await tritonInferences(triton, 'gmm_denoiser')) > before, 'the denoiser ran in Triton');
    for (const model of ['gmm_oracle', 'gmm_classifier', 'gmm_selfsup']) assert.ok((await tritonInferences(triton, model)) > 0, `${model} ran in Triton`);
  });

  async function runCampaign(name: string, seeds: number[], taskQueue: string, during?: (progress: () => Promise<CampaignProgress>) => Promise<void>) {
    const dir = tempDir(name);
    const input = resolveCampaign(campaignSpec(dir, name, seeds), await nativeFleet.describe('gmm'), dir);
    const handle = await startCampaign(temporal.env.client, input, { taskQueue });
    await during?.(() => handle.query(campaignProgressQuery));
    const progress = await within(180_000, `campaign ${name}`, handle.result());
    return { input, progress, contents: await storeContents(input) };
  }

  it('runs a campaign with every cell done and the native campaign\'s results', async () => {
    const [expected, actual] = await Promise.all([runCampaign('gmm-native', [0, 1], nativeQueue), runCampaign('gmm-triton', [0, 1], tritonQueue)]);
    assert.deepEqual([expected.progress.done, expected.progress.failed, expected.progress.total], [8, 0, 8]);
    assert.deepEqual([actual.progress.done, actual.progress.failed], [8, 0]);
    assert.equal(Object.keys(expected.contents.rows).length, 8);
    assert.equal(Object.keys(expected.contents.cells).length, 2);
    assert.deepEqual(actual.contents, expected.contents);
  });

  it('finishes a campaign when Triton is killed in the middle and restarted on the same port', async () => {
    // Seeds of its own: the Triton-backed server's cache holds the previous campaign, and would answer it without Triton.
    const seeds = [2, 3];
    const computedBefore = await tritonInferences(triton, 'gmm_denoiser');
    let killedAt: CampaignProgress | undefined;
    let computedUntilKilled = 0;
    const outage = runCampaign('gmm-outage', seeds, tritonQueue, async (query) => {
      killedAt = await waitUntil('two searches of the campaign done', async () => {
        const p = await query().catch(() => null);
        return p && p.done >= 2 ? p : null;
      }, 120_000, 50);
      computedUntilKilled = (await tritonInferences(triton, 'gmm_denoiser')) - computedBefore;
      await killTriton(triton);
      const killed = Date.now();
      try {
        // The server sees Triton gone and says so in its health; the fleet client routes around it, and the
        // searches' activities fail UNAVAILABLE, retryable, and wait.
        await waitUntil('the Triton-backed server to go NOT_SERVING', async () => /NOT_SERVING/.test(readFileSync(viaTriton.logFile, 'utf8')), 30_000, 100);
        const wait = await waitUntil('a running search to wait for model servers', async () => {
          const running = (await query()).runningIds ?? [];
          return (await Promise.all(running.map((id) => fleetWait(temporal.env.client.workflow.getHandle(id))))).find((w) => w !== null);
        }, 30_000, 200);
        assert.match(wait!.lastFailure, /UNAVAILABLE/);
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, killed + 3_000 - Date.now())));
        const waiting = await query();
        assert.equal(waiting.failed, 0, 'nothing failed while Triton was down');
        assert.ok(waiting.done < waiting.total, `the outage came before the end: ${JSON.stringify(waiting)}`);
      } finally {
        // Back whatever happened above: the later tests need it.
        triton = await withTriton(GMM_REPOSITORY, triton.grpcPort);
      }
    });
    const [expected, { progress, contents }] = await Promise.all([runCampaign('gmm-outage-native', seeds, nativeQueue), outage]);
    assert.ok(computedUntilKilled > 0, 'the campaign ran in Triton before it was killed');
    assert.ok(killedAt && killedAt.done < killedAt.total && killedAt.running > 0, `Triton was killed while searches ran: ${JSON.stringify(killedAt)}`);
    assert.deepEqual([progress.done, progress.failed, progress.total], [8, 0, 8]);
    assert.deepEqual([expected.progress.done, expected.progress.failed], [8, 0]);
    assert.deepEqual(contents, expected.contents);
    assert.match(readFileSync(viaTriton.logFile, 'utf8'), /NOT_SERVING: remote networks not ready[\s\S]*SERVING: remote networks ready again/);
    assert.ok((await tritonInferences(triton, 'gmm_denoiser')) > 0, 'the restarted Triton computed the rest');
  });

  it('noisesearch server start --triton hosts the Triton models in the embedded model server', async () => {
    const home = tempDir('embedded-triton');
    const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), ...args], {
      encoding: 'utf8', env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' }, timeout: 120_000,
    });
    const refused = cli('server', 'start', '--triton', triton.grpcAddress);
    assert.equal(refused.status, 2);
    assert.match(refused.stderr, /^noisesearch server: server start: --triton goes with --model NAME@triton:TRITON_MODEL/);
    try {
      const started = cli('server', 'start', '--triton', triton.grpcAddress, '--model', TRITON_MODEL, '--verifier', 'gmm-classifier@triton:gmm_classifier');
      assert.equal(started.status, 0, started.stderr);
      assert.match(started.stderr, /starting model server \(gmm@triton:gmm_denoiser\)/);
      const spec: SearchSpec = { model: 'gmm', condition: { classLabel: 4 }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier'], budgetNfe: 300, seed: 5 };
      const searched = cli('search', '--class', '4', '--budget', '300', '--seed', '5', '--verifier', 'gmm-classifier', '--local', '--json');
      assert.equal(searched.status, 0, searched.stderr);
      const { workflowId, driver, ...result } = JSON.parse(searched.stdout);
      assert.deepEqual(comparable(result), comparable(await runLocalSearch(spec, nativeFleet)));
      // Only the verifier it was given: the embedded server hosts what --verifier named, nothing more.
      const oracle = cli('search', '--class', '4', '--budget', '300', '--verifier', 'gmm-oracle', '--local', '--json');
      assert.equal(oracle.status, 2);
      assert.match(oracle.stderr, /^noisesearch search: verifier: "gmm-oracle" is not hosted with model gmm; use one of gmm-classifier\n$/);
    } finally {
      cli('server', 'stop');
    }
  });
});
