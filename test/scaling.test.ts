// The paper's scaling behaviour on a real model server: for every search algorithm, more compute gives
// better final samples (Ma et al. 2025, Fig. 3 and 4; Singhal et al. 2025 for FK steering's particles).
// So that the test can fail, the winners are judged by a verifier the search never saw (searched with
// the oracle log p(x | c), judged by the classifier log p(c | x)), and every compute level searches its
// own seeds, so a larger budget never re-finds the candidates of a smaller one. The model server hosts
// the exact Gaussian-mixture diffusion model; class 3.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import type { ModelInfo } from '../src/search/types';
import { stopServer, withModelServer } from './helpers';

const SEARCHED_WITH = 'gmm-oracle';
const JUDGED_BY = 'gmm-classifier';
const SEEDS_PER_LEVEL = 12;

interface Level {
  label: string;
  algorithm: AlgorithmSpec;
  budgetNfe: number;
}

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

describe('scaling: more compute, better final samples by an independent verifier (real model server, class 3)', { timeout: 300_000 }, () => {
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let fleet: Fleet;
  let model: ModelInfo;
  /** A generation's NFEs with the default sampler: Heun 2s - 1, Euler s. */
  let g: number;

  before(async () => {
    server = await withModelServer();
    fleet = new Fleet([server.address], { callDeadlineMs: 30_000 });
    model = await fleet.describe('gmm');
    g = model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
  });

  after(async () => {
    fleet?.close();
    await stopServer(server);
  });

  /** The judging verifier's score of a search's final sample. */
  async function judged(result: SearchResult): Promise<number> {
    const evaluated = await fleet.evaluate({
      model: 'gmm',
      condition: result.condition,
      verifiers: [JUDGED_BY],
      candidates: [{ id: 'judged', lineage: result.best.lineage, scoreXpred: false }],
    });
    const outcome = evaluated.outcomes[0];
    assert.ok(!outcome.error, JSON.stringify(outcome.error));
    return outcome.scores[JUDGED_BY];
  }

  /** Each level searches seeds of its own; returns the mean judged score per level. */
  async function sweep(levels: Level[]): Promise<number[]> {
    const means: number[] = [];
    for (const [i, level] of levels.entries()) {
      const scores: number[] = [];
      for (let s = 0; s < SEEDS_PER_LEVEL; s++) {
        const spec: SearchSpec = { model: 'gmm', condition: { classLabel: 3 }, algorithm: level.algorithm, verifiers: [SEARCHED_WITH], budgetNfe: level.budgetNfe, seed: 1000 * (i + 1) + s };
        const result = await runLocalSearch(spec, fleet);
        assert.equal(result.failedCandidates, 0, level.label);
        assert.ok(result.nfe.total <= level.budgetNfe, `${level.label}: spent ${result.nfe.total} of ${level.budgetNfe}`);
        scores.push(await judged(result));
      }
      means.push(mean(scores));
    }
    const report = levels.map((l, i) => `${l.label}: ${means[i].toFixed(4)}`).join(', ');
    for (let i = 1; i < means.length; i++) assert.ok(means[i] > means[i - 1], `the judged score should rise with the compute: ${report}`);
    return means;
  }

  it('random search: best of 1, 4 and 32 noises', async () => {
    await sweep([1, 4, 32].map((n) => ({ label: `N=${n}`, algorithm: { name: 'random' }, budgetNfe: (n + 1) * g })));
  });

  it('zero-order search: 1, 4 and 16 iterations of 4 neighbours', async () => {
    await sweep([1, 4, 16].map((iterations) => ({ label: `${iterations} iterations`, algorithm: { name: 'zero-order', n: 4 }, budgetNfe: (2 + 4 * iterations) * g })));
  });

  it('search over paths: N=1, M=2 against N=4, M=8', async () => {
    await sweep([
      { label: 'N=1 M=2', algorithm: { name: 'paths', n: 1, m: 2 }, budgetNfe: 100 * g },
      { label: 'N=4 M=8', algorithm: { name: 'paths', n: 4, m: 8 }, budgetNfe: 100 * g },
    ]);
  });

  it('FK steering: 1, 4 and 16 particles', async () => {
    await sweep([1, 4, 16].map((k) => ({ label: `k=${k}`, algorithm: { name: 'fk', k }, budgetNfe: k * model.defaultSteps })));
  });
});
