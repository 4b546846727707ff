// Metrics end to end, read back through a real Prometheus: a real Temporal, the gmm model server with its
// own /metrics, a `noisesearch worker` and a `campaign run` serving theirs. What Prometheus holds after a
// small campaign must equal what the results store says (the store is written from the searches' results,
// independently of every counter), and the model server's count of the NFEs it ran.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { campaignSize } from '../src/campaign/plan';
import { resolveCampaign } from '../src/campaign/spec';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { openStore } from '../src/store';
import { gmmModelInfo } from './fixtures';
import { stopChild, stopServer, tempDir, withModelServer, withTemporal } from './helpers';
import { freePort, withPrometheus, type RunningPrometheus } from './prometheus';

const CLI = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

function noisesearch(args: string[], home: string, logFile?: string): ChildProcess & { output: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const log = logFile ? openSync(logFile, 'a') : 'pipe';
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' }, stdio: ['ignore', log, log] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d) => (stdout += d));
  child.stderr?.on('data', (d) => (stderr += d));
  const output = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return Object.assign(child, { output });
}

describe('metrics scraped by a real Prometheus', { timeout: 300_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let prometheus: RunningPrometheus;
  let worker: ChildProcess;
  const ports = { server: 0, worker: 0, temporal: 0, campaign: 0 };
  const at = (port: number) => `127.0.0.1:${port}`;
  const home = tempDir('metrics-home');

  before(async () => {
    for (const key of Object.keys(ports) as Array<keyof typeof ports>) ports[key] = await freePort();
    [temporal, server, prometheus] = await Promise.all([
      withTemporal(),
      withModelServer(['--metrics-port', String(ports.server)]),
      withPrometheus(Object.values(ports).map(at)),
    ]);
    worker = noisesearch(['worker', '--temporal', temporal.address, '--fleet', server.address, '--metrics', at(ports.worker), '--temporal-metrics', at(ports.temporal)], home, path.join(home, 'worker.log'));
  });
  after(async () => {
    await stopChild(worker);
    await prometheus?.stop();
    await stopServer(server);
    await temporal?.stop();
  });

  it('counts a campaign as the results store and the model server do', async () => {
    const dir = tempDir('metrics-campaign');
    // The smallest campaign that has two verifiers, two algorithms (labels apart) and the final phase.
    const spec = {
      name: 'metrics',
      dataset: { kind: 'gmm-classes', classes: [3] },
      grid: { algorithms: ['random', { name: 'zero-order', n: 4 }], verifiers: ['gmm-classifier', 'gmm-oracle'], budgets: [300] },
      evaluation: ['gmm-oracle'],
      seeds: [0, 1],
      concurrency: 4,
      results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
    };
    const specFile = path.join(dir, 'campaign.json');
    writeFileSync(specFile, JSON.stringify(spec));
    const input = resolveCampaign(JSON.parse(JSON.stringify(spec)), gmmModelInfo(), dir);
    // Prometheus must already scrape the worker: its endpoint_up comes from the health checks it makes.
    await prometheus.waitForScrape({ targets: [at(ports.worker), at(ports.server), at(ports.temporal)] });
    const run = noisesearch(['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address, '--no-worker', '--metrics', at(ports.campaign)], home);
    const { code, stderr } = await run.output;
    assert.equal(code, 0, stderr);
    await prometheus.waitForScrape({ targets: [at(ports.worker), at(ports.server)] });

    const store = await openStore(input.store);
    const rows = await store.searches(input.campaignId).finally(() => store.close());
    assert.equal(rows.length, campaignSize(input));
    assert.ok(rows.every((r) => r.status === 'done'));
    const sum = (f: (r: (typeof rows)[number]) => number) => rows.reduce((total, r) => total + f(r), 0);
    assert.ok(sum((r) => r.nfeSearch) > 0 && sum((r) => r.nfeFinal) > 0, 'the searches spent NFEs in both phases');

    const byLabel = async (promql: string, label: string) => Object.fromEntries((await prometheus.query(promql)).map((s) => [s.metric[label], s.value]));
    const worker = `instance="${at(ports.worker)}"`;
    assert.deepEqual(await byLabel(`sum by (phase) (noisesearch_nfe_logical_total{${worker}, phase=~"search|final"})`, 'phase'), { search: sum((r) => r.nfeSearch), final: sum((r) => r.nfeFinal) });
    assert.deepEqual(await byLabel(`sum by (algorithm) (noisesearch_nfe_logical_total{${worker}, phase=~"search|final"})`, 'algorithm'), {
      random: sum((r) => (r.algorithm === 'random' ? r.nfeTotal : 0)),
      'zero-order': sum((r) => (r.algorithm === 'zero-order' ? r.nfeTotal : 0)),
    });
    const [executed] = await prometheus.query(`sum(noisesearch_nfe_executed_total{${worker}, phase=~"search|final"})`);
    assert.equal(executed.value, sum((r) => r.nfeExecuted));
    // Every NFE the server ran was asked by the worker: the searches' and the scoring of their final samples.
    const [workerAll] = await prometheus.query(`sum(noisesearch_nfe_executed_total{${worker}})`);
    const [serverAll] = await prometheus.query(`sum(noisesearch_server_nfe_executed_total{instance="${at(ports.server)}"})`);
    assert.equal(serverAll.value, workerAll.value);
    assert.deepEqual(await byLabel(`sum by (state) (noisesearch_searches_total{${worker}})`, 'state'), { completed: rows.length });

    for (const verifier of ['gmm-classifier', 'gmm-oracle']) {
      const [count] = await prometheus.query(`noisesearch_verifier_seconds_count{${worker}, verifier="${verifier}"}`);
      assert.ok(count?.value > 0, `${verifier} has latency samples`);
    }
    const endpoint = `endpoint="${server.address}"`;
    const [evaluate] = await prometheus.query(`noisesearch_endpoint_request_seconds_count{${worker}, ${endpoint}, method="Evaluate"}`);
    assert.ok(evaluate?.value > 0, 'the endpoint shows up with its Evaluate calls');
    assert.deepEqual((await prometheus.query(`noisesearch_endpoint_up{${worker}}`)).map((s) => [s.metric.endpoint, s.value]), [[server.address, 1]]);
    assert.deepEqual((await prometheus.query(`noisesearch_endpoint_in_flight_requests{${worker}}`)).map((s) => s.value), [0]);

    // The campaign's CLI has exited (after a last scrape), so its series are stale: read its last values.
    const campaign = await byLabel(`last_over_time(noisesearch_campaign_searches{campaign="metrics"}[5m])`, 'state');
    assert.deepEqual(campaign, { total: rows.length, done: rows.length, failed: 0 });
    assert.deepEqual(await byLabel(`last_over_time(noisesearch_campaigns_total{instance="${at(ports.campaign)}"}[5m])`, 'state'), { started: 1, completed: 1 });
    assert.deepEqual((await prometheus.query(`last_over_time(noisesearch_campaign_eta_seconds{campaign="metrics"}[5m])`)).map((s) => s.value), [0]);

    // The Temporal SDK's worker metrics and Node's process metrics are there too.
    assert.ok((await prometheus.query(`temporal_worker_task_slots_available{instance="${at(ports.temporal)}"}`)).length > 0);
    assert.ok((await prometheus.query(`process_cpu_seconds_total{${worker}}`)).length > 0);
  });

  it('refuses a bad --metrics address in one line, exit 2', async () => {
    for (const args of [
      ['worker', '--fleet', server.address, '--metrics', 'localhost'],
      ['search', '--fleet', server.address, '--metrics', '127.0.0.1:99999'],
      ['worker', '--fleet', server.address, '--temporal-metrics', 'nowhere:port'],
    ]) {
      const { code, stdout, stderr } = await noisesearch(args, home).output;
      assert.equal(code, 2, stderr);
      assert.equal(stdout, '');
      assert.match(stderr, /^noisesearch \w+: --(temporal-)?metrics: "[^"]+" is not HOST:PORT \(e\.g\. 127\.0\.0\.1:9464, or 0\.0\.0\.0:9464 for every interface\)\n$/);
    }
  });
});
