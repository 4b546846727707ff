// Campaigns end to end: a real Temporal dev server, the model server, `noisesearch` processes that are
// killed with SIGKILL in the middle, and the results store that must end with every search exactly once.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { campaignSize, type CampaignInput } from '../src/campaign/plan';
import { resolveCampaign } from '../src/campaign/spec';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { SpecError } from '../src/search/spec';
import { openStore } from '../src/store';
import { campaignProgressQuery, type CampaignProgress } from '../workflows/campaign';
import { gmmModelInfo } from './fixtures';
import { spawnWorker, stopChild, stopServer, tempDir, waitUntil, withModelServer, withTemporal } from './helpers';

const SHARED_PROMPTS = path.resolve(PROJECT_ROOT, '..', 'shared', 'data', 'prompts');

const MODEL = gmmModelInfo();

function campaignSpec(dir: string, name: string, overrides: Record<string, unknown> = {}) {
  return {
    name,
    dataset: { kind: 'gmm-classes', classes: [2, 5] },
    grid: { algorithms: ['random', { name: 'zero-order', n: 4 }], verifiers: ['gmm-classifier'], budgets: [400, 1200, 2400] },
    evaluation: ['gmm-oracle', 'gmm-classifier'],
    seeds: [0, 1],
    concurrency: 3,
    results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
    ...overrides,
  };
}

describe('campaign specs', () => {
  it('refuses a bad spec with every problem listed, naming each field', () => {
    const dir = tempDir('bad-spec');
    const broken = path.join(dir, 'broken.jsonl');
    writeFileSync(broken, '{"tag": "a", "include": [], "prompt": "x"}\nnot json\n');
    const spec = {
      name: 'bad name!',
      dataset: { kind: 'gmm-classes', classes: [1, -3] },
      grid: { algorithms: ['random', 'annealing'], verifiers: ['gmm-classifier', 'clip'], budgets: [20, 400] },
      evaluation: ['gmm-oracle', 'pickscore'],
      concurrency: 0,
    };
    assert.throws(() => resolveCampaign(spec, MODEL, dir), (error: SpecError) => {
      const text = error.problems.join('\n');
      assert.match(text, /^name: "bad name!" must be/m);
      assert.match(text, /^dataset\.classes\[1\]: -3/m);
      assert.match(text, /^grid\.algorithms\[1\]: "annealing" is not an algorithm/m);
      assert.match(text, /^evaluation\[1\]: "pickscore" is not hosted/m);
      assert.match(text, /^concurrency: 0 must be a whole number from 1 to 1000/m);
      return true;
    });
    assert.throws(() => resolveCampaign({ ...spec, name: 'ok', dataset: { kind: 'gmm-classes', classes: [1] }, concurrency: 2, evaluation: undefined }, MODEL, dir), (error: SpecError) => {
      const text = error.problems.join('\n');
      assert.match(text, /grid \(algorithms\[0\] random, verifiers\[0\] gmm-classifier, budgets\[0\] 20\): budget: 20 NFEs cannot pay for one candidate/);
      assert.match(text, /grid \(algorithms\[0\] random, verifiers\[1\] clip, budgets\[1\] 400\): verifier: "clip" is not hosted/);
      return true;
    });
    assert.throws(() => resolveCampaign({ ...campaignSpec(dir, 'prompts'), dataset: { kind: 'geneval', path: broken } }, MODEL, dir), /dataset\.path: file .*broken\.jsonl line 2: not JSON/);
    assert.throws(
      () => resolveCampaign({ ...campaignSpec(dir, 'prompts'), dataset: { kind: 'drawbench', path: path.join(SHARED_PROMPTS, 'DrawBench.csv') } }, MODEL, dir),
      /dataset\.kind: drawbench gives text prompts, but model gmm is class-conditional/,
    );
  });

  it("refuses a dataset whose items would make the campaign's input larger than a Temporal payload", () => {
    const dir = tempDir('payload');
    const textToImage = gmmModelInfo({ model: 't2i', takesPrompts: true, numClasses: 0 });
    const prompts = (count: number) => {
      const file = path.join(dir, `prompts-${count}.csv`);
      // Each prompt is 4,000 characters (the longest taken is 4,096) and unique, so nothing is shared.
      writeFileSync(file, ['Prompts,Category', ...Array.from({ length: count }, (_, i) => `${String(i).padStart(6, '0')}${'a'.repeat(3994)},Colors`)].join('\n'));
      return { ...campaignSpec(dir, `payload-${count}`, { grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400] }, evaluation: ['gmm-classifier'] }), model: 't2i', dataset: { kind: 'drawbench', path: file } };
    };
    // 600 prompts carry at least 600 x 4,000 bytes = 2.4 MB of text, past the 2 MiB (2,097,152 bytes) limit.
    assert.throws(() => resolveCampaign(prompts(600), textToImage, dir), (error: SpecError) => {
      assert.equal(error.problems.length, 1, error.problems.join('\n'));
      assert.match(error.problems[0], /^dataset: its 600 items make a campaign input of \d+\.\d MiB, past the 2 MiB a Temporal payload may hold; take fewer items/);
      return true;
    });
    // 100 of them are at most 100 x (two copies of 4,000 bytes + 1,000 of keys) = 0.9 MB, well within.
    assert.equal(resolveCampaign(prompts(100), textToImage, dir).items.length, 100);
  });

  it('checks every dataset item and every grid cell against the model before anything starts', () => {
    const dir = tempDir('items');
    assert.throws(() => resolveCampaign(campaignSpec(dir, 'items', { dataset: { kind: 'gmm-classes', classes: [1, 12, 3, 10] } }), MODEL, dir), (error: SpecError) => {
      assert.deepEqual(
        error.problems,
        [
          'dataset item 1 (class-12): class: 12 is not a class of model gmm; use a whole number from 0 to 9',
          'dataset item 3 (class-10): class: 10 is not a class of model gmm; use a whole number from 0 to 9',
        ],
      );
      return true;
    });
    assert.throws(
      () => resolveCampaign(campaignSpec(dir, 'cells', { grid: { algorithms: ['random', { name: 'fk', k: 4 }], verifiers: ['gmm-oracle', 'gmm-selfsup'], budgets: [2000] } }), MODEL, dir),
      (error: SpecError) => {
        assert.equal(error.problems.length, 1, error.problems.join('\n'));
        assert.match(error.problems[0], /^grid \(algorithms\[1\] fk, verifiers\[1\] gmm-selfsup, budgets\[0\] 2000\): verifier: gmm-selfsup compares the sample with the denoiser's x-prediction at sigma <= 0\.4, but fk scores its first candidates/);
        return true;
      },
    );
  });

  it('derives the campaign ID from its content, and expands the grid into one search per item, cell and seed', () => {
    const dir = tempDir('ids');
    const a = resolveCampaign(campaignSpec(dir, 'ids'), MODEL, dir);
    const b = resolveCampaign(campaignSpec(dir, 'ids', { concurrency: 7 }), MODEL, dir);
    const c = resolveCampaign(campaignSpec(dir, 'ids', { seeds: [0, 2] }), MODEL, dir);
    assert.equal(a.campaignId, b.campaignId, 'concurrency does not change what is computed');
    assert.notEqual(a.campaignId, c.campaignId);
    assert.equal(campaignSize(a), 2 * 2 * 3 * 2);
  });
});

async function storeCounts(input: CampaignInput): Promise<{ rows: number; unique: number; done: number }> {
  const store = await openStore(input.store);
  try {
    const rows = await store.searches(input.campaignId);
    return { rows: rows.length, unique: new Set(rows.map((r) => r.workflowId)).size, done: rows.filter((r) => r.status === 'done').length };
  } finally {
    await store.close();
  }
}

function cli(args: string[], home: string): ChildProcess & { output: Promise<{ code: number | null; stdout: string; stderr: string }>; stderrSoFar: () => string } {
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), ...args], {
    env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const output = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return Object.assign(child, { output, stderrSoFar: () => stderr });
}

describe('campaigns that survive SIGKILL and outages', { timeout: 900_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let client: Client;

  before(async () => {
    [temporal, server] = await Promise.all([withTemporal(), withModelServer()]);
    client = new Client({ connection: await Connection.connect({ address: temporal.address }) });
  });
  after(async () => {
    await client?.connection.close();
    await stopServer(server);
    await temporal?.stop();
  });

  function waitForProgress(campaignId: string, atLeast: number, what: (p: CampaignProgress) => boolean = (p) => p.done >= atLeast): Promise<CampaignProgress> {
    return waitUntil(`campaign ${campaignId} to reach ${atLeast} searches`, async () => {
      const progress = await client.workflow.getHandle(campaignId).query(campaignProgressQuery).catch(() => null);
      return progress && what(progress) ? progress : null;
    }, 120_000, 100);
  }

  it('finishes with every search in the store exactly once after the whole CLI is killed', async () => {
    const dir = tempDir('kill-cli');
    const specFile = path.join(dir, 'campaign.json');
    writeFileSync(specFile, JSON.stringify(campaignSpec(dir, 'kill-cli')));
    const input = resolveCampaign(campaignSpec(dir, 'kill-cli'), MODEL, dir);
    const args = ['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address];
    const first = cli(args, dir);
    const before = await waitForProgress(input.campaignId, 3);
    assert.ok(before.done < before.total, 'killed in the middle');
    await stopChild(first, 'SIGKILL');
    const second = cli(args, dir);
    const { code, stderr } = await second.output;
    assert.equal(code, 0, stderr);
    const counts = await storeCounts(input);
    assert.deepEqual(counts, { rows: campaignSize(input), unique: campaignSize(input), done: campaignSize(input) });

    // Running it again attaches to the finished campaign: nothing is searched twice.
    const again = cli(args, dir);
    assert.equal((await again.output).code, 0);
    assert.deepEqual(await storeCounts(input), counts);
  });

  it('finishes with every search in the store exactly once after its worker is killed', async () => {
    const dir = tempDir('kill-worker');
    const specFile = path.join(dir, 'campaign.yaml');
    writeFileSync(specFile, JSON.stringify(campaignSpec(dir, 'kill-worker')));
    const input = resolveCampaign(campaignSpec(dir, 'kill-worker'), MODEL, dir);
    const taskQueue = 'noisesearch-search';
    let worker = spawnWorker(temporal.address, server.address, taskQueue);
    const run = cli(['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address, '--no-worker'], dir);
    await waitForProgress(input.campaignId, 3);
    await stopChild(worker, 'SIGKILL');
    worker = spawnWorker(temporal.address, server.address, taskQueue);
    try {
      const { code, stderr } = await run.output;
      assert.equal(code, 0, stderr);
    } finally {
      await stopChild(worker);
    }
    assert.deepEqual(await storeCounts(input), { rows: campaignSize(input), unique: campaignSize(input), done: campaignSize(input) });
    const store = await openStore(input.store);
    try {
      const metrics = await store.cellMetrics(input.campaignId);
      assert.equal(metrics.length, 2 * 3, 'population metrics for every grid cell');
      for (const m of metrics) assert.ok(Number.isFinite(m.frechetDistance) && m.inceptionScore >= 1);
      // The embedded model's server computes no CLIP-FID: none on the wire, none stored.
      for (const m of metrics) assert.equal(m.clipFrechetDistance, undefined);
    } finally {
      await store.close();
    }
  });

  it('waits out a fleet outage without failing a search, and says so in its status', async () => {
    const dir = tempDir('outage');
    const specFile = path.join(dir, 'campaign.json');
    const spec = campaignSpec(dir, 'outage', { grid: { algorithms: ['random', { name: 'fk', k: 4 }], verifiers: ['gmm-classifier'], budgets: [1200] }, seeds: [0, 1, 2] });
    writeFileSync(specFile, JSON.stringify(spec));
    const input = resolveCampaign(spec, MODEL, dir);
    const run = cli(['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address], dir);
    await waitForProgress(input.campaignId, 2);
    const port = Number(server.address.split(':')[1]);
    await stopServer(server, 'SIGKILL');
    try {
      const status = await waitUntil('campaign status to say it waits', async () => {
        const shown = await cli(['campaign', 'status', input.campaignId, '--temporal', temporal.address], dir).output;
        return /waiting for model servers/.test(shown.stdout) ? shown.stdout : null;
      }, 60_000, 1_000);
      assert.match(status, /waiting for model servers \((evaluateBatch|recordSearch|describeModel), attempt \d+\): .*UNAVAILABLE/);
      assert.equal((await client.workflow.getHandle(input.campaignId).query(campaignProgressQuery)).failed, 0, 'nothing failed while the fleet was down');
      await waitUntil('the running command to say it waits', async () => /waiting for model servers/.test(run.stderrSoFar()), 60_000, 200);
    } finally {
      // The other tests of this suite need the server back, whatever happened above.
      server = await withModelServer([], port);
    }
    const { code, stderr } = await run.output;
    assert.equal(code, 0, stderr);
    assert.deepEqual(await storeCounts(input), { rows: campaignSize(input), unique: campaignSize(input), done: campaignSize(input) });
  });

  it('cancels a running campaign and its searches', async () => {
    const dir = tempDir('cancel');
    const specFile = path.join(dir, 'campaign.json');
    writeFileSync(specFile, JSON.stringify(campaignSpec(dir, 'cancel', { grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400_000] } })));
    const input = resolveCampaign(JSON.parse(JSON.stringify(campaignSpec(dir, 'cancel', { grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400_000] } }))), MODEL, dir);
    const run = cli(['campaign', 'run', specFile, '--temporal', temporal.address, '--fleet', server.address], dir);
    await waitForProgress(input.campaignId, 0, (p) => p.running > 0);
    const cancel = cli(['campaign', 'cancel', input.campaignId, '--temporal', temporal.address], dir);
    assert.equal((await cancel.output).code, 0);
    const { code } = await run.output;
    assert.equal(code, 1, 'the run reports the cancelled campaign');
    const description = await client.workflow.getHandle(input.campaignId).describe();
    assert.equal(description.status.name, 'CANCELLED');
  });
});
