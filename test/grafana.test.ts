// The Grafana dashboards of deploy/grafana/dashboards/: the committed JSON is what src/ops/dashboards.ts
// generates, and every panel's PromQL, as committed, returns series from a real Prometheus scraping real
// processes while a campaign runs: a `noisesearch worker` (--metrics, --temporal-metrics), the `campaign run`
// CLI (--metrics), a gmm model server (--metrics-port) over a real tritonserver serving deploy/triton/gmm, and
// that Triton's own metrics port. Only panels the generator marks GPU-only may come back empty, and only on a
// machine where they have no GPU to report.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { DASHBOARDS, renderDashboards, UNFINISHED_SEARCHES } from '../src/ops/dashboards';
import { DASHBOARDS_DIR } from '../src/ops/generate-dashboards';
import { startAll, stopChild, stopServer, stopTriton, tempDir, waitUntil, withModelServer, withTemporal, withTriton, type StartedTriton } from './helpers';
import { freePort, withPrometheus, type PromSample, type RunningPrometheus } from './prometheus';

const CLI = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Datasource {
  datasource?: { type: string; uid: string };
}

interface PanelJson extends Datasource {
  title: string;
  targets?: (Datasource & { expr: string; refId: string })[];
}

/** The committed dashboards' panels, as Grafana would load them: the test reads the files, not the generator. */
const committed = readdirSync(DASHBOARDS_DIR)
  .filter((file) => file.endsWith('.json'))
  .flatMap((file) => {
    const dashboard = JSON.parse(readFileSync(path.join(DASHBOARDS_DIR, file), 'utf8')) as { title: string; panels: PanelJson[] };
    return dashboard.panels.map((panel) => ({ dashboard: dashboard.title, panel }));
  });
const gpuOnly = new Map(DASHBOARDS.flatMap((d) => d.panels.filter((p) => p.gpuOnly).map((p) => [`${d.title}/${p.title}`, p.gpuOnly!] as const)));

// Grafana's $__rate_interval is at least four scrape intervals; the test's Prometheus scrapes every second, and
// a window of ten holds enough samples for every rate() while the campaign is still young.
const RATE_INTERVAL = '10s';

describe('Grafana dashboards', () => {
  it('the committed JSON is what src/ops/dashboards.ts generates (run the dashboards script after editing it)', () => {
    const generated = renderDashboards();
    assert.deepEqual(readdirSync(DASHBOARDS_DIR).filter((f) => f.endsWith('.json')).sort(), generated.map((d) => d.file).sort());
    for (const { file, json } of generated) assert.equal(readFileSync(path.join(DASHBOARDS_DIR, file), 'utf8'), json, `${file} differs from the generator's output`);
  });

  it('every panel has a query, and every panel and query reads the datasource variable', () => {
    for (const { dashboard, panel } of committed) {
      assert.ok((panel.targets ?? []).length > 0, `${dashboard}/${panel.title} has no query`);
      // The variable, not a fixed uid: the dashboards must work with whatever Prometheus Grafana was given.
      for (const holder of [panel, ...(panel.targets ?? [])]) assert.deepEqual(holder.datasource, { type: 'prometheus', uid: '${datasource}' }, `${dashboard}/${panel.title}`);
    }
  });
});

describe("every panel's PromQL against a real Prometheus scraping a running campaign", { timeout: 300_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let triton: StartedTriton;
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let prometheus: RunningPrometheus;
  let worker: ChildProcess | undefined;
  let campaign: ChildProcess | undefined;
  /** The moment every panel is evaluated at (seconds since the epoch): mid-campaign, with every exporter live. */
  let evaluatedAt = 0;
  const home = tempDir('grafana-home');

  before(async () => {
    const ports = { server: await freePort(), worker: await freePort(), temporal: await freePort(), campaign: await freePort() };
    const at = (port: number) => `127.0.0.1:${port}`;
    await startAll([withTemporal().then((t) => (temporal = t)), withTriton(path.join(PROJECT_ROOT, 'deploy', 'triton', 'gmm')).then((t) => (triton = t))]);
    const tritonMetrics = new URL(triton.metricsUrl).host;
    // One call in ten answered ABORTED (drawn afresh on each retry): the errors panels need errors to show, and
    // ABORTED reaches the fleet client (gRPC's own retries absorb most UNAVAILABLEs), which retries it.
    const faults = { seed: 3, rules: [{ fraction: 0.1, request_status: 'ABORTED' }] };
    await startAll([
      withModelServer(
        [
          '--metrics-port', String(ports.server),
          '--triton', triton.grpcAddress, '--triton-wait', '30',
          ...['gmm-oracle@triton:gmm_oracle', 'gmm-classifier@triton:gmm_classifier'].flatMap((v) => ['--verifier', v]),
          '--allow-fault-injection', '--faults', JSON.stringify(faults),
        ],
        undefined,
        'gmm@triton:gmm_denoiser',
      ).then((s) => (server = s)),
      withPrometheus([...Object.values(ports).map(at), tritonMetrics]).then((p) => (prometheus = p)),
    ]);
    worker = noisesearch(['worker', '--temporal', temporal.address, '--fleet', server.address, '--metrics', at(ports.worker), '--temporal-metrics', at(ports.temporal)], path.join(home, 'worker.log'));
    await prometheus.waitForScrape({ targets: [at(ports.worker), at(ports.temporal), at(ports.server), tritonMetrics] });

    const dir = tempDir('grafana-campaign');
    const spec = {
      name: 'grafana',
      dataset: { kind: 'gmm-classes', classes: [2, 5] },
      grid: { algorithms: ['random', { name: 'zero-order', n: 4 }], verifiers: ['gmm-classifier'], budgets: [600] },
      evaluation: ['gmm-oracle'],
      seeds: [0, 1, 2],
      concurrency: 2,
      results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
    };
    const specFile = path.join(dir, 'campaign.json');
    writeFileSync(specFile, JSON.stringify(spec));
    campaign = noisesearch(['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address, '--no-worker', '--metrics', at(ports.campaign)], path.join(home, 'campaign.log'));
    // Mid-campaign: a third of its searches done, so every counter has moved (and has had a rate window's worth
    // of samples since) while the campaign's CLI still serves its progress.
    await waitUntil('a third of the campaign done, seen by Prometheus', async () => {
      if (campaign!.exitCode !== null) throw new Error(`campaign run exited (${campaign!.exitCode}) before it was seen mid-way (log: ${home}/campaign.log)`);
      const done = await prometheus.query('noisesearch_campaign_searches{campaign="grafana", state="done"} * 3 >= on (campaign) noisesearch_campaign_searches{campaign="grafana", state="total"}');
      return done.length > 0;
    }, 120_000, 250);
    evaluatedAt = Date.now() / 1000;
    // Every series that was live now is in the TSDB once a scrape after this moment completed.
    await prometheus.waitForScrape({ after: Date.now() + 1000, targets: [at(ports.worker), at(ports.temporal), at(ports.server), tritonMetrics] });
  });

  after(async () => {
    await stopChild(campaign);
    await stopChild(worker);
    await prometheus?.stop();
    await stopServer(server);
    await stopTriton(triton);
    await temporal?.stop();
  });

  function noisesearch(args: string[], logFile: string): ChildProcess {
    const log = openSync(logFile, 'a');
    return spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' }, stdio: ['ignore', log, log] });
  }

  /** An instant query at the evaluation moment; Prometheus' own error for a query it refuses. */
  async function queryAt(expr: string): Promise<PromSample[]> {
    const url = `${prometheus.url}/api/v1/query?query=${encodeURIComponent(expr)}&time=${evaluatedAt}`;
    const body = (await (await fetch(url, { signal: AbortSignal.timeout(10_000) })).json()) as { status: string; error?: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
    if (body.status !== 'success') throw new Error(`Prometheus refused ${expr}: ${body.error}`);
    return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
  }

  it('"Searches unfinished" counts the campaign\'s remaining searches, which the worker\'s ends do not offset', async () => {
    const gauge = async (state: string) => (await queryAt(`noisesearch_campaign_searches{campaign="grafana", state="${state}"}`))[0].value;
    const remaining = (await gauge('total')) - (await gauge('done')) - (await gauge('failed'));
    assert.ok(remaining > 0, 'evaluated mid-campaign');
    const [unfinished] = await queryAt(UNFINISHED_SEARCHES);
    assert.equal(unfinished.value, remaining);
  });

  it('every metric the alert rules read is exported by the running processes', async () => {
    // promtool's unit tests feed the rules series named as the rules name them; this catches a name no exporter uses.
    const rules = readFileSync(path.join(PROJECT_ROOT, 'deploy', 'prometheus', 'alerts.yml'), 'utf8');
    const names = new Set([...rules.matchAll(/^\s+expr:[\s\S]*?(?=^\s+for:)/gm)].flatMap((m) => m[0].match(/\b(?:noisesearch|nv)_[a-z_]+\b/g) ?? []));
    assert.ok(names.size >= 10, `only ${[...names].join(', ')}`);
    for (const name of names) assert.ok((await queryAt(`count({__name__="${name}"})`)).length > 0, `${name} (read by alerts.yml) has no series`);
  });

  for (const { dashboard, panel } of committed) {
    const reason = gpuOnly.get(`${dashboard}/${panel.title}`);
    it(`${dashboard} / ${panel.title}`, async (t) => {
      for (const target of panel.targets ?? []) {
        const expr = target.expr.replaceAll('$__rate_interval', RATE_INTERVAL);
        assert.doesNotMatch(expr, /\$/, `${target.refId}: a Grafana variable this test does not substitute: ${expr}`);
        const series = await queryAt(expr);
        if (series.length === 0 && reason) {
          t.skip(`GPU only (${reason}); no GPU series here`);
          return;
        }
        assert.ok(series.length > 0, `${target.refId} returned no series: ${expr}`);
      }
    });
  }
});
