// End to end with real parts at every joint: a Temporal dev server, the Python model server over gRPC,
// and a worker running the bundled workflow code.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchProgress, SearchResult } from '../src/search/run';
import type { SearchSpec } from '../src/search/spec';
import { startSearch } from '../src/temporal/client';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { progressQuery, setBudgetUpdate, stopSignal } from '../workflows/search';
import { SEARCH_ATTRIBUTES } from '../src/temporal/search-attributes';
import { fleetWait } from '../src/temporal/waiting';
import type { ModelInfo } from '../src/search/types';
import { spawnWorker, stopChild, stopServer, uniqueId, waitUntil, withModelServer, withTemporal } from './helpers';

function spec(overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier'], budgetNfe: 2000, seed: 7, ...overrides };
}

function causes(error: Error | undefined): string {
  const messages: string[] = [];
  for (let e: Error | undefined = error; e; e = e.cause as Error | undefined) messages.push(e.message);
  return messages.join(' <- ');
}

function waitForRound(handle: WorkflowHandle, round: number): Promise<SearchProgress> {
  return waitUntil(`round ${round}`, async () => {
    const progress = await handle.query(progressQuery);
    return progress && progress.round >= round ? progress : null;
  });
}

/** A generation's NFEs with the model's default sampler: Heun 2s - 1 (its last step is Euler), Euler s. */
function generationNfe(model: ModelInfo): number {
  return model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
}

function sameOutcome(a: SearchResult, b: SearchResult): void {
  assert.deepEqual(a.best, b.best);
  assert.deepEqual({ ...a.nfe, executed: 0 }, { ...b.nfe, executed: 0 });
  assert.equal(a.candidates, b.candidates);
}

describe('search through Temporal, gRPC and the model server', { timeout: 600_000 }, () => {
  let env: TestWorkflowEnvironment;
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let fleet: Fleet;
  let worker: Worker;
  let running: Promise<void>;
  let secondWorker: ChildProcess;
  let model: ModelInfo;
  const taskQueue = uniqueId('it');

  before(async () => {
    installQuietRuntime('ERROR');
    [temporal, server] = await Promise.all([withTemporal(), withModelServer()]);
    env = temporal.env;
    fleet = new Fleet([server.address], { callDeadlineMs: 10_000 });
    model = await fleet.describe('gmm');
    worker = await createSearchWorker({ connection: env.nativeConnection, fleet, taskQueue });
    running = worker.run();
    // A second worker process on the same task queue: rounds and activities land on either, and results must not care.
    secondWorker = spawnWorker(temporal.address, server.address, taskQueue);
  });

  after(async () => {
    await stopChild(secondWorker);
    worker?.shutdown();
    await running;
    fleet?.close();
    await stopServer(server);
    await temporal?.stop();
  });

  it('completes a search and agrees with the in-process driver; a repeat gives the identical result', async () => {
    const handle = await startSearch(env.client, spec(), { taskQueue, workflowId: uniqueId('search') });
    const viaTemporal = await handle.result();
    const g = generationNfe(model);
    const candidates = Math.floor((2000 - g) / g);
    assert.equal(viaTemporal.candidates, candidates);
    assert.equal(viaTemporal.nfe.total, (candidates + 1) * g);
    assert.ok(viaTemporal.verifierSeconds > 0);
    assert.equal(viaTemporal.best.score, viaTemporal.best.searchScore, 'final generation with the search sampler reproduces the score');

    const inProcess = await runLocalSearch(spec(), fleet);
    sameOutcome(viaTemporal, inProcess);

    const again = await (await startSearch(env.client, spec(), { taskQueue, workflowId: uniqueId('search') })).result();
    sameOutcome(viaTemporal, again);
    assert.ok(again.nfe.executed < again.nfe.total, 'the server cache served the repeat');
  });

  it('answers a progress query in the middle of a search', async () => {
    const long = spec({ budgetNfe: 12_000, algorithm: { name: 'random', roundSize: 8 }, seed: 11 });
    const handle = await startSearch(env.client, long, { taskQueue, workflowId: uniqueId('progress') });
    const progress = await waitForRound(handle, 3);
    assert.equal(progress.budget, 12_000);
    assert.ok(progress.nfeSpent > 0 && progress.nfeSpent < 12_000, `spent ${progress.nfeSpent}`);
    assert.ok(progress.best && Number.isFinite(progress.best.score));
    const result = await handle.result();
    assert.ok(result.rounds > progress.round);
  });

  it('waits out a model server that is killed in the middle, says so, and finishes when it is back', async () => {
    // 200 rounds: long enough to be killed in the middle although local activities chain them without round trips.
    const long = spec({ budgetNfe: 12_000, algorithm: { name: 'fk', k: 16 }, seed: 23, searchSampler: { steps: 400 } });
    const handle = await startSearch(env.client, long, { taskQueue, workflowId: uniqueId('restart') });
    await waitForRound(handle, 3);
    const port = Number(server.address.split(':')[1]);
    await stopServer(server, 'SIGKILL');
    const wait = await waitUntil('the search to say it waits for model servers', () => fleetWait(handle), 30_000, 200);
    assert.equal(wait.activity, 'evaluateBatch');
    assert.match(wait.lastFailure, /UNAVAILABLE/);
    // Retried without an attempt limit: an outage of any length pauses the search.
    const { raw } = await handle.describe();
    assert.equal(raw.pendingActivities?.[0]?.maximumAttempts ?? 0, 0);
    server = await withModelServer([], port);
    const result = await handle.result();
    // The restarted server lost every state: the particles were sent again whole, and the result is the same.
    sameOutcome(result, await runLocalSearch(long, fleet));
    assert.equal(await fleetWait(handle).catch(() => null), null);
  });

  it('gives every algorithm the same result through Temporal, in-process, with another max batch and across continue-as-new', async () => {
    const small = await withModelServer(['--max-batch', '5']);
    const smallFleet = new Fleet([small.address]);
    try {
      const specs: SearchSpec[] = [
        spec({ algorithm: { name: 'zero-order', n: 4, t: 0.9, restart: true }, budgetNfe: 400, verifiers: ['gmm-classifier', 'gmm-oracle'] }),
        spec({ algorithm: { name: 'paths', n: 2, m: 3 }, budgetNfe: 400 }),
        spec({ algorithm: { name: 'fk', k: 4, resampling: 'multinomial' }, budgetNfe: 400, verifiers: ['gmm-oracle'] }),
      ];
      for (const s of specs) {
        const viaTemporal = await (await startSearch(env.client, s, { taskQueue, workflowId: uniqueId(s.algorithm.name) })).result();
        const continued = await (
          await startSearch(env.client, s, { taskQueue, workflowId: uniqueId(`${s.algorithm.name}-can`), continueAsNewEveryRounds: 1 })
        ).result();
        sameOutcome(viaTemporal, continued);
        sameOutcome(viaTemporal, await runLocalSearch(s, fleet));
        sameOutcome(viaTemporal, await runLocalSearch(s, smallFleet));
        assert.ok(viaTemporal.nfe.total <= s.budgetNfe);
        assert.deepEqual(Object.keys(viaTemporal.best.scores).sort(), [...s.verifiers].sort());
      }
    } finally {
      smallFleet.close();
      await stopServer(small);
    }
  });

  it('stops on a signal with the best so far, and takes a budget update unless it is below what is spent', async () => {
    // Rounds chain as local activities, and a signal or update lands only between workflow tasks (every
    // 1.6 s while they chain): a budget that lasts a while, so the stop comes well before it is spent.
    const long = spec({ budgetNfe: 400_000, algorithm: { name: 'random', roundSize: 8 }, seed: 31 });
    const handle = await startSearch(env.client, long, { taskQueue, workflowId: uniqueId('control') });
    await waitForRound(handle, 3);
    await assert.rejects(handle.executeUpdate(setBudgetUpdate, { args: [19] }), (error: Error) => {
      assert.match(causes(error), /budget: 19 NFEs is below what is spent or committed/);
      return true;
    });
    const raised = await handle.executeUpdate(setBudgetUpdate, { args: [500_000] });
    assert.equal(raised.budget, 500_000);
    await handle.signal(stopSignal);
    const result = await handle.result();
    assert.equal(result.stopped, true);
    assert.equal(result.budget.nfe, 500_000);
    assert.ok(result.nfe.total < 400_000, `stopped early, spent ${result.nfe.total}`);
    assert.equal(result.nfe.final, generationNfe(model));
  });

  it('keeps search attributes current, so searches can be filtered', async () => {
    const s = spec({ algorithm: { name: 'paths', n: 2, m: 2 }, seed: 41 });
    const handle = await startSearch(env.client, s, { taskQueue, workflowId: uniqueId('indexed') });
    const result = await handle.result();
    const description = await handle.describe();
    assert.equal(description.typedSearchAttributes.get(SEARCH_ATTRIBUTES.algorithm), 'paths');
    assert.equal(description.typedSearchAttributes.get(SEARCH_ATTRIBUTES.nfeSpent), result.nfe.total);
    assert.equal(description.typedSearchAttributes.get(SEARCH_ATTRIBUTES.bestScore), result.best.searchScore);
  });

  it('fails fast, without retries, when the model is not hosted', async () => {
    const handle = await startSearch(env.client, spec({ model: 'flux' }), { taskQueue, workflowId: uniqueId('bad-model') });
    await assert.rejects(handle.result(), (error: WorkflowFailedError) => {
      assert.match(causes(error), /model "flux" is not hosted by the fleet/);
      return true;
    });
  });

  it('fails with every problem of a bad spec, without retries', async () => {
    const handle = await startSearch(env.client, spec({ budgetNfe: 20 }), { taskQueue, workflowId: uniqueId('bad-spec') });
    await assert.rejects(handle.result(), (error: WorkflowFailedError) => {
      assert.match(causes(error), /budget: 20 NFEs cannot pay for one candidate/);
      return true;
    });
  });
});
