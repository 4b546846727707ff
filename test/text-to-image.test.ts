// A text-to-image model, end to end on the orchestrator's side: prompts and negative prompts accepted by
// a model that takes them and refused (one line each, before any NFE) by one that does not; what goes on
// the wire to a model server and what comes back (a decoded PNG instead of a latent); and a small
// DrawBench campaign through Temporal against a fake model server over gRPC (test/fake-server.ts) whose
// pictures land in the campaign's folder and the report, never in a workflow's history.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { temporal as proto } from '@temporalio/proto';
import type { Worker } from '@temporalio/worker';
import { resolveCampaign } from '../src/campaign/spec';
import { baselinePath, samplePath } from '../src/campaign/samples';
import { writeCampaignReport } from '../src/cli/campaign';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { Fleet, toModelInfo } from '../src/fleet/client';
import { packOutcome } from '../src/search/packing';
import { createRun } from '../src/search/run';
import { SpecError, type SearchSpec } from '../src/search/spec';
import type { BatchRequest } from '../src/search/types';
import { openStore } from '../src/store';
import { startCampaign } from '../src/temporal/client';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { hashScore } from './drive';
import { PNG_SIGNATURE, serveFakeModel, tinyTextModelDescription, type FakeModelServer } from './fake-server';
import { gmmModelInfo } from './fixtures';
import { tempDir, uniqueId, withTemporal } from './helpers';

const DRAWBENCH = path.resolve(PROJECT_ROOT, '..', 'shared', 'data', 'prompts', 'DrawBench.csv');
const TEXT_MODEL = toModelInfo(tinyTextModelDescription());
const GMM = gmmModelInfo();

function problems(spec: SearchSpec, model = TEXT_MODEL): string[] {
  try {
    createRun(spec, model);
    return [];
  } catch (error) {
    if (error instanceof SpecError) return error.problems;
    throw error;
  }
}

function search(condition: SearchSpec['condition'], overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'tiny-flux', condition, algorithm: { name: 'random' }, verifiers: ['clip-score'], budgetNfe: 40, seed: 1, ...overrides };
}

describe('prompts and classes, refused before any NFE', () => {
  it('describes a text-to-image model: prompts, a shifted schedule, a rectified flow, decoded images', () => {
    assert.equal(TEXT_MODEL.takesPrompts, true);
    assert.deepEqual(TEXT_MODEL.schedule, { kind: 'shifted', rho: 7, shift: 3 });
    assert.equal(TEXT_MODEL.process, 'flow');
    assert.deepEqual(TEXT_MODEL.imageShape, [3, 4, 4]);
    // A server from before schedules were described: Karras, a VE process, no prompts, no image.
    const old = toModelInfo({ ...tinyTextModelDescription(), process: '', schedule: '', scheduleShift: 0, takesPrompts: false, imageShape: undefined });
    assert.deepEqual([old.schedule, old.process, old.takesPrompts, old.imageShape], [{ kind: 'karras', rho: 7, shift: 1 }, 've', false, []]);
  });

  it('takes a prompt and a negative prompt on a text model; refuses a class there, and a prompt on a class model, in one line each', () => {
    assert.deepEqual(problems(search({ prompt: 'a red car', negativePrompt: 'blurry', guidanceScale: 3.5 })), []);
    assert.deepEqual(problems(search({ classLabel: 3 })), ['class: model tiny-flux is a text-to-image model and takes no class; give a prompt (--prompt "...")']);
    assert.deepEqual(problems(search({})), ['prompt: verifier clip-score scores against a prompt; give --prompt "..."']);
    assert.deepEqual(problems(search({}, { verifiers: ['aesthetic'] })), [], 'a verifier that needs no condition samples unconditionally');
    assert.deepEqual(problems(search({ negativePrompt: 'blurry' }, { verifiers: ['aesthetic'] })), ['negativePrompt: a negative prompt steers away from what a prompt asks for; give --prompt too']);
    const onGmm = (condition: SearchSpec['condition']) => problems({ ...search(condition), model: 'gmm', verifiers: ['gmm-classifier'], budgetNfe: 400 }, GMM);
    assert.deepEqual(onGmm({ prompt: 'a red car' }), ['prompt: model gmm is class-conditional (10 classes) and takes no text prompt; give a class from 0 to 9']);
    assert.deepEqual(onGmm({ classLabel: 3, negativePrompt: 'blurry' }), ['negativePrompt: model gmm is class-conditional (10 classes) and takes no text prompt; give a class from 0 to 9']);
  });

  it('runs a prompt dataset on a text model, with a negative prompt for every prompt; refuses a class dataset there in one line', () => {
    const dir = tempDir('t2i-spec');
    const spec = {
      name: 'drawbench',
      model: 'tiny-flux',
      dataset: { kind: 'drawbench', path: DRAWBENCH, limit: 3 },
      negativePrompt: 'blurry, low quality',
      grid: { algorithms: ['random'], verifiers: ['clip-score'], budgets: [40] },
    };
    const input = resolveCampaign(spec, TEXT_MODEL, dir);
    assert.equal(input.items.length, 3);
    assert.deepEqual(input.items[0].condition, { prompt: 'A red colored car.', negativePrompt: 'blurry, low quality' });
    assert.throws(() => resolveCampaign({ ...spec, dataset: { kind: 'gmm-classes', classes: [1, 2, 3] }, negativePrompt: undefined }, TEXT_MODEL, dir), (error: SpecError) => {
      assert.deepEqual(error.problems, ['dataset.kind: gmm-classes gives classes, but model tiny-flux is a text-to-image model; use a prompt dataset (drawbench, partiprompts, t2i-compbench, geneval), or a class-conditional model']);
      return true;
    });
    assert.throws(() => resolveCampaign({ ...spec, model: 'gmm', grid: { ...spec.grid, verifiers: ['gmm-classifier'] } }, GMM, dir), (error: SpecError) => {
      assert.deepEqual(error.problems, ['dataset.kind: drawbench gives text prompts, but model gmm is class-conditional (10 classes); use a text-to-image model, or a class dataset (gmm-classes, imagenet)']);
      return true;
    });
  });
});

describe('a text-to-image model over gRPC', () => {
  let server: FakeModelServer;
  let fleet: Fleet;

  before(async () => {
    server = await serveFakeModel(tinyTextModelDescription(), { scorer: hashScore });
    fleet = new Fleet([server.address]);
  });
  after(async () => {
    fleet?.close();
    await server?.close();
  });

  const batch = (returnSamples: boolean): BatchRequest => ({
    model: 'tiny-flux',
    condition: { prompt: 'A red colored car.', negativePrompt: 'blurry', guidanceScale: 3.5 },
    verifiers: ['clip-score'],
    candidates: [1, 2].map((seed) => ({ id: `c${seed}`, lineage: { noise: { seed, perturbations: [] }, ops: [{ solve: { sigmaFrom: 1, sigmaTo: 0, solver: 'euler', steps: 4 } }] }, scoreXpred: false })),
    returnSamples,
  });

  it('sends the prompt, the negative prompt and the model\'s schedule; gets a PNG back instead of a latent', async () => {
    const outcome = await fleet.evaluate(batch(true));
    const sent = server.evaluations.at(-1);
    assert.deepEqual(
      { prompt: sent.candidates[0].condition.prompt, negativePrompt: sent.candidates[0].condition.negativePrompt, guidanceScale: sent.candidates[0].condition.guidanceScale },
      { prompt: 'A red colored car.', negativePrompt: 'blurry', guidanceScale: 3.5 },
    );
    assert.equal(sent.candidates[0].lineage.ops[0].solve.schedule, 'shifted');
    for (const o of outcome.outcomes) {
      assert.ok(o.image && Buffer.from(o.image).subarray(0, 8).equals(PNG_SIGNATURE), 'a PNG');
      assert.equal(o.sample, undefined, 'no latent');
    }
    assert.ok(!Buffer.from(outcome.outcomes[0].image!).equals(Buffer.from(outcome.outcomes[1].image!)), 'two noises, two pictures');
    const plain = await fleet.evaluate(batch(false));
    assert.ok(plain.outcomes.every((o) => o.image === undefined), 'no picture unless asked for');
  });

  it('leaves the picture out of what goes back to a workflow', async () => {
    const request = batch(true);
    const packed = JSON.stringify(packOutcome(await fleet.evaluate(request), request));
    assert.ok(!packed.includes('iVBORw0KGgo') && !packed.includes('"0":137'), 'no PNG, as base64 or as bytes');
    assert.doesNotMatch(packed, /image/);
  });

  it('sends a cell\'s PNGs for population metrics, with the decoded shape', async () => {
    const outcome = await fleet.evaluate(batch(true));
    const samples = outcome.outcomes.map((o) => ({ image: o.image!, condition: { prompt: 'A red colored car.' } }));
    const metrics = await fleet.population('tiny-flux', samples);
    assert.equal(metrics.samples, 2);
    assert.equal(metrics.clipFrechetDistance, 0.25);
    const sent = server.populations.at(-1);
    sent.samples.forEach((s: any, i: number) => {
      assert.ok(Buffer.from(s.image).equals(Buffer.from(samples[i].image)));
      assert.deepEqual(s.values, []);
      assert.deepEqual(s.shape, [3, 4, 4]);
      assert.equal(s.condition.prompt, 'A red colored car.');
    });
  });
});

/** Every payload of a workflow's history, as bytes: what Temporal stores of it. */
async function historyBytes(client: Awaited<ReturnType<typeof withTemporal>>['env']['client'], workflowId: string): Promise<Buffer> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return Buffer.from(proto.api.history.v1.History.encode(history).finish());
}

describe('a DrawBench campaign on a text-to-image model, through Temporal', { timeout: 300_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: FakeModelServer;
  let fleet: Fleet;
  let worker: Worker;
  let running: Promise<void>;
  const taskQueue = uniqueId('t2i');

  before(async () => {
    installQuietRuntime('ERROR');
    [temporal, server] = await Promise.all([withTemporal(), serveFakeModel(tinyTextModelDescription(), { scorer: hashScore })]);
    fleet = new Fleet([server.address], { callDeadlineMs: 10_000 });
    worker = await createSearchWorker({ connection: temporal.env.nativeConnection, fleet, taskQueue });
    running = worker.run();
  });
  after(async () => {
    worker?.shutdown();
    await running;
    fleet?.close();
    await server?.close();
    await temporal?.stop();
  });

  it('writes PNGs and no-search baselines to its folder, scores cells on the PNGs, keeps them out of every history, and shows them in the report', async () => {
    const dir = tempDir('t2i-campaign');
    // Euler, 4 steps: a generation is 4 NFEs. Random at 12 pays for 2 candidates and the final generation;
    // zero-order (n = 2) at 12 for a pivot, 1 neighbour and the final one.
    const spec = {
      name: 'drawbench-tiny',
      model: 'tiny-flux',
      dataset: { kind: 'drawbench', path: DRAWBENCH, limit: 2 },
      grid: { algorithms: ['random', { name: 'zero-order', n: 2 }], verifiers: ['clip-score,aesthetic'], budgets: [12, 24] },
      evaluation: ['clip-score', 'aesthetic'],
      seeds: [0],
      concurrency: 4,
      results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') },
    };
    const input = resolveCampaign(spec, TEXT_MODEL, dir);
    const handle = await startCampaign(temporal.env.client, input, { taskQueue });
    const progress = await handle.result();
    assert.equal(progress.done, 8);

    const store = await openStore(input.store);
    const records = await store.searches(input.campaignId).finally(() => store.close());
    assert.equal(records.length, 8);
    for (const r of records) {
      assert.equal(r.status, 'done');
      assert.deepEqual(r.sample, [], 'no latent stored for an image model');
      assert.deepEqual(Object.keys(r.evaluation).sort(), ['aesthetic', 'clip-score']);
      const png = readFileSync(samplePath(input.folder, r.workflowId, 'png'));
      assert.ok(png.subarray(0, 8).equals(PNG_SIGNATURE));
    }
    assert.deepEqual(readdirSync(path.join(input.folder, 'samples')).filter((f) => f.endsWith('.svg')), [], 'no SVG of a latent');
    for (const item of input.items) {
      assert.ok(existsSync(baselinePath(input.folder, item.id, 0, 'png')), `a baseline for ${item.id}`);
      const scores = JSON.parse(readFileSync(baselinePath(input.folder, item.id, 0, 'json'), 'utf8'));
      assert.deepEqual(Object.keys(scores.evaluation).sort(), ['aesthetic', 'clip-score']);
      assert.equal(scores.nfe, 4);
    }
    // The baselines: one batch per prompt, the noise random search draws first, with the default sampler.
    const baselines = server.evaluations.filter((e) => e.candidates.every((c: any) => c.id.startsWith('baseline-')));
    assert.equal(baselines.length, 2);
    // Four cells of two prompts each, every one scored on its PNGs.
    assert.equal(server.populations.length, 4);
    for (const p of server.populations) {
      assert.equal(p.samples.length, 2);
      for (const s of p.samples) assert.ok(Buffer.from(s.image).subarray(0, 8).equals(PNG_SIGNATURE));
    }

    const children = records.map((r) => r.workflowId);
    for (const id of [input.campaignId, ...children]) {
      const bytes = await historyBytes(temporal.env.client, id);
      assert.equal(bytes.indexOf(PNG_SIGNATURE.subarray(1, 4)), -1, `raw PNG bytes in the history of ${id}`);
      assert.equal(bytes.indexOf('iVBORw0KGgo'), -1, `a base64 PNG in the history of ${id}`);
      assert.equal(bytes.indexOf('"0":137,"1":80'), -1, `a PNG as a JSON array in the history of ${id}`);
    }

    const report = await writeCampaignReport(input.campaignId, input.store, path.join(dir, 'elsewhere', 'report.html'));
    const html = readFileSync(report, 'utf8');
    // Per prompt: the baseline, then random and zero-order at 12 and 24 NFEs.
    assert.equal((html.match(/<img src="data:image\/png;base64,/g) ?? []).length, 2 * (1 + 4));
    assert.equal((html.match(/<figure class="pic baseline">/g) ?? []).length, 2);
    assert.ok(html.includes('A red colored car.') && html.includes('no search'));
    assert.ok(html.includes('CLIP-FID: Fréchet distance of CLIP image embeddings'), 'the server\'s CLIP-FID, stored and shown');
    const first = records.find((r) => r.itemId === input.items[0].id)!;
    assert.ok(html.includes(readFileSync(samplePath(input.folder, first.workflowId, 'png')).toString('base64')), 'the file\'s own bytes, embedded');
    assert.doesNotMatch(html, /\b(src|href)\s*=\s*["']?\s*(https?:|file:|\.\.?\/|samples\/)/i, 'nothing linked: the report opens on its own');
  });
});
