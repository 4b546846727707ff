// Failure paths against a real model server that injects faults (seeded, so runs repeat), through both
// drivers: every algorithm with every candidate failing, half of them failing, and only the neighbours
// (zero-order) or perturbed paths (paths) failing; a verifier that throws on one candidate; server-side
// bugs that must fail fast; overload that must be waited out. NFE accounting on hand-made failures is in
// test/failures.test.ts; here the counts that follow from the server's own reports are checked.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import type { ModelInfo } from '../src/search/types';
import { startSearch } from '../src/temporal/client';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { stopServer, uniqueId, withFaultyServer, withModelServer, withTemporal } from './helpers';

const BUDGET = 1200;
const ALGORITHMS: AlgorithmSpec[] = [
  { name: 'random' },
  { name: 'zero-order', n: 4 },
  { name: 'paths', n: 2, m: 3 },
  { name: 'fk', k: 8 },
];

function spec(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'gmm', condition: { classLabel: 3 }, algorithm, verifiers: ['gmm-classifier'], budgetNfe: BUDGET, seed: 5, ...overrides };
}

/** A generation's NFEs with the model's default sampler: Heun 2s - 1 (its last step is Euler), Euler s. */
function generationNfe(model: ModelInfo): number {
  return model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
}

interface Driver {
  name: string;
  run(spec: SearchSpec): Promise<SearchResult>;
}

describe('failure paths on a faulty model server, through both drivers', { timeout: 600_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let env: TestWorkflowEnvironment;
  const servers: Array<Awaited<ReturnType<typeof withModelServer>>> = [];
  const fleets: Fleet[] = [];
  const workers: Array<{ worker: Worker; running: Promise<void> }> = [];
  const drivers: Record<string, Driver[]> = {};
  let model: ModelInfo;

  /** A server with these faults, and the two drivers that search on it. */
  async function scenario(name: string, faults: object): Promise<void> {
    const server = await withFaultyServer(faults);
    servers.push(server);
    const fleet = new Fleet([server.address], { callDeadlineMs: 20_000 });
    fleets.push(fleet);
    const taskQueue = uniqueId(`faults-${name}`);
    const worker = await createSearchWorker({ connection: env.nativeConnection, fleet, taskQueue });
    workers.push({ worker, running: worker.run() });
    drivers[name] = [
      { name: 'in-process', run: (s) => runLocalSearch(s, fleet) },
      { name: 'Temporal', run: async (s) => (await startSearch(env.client, s, { taskQueue, workflowId: uniqueId(name) })).result() },
    ];
    model ??= await fleet.describe('gmm');
  }

  before(async () => {
    installQuietRuntime('ERROR');
    temporal = await withTemporal();
    env = temporal.env;
    await scenario('all', { seed: 1, rules: [{ fail: { code: 'INTERNAL', message: 'injected', stage: 'score' } }] });
    // Which half fails follows the state keys, so the seed is one where each algorithm's first round keeps a survivor.
    await scenario('half', { seed: 2, rules: [{ fraction: 0.5, fail: { code: 'INTERNAL', message: 'injected', stage: 'score' } }] });
    // What explores fails: zero-order's neighbours, the perturbed paths, FK's particles after their first
    // segment, and every random noise after the first.
    await scenario('neighbours', { seed: 1, rules: [{ match: { id: '^(zo-\\d|paths-\\d|fk-[1-9]|random-[1-9])' }, fail: { code: 'INTERNAL', message: 'injected', stage: 'score' } }] });
    await scenario('throws', { seed: 3, rules: [{ fraction: 0.25, raise: 'verifier' }] });
    await scenario('bug', { seed: 1, rules: [{ request_status: 'INTERNAL' }] });
    await scenario('overloaded', { seed: 2, rules: [{ fraction: 0.4, request_status: 'UNAVAILABLE' }] });
    await scenario('clean', { seed: 1, rules: [] });
  });

  after(async () => {
    for (const { worker } of workers) worker.shutdown();
    await Promise.all(workers.map((w) => w.running));
    for (const fleet of fleets) fleet.close();
    await Promise.all(servers.map((s) => stopServer(s)));
    await temporal?.stop();
  });

  for (const algorithm of ALGORITHMS) {
    it(`${algorithm.name}: every candidate failing ends the search with one clear message`, async () => {
      for (const driver of drivers.all) {
        await assert.rejects(driver.run(spec(algorithm)), (error: Error) => {
          const message = rootMessage(error);
          assert.match(message, /every one of the \d+ candidates failed, so there is no best noise \(first failure: INTERNAL: .*injected/, driver.name);
          return true;
        });
      }
    });

    it(`${algorithm.name}: half the candidates failing, the search ends within its budget with the same result through both drivers`, async () => {
      const [local, durable] = await Promise.all(drivers.half.map((d) => d.run(spec(algorithm))));
      for (const result of [local, durable]) {
        assert.ok(result.failedCandidates > 0 && result.failedCandidates < result.candidates, `${result.failedCandidates} of ${result.candidates} failed`);
        assert.ok(result.nfe.failed > 0 && result.nfe.failed <= result.nfe.search);
        assert.ok(result.nfe.total <= BUDGET, `spent ${result.nfe.total}`);
        assert.ok(result.nfe.executed <= BUDGET, `executed ${result.nfe.executed}`);
        if (algorithm.name === 'random') {
          // Each failed after its whole generation: charged in full.
          assert.equal(result.nfe.failed, result.failedCandidates * generationNfe(model));
          assert.equal(result.nfe.search, result.candidates * generationNfe(model));
        }
      }
      assert.deepEqual(durable.best, local.best);
      assert.deepEqual({ ...durable.nfe, executed: 0 }, { ...local.nfe, executed: 0 });
    });
  }

  it('zero-order: only the neighbours failing, the pivot wins after the budget is spent on them', async () => {
    const g = generationNfe(model);
    for (const driver of drivers.neighbours) {
      const result = await driver.run(spec({ name: 'zero-order', n: 4 }));
      const candidates = Math.floor((BUDGET - g) / g);
      assert.equal(result.best.candidateId, 'zo-pivot-0', driver.name);
      assert.deepEqual([result.candidates, result.failedCandidates], [candidates, candidates - 1], driver.name);
      assert.deepEqual({ ...result.nfe, executed: 0 }, { search: candidates * g, final: g, total: (candidates + 1) * g, executed: 0, failed: (candidates - 1) * g });
    }
  });

  it('paths: only the perturbed paths failing, nothing is scored and the search says so', async () => {
    for (const driver of drivers.neighbours) {
      await assert.rejects(driver.run(spec({ name: 'paths', n: 2, m: 3 })), (error: Error) => /no candidate could be scored \(6 of 8 failed\)/.test(rootMessage(error)));
    }
  });

  it('random: every noise after the first failing, the first one wins and the rest are charged', async () => {
    const g = generationNfe(model);
    const candidates = Math.floor((BUDGET - g) / g);
    for (const driver of drivers.neighbours) {
      const result = await driver.run(spec({ name: 'random' }));
      assert.deepEqual([result.best.candidateId, result.candidates, result.failedCandidates], ['random-0', candidates, candidates - 1], driver.name);
      assert.equal(result.nfe.failed, (candidates - 1) * g);
    }
  });

  it("FK: every particle failing after the first segment, the best of that segment is finished by one Euler step", async () => {
    for (const driver of drivers.neighbours) {
      const result = await driver.run(spec({ name: 'fk', k: 8 }));
      assert.match(result.best.candidateId, /^fk-0-/, driver.name);
      // Segment 0: 8 particles of 2 steps and the reward's x-prediction; segment 1 fails after 2 - 1 + 1 each.
      assert.deepEqual({ ...result.nfe, executed: 0 }, { search: 8 * 3 + 8 * 2, final: 1, total: 8 * 5 + 1, executed: 0, failed: 8 * 2 });
      const last = result.best.lineage.ops.at(-1)!;
      assert.ok('solve' in last && last.solve.solver === 'euler' && last.solve.steps === 1 && last.solve.sigmaTo === 0, JSON.stringify(last));
    }
  });

  it('a verifier that throws fails only the candidates it throws on, never the batch', async () => {
    const [local, durable] = await Promise.all(drivers.throws.map((d) => d.run(spec({ name: 'random' }, { budgetNfe: 600 }))));
    for (const result of [local, durable]) {
      assert.ok(result.failedCandidates > 0 && result.failedCandidates < result.candidates / 2 + 5, `${result.failedCandidates} of ${result.candidates}`);
    }
    assert.deepEqual(durable.best, local.best);
  });

  it('a server-side bug (INTERNAL) fails the search at once, without retries', async () => {
    for (const driver of drivers.bug) {
      const started = Date.now();
      await assert.rejects(driver.run(spec({ name: 'random' })), (error: Error) => /INTERNAL/.test(rootMessage(error)));
      assert.ok(Date.now() - started < 10_000, `${driver.name} took ${Date.now() - started} ms`);
    }
  });

  it('an overloaded server (UNAVAILABLE on 40% of calls) is waited out: the same result as a clean one', async () => {
    const clean = await drivers.clean[0].run(spec({ name: 'fk', k: 4 }));
    for (const driver of drivers.overloaded) {
      const result = await driver.run(spec({ name: 'fk', k: 4 }));
      assert.deepEqual(result.best, { ...clean.best, key: result.best.key }, driver.name);
      assert.equal(result.failedCandidates, 0);
    }
  });
});

function rootMessage(error: Error): string {
  const messages: string[] = [];
  for (let e: Error | undefined = error; e; e = e.cause as Error | undefined) messages.push(e.message);
  return messages.join(' <- ');
}
