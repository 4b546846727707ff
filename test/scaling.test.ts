// The paper's scaling behaviour on a real model server: for every search algorithm, more compute gives
// better final samples (Ma et al. 2025, Fig. 3 and 4; Singhal et al. 2025 for FK steering's particles).
// So that the test can fail, the winners are judged by a verifier the search never saw, computed here and
// not by the server: a quadratic discriminant (one Gaussian a class, fitted to 1,024 of the model's own
// samples of each class) scores log p(class | x) independently of the exact Bayes classifier the search
// uses (their scores correlate about 0.87 on the model's samples). And every compute level searches seeds
// of its own, so a larger budget never re-finds the candidates of a smaller one. The model server hosts
// the exact Gaussian-mixture diffusion model; class 3.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import type { ModelInfo } from '../src/search/types';
import { stopServer, withModelServer } from './helpers';

const SEARCHED_WITH = 'gmm-classifier';
const SEEDS_PER_LEVEL = 12;
const CLASS = 3;
const REFERENCE_PER_CLASS = 1024;

/** log N(x; mean, covariance) of a Gaussian fitted to samples, through a Cholesky factor. */
class FittedGaussian {
  private readonly mean: number[];
  private readonly lower: number[][];
  private readonly logNormalizer: number;

  constructor(samples: number[][]) {
    const n = samples.length;
    const d = samples[0].length;
    this.mean = Array.from({ length: d }, (_, j) => samples.reduce((sum, x) => sum + x[j], 0) / n);
    const cov = Array.from({ length: d }, (_, i) => Array.from({ length: d }, (_, j) => samples.reduce((sum, x) => sum + (x[i] - this.mean[i]) * (x[j] - this.mean[j]), 0) / (n - 1)));
    const lower = cov.map(() => new Array<number>(d).fill(0));
    for (let i = 0; i < d; i++) {
      for (let j = 0; j <= i; j++) {
        let sum = cov[i][j];
        for (let k = 0; k < j; k++) sum -= lower[i][k] * lower[j][k];
        lower[i][j] = i === j ? Math.sqrt(sum) : sum / lower[j][j];
      }
    }
    this.lower = lower;
    const logDet = 2 * lower.reduce((sum, row, i) => sum + Math.log(row[i]), 0);
    this.logNormalizer = -0.5 * (logDet + d * Math.log(2 * Math.PI));
  }

  logDensity(x: number[]): number {
    // Solve L z = x - mean; the quadratic form is |z|^2.
    const z: number[] = [];
    for (let i = 0; i < x.length; i++) {
      let sum = x[i] - this.mean[i];
      for (let k = 0; k < i; k++) sum -= this.lower[i][k] * z[k];
      z.push(sum / this.lower[i][i]);
    }
    return this.logNormalizer - 0.5 * z.reduce((sum, v) => sum + v * v, 0);
  }
}

/** log p(class | x) under one fitted Gaussian a class, equal priors. */
function discriminant(classes: FittedGaussian[], x: number[], label: number): number {
  const logs = classes.map((g) => g.logDensity(x));
  const top = Math.max(...logs);
  return logs[label] - (top + Math.log(logs.reduce((sum, l) => sum + Math.exp(l - top), 0)));
}

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

interface Level {
  label: string;
  algorithm: AlgorithmSpec;
  budgetNfe: number;
}


describe('scaling: more compute, better final samples by an independent verifier (real model server, class 3)', { timeout: 300_000 }, () => {
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let fleet: Fleet;
  let model: ModelInfo;
  /** A generation's NFEs with the default sampler: Heun 2s - 1, Euler s. */
  let g: number;
  let classes: FittedGaussian[];

  before(async () => {
    server = await withModelServer();
    fleet = new Fleet([server.address], { callDeadlineMs: 30_000 });
    model = await fleet.describe('gmm');
    g = model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
    // The model's own samples of every class, from noises no search below uses.
    classes = [];
    for (let label = 0; label < model.numClasses; label++) {
      const samples: number[][] = [];
      for (let first = 0; first < REFERENCE_PER_CLASS; first += model.maxBatch) {
        const evaluated = await fleet.evaluate({
          model: 'gmm',
          condition: { classLabel: label },
          verifiers: [],
          returnSamples: true,
          candidates: Array.from({ length: Math.min(model.maxBatch, REFERENCE_PER_CLASS - first) }, (_, i) => ({
            id: `reference-${label}-${first + i}`,
            lineage: { noise: { seed: 900_000 + REFERENCE_PER_CLASS * label + first + i, perturbations: [] }, ops: [{ solve: { sigmaFrom: model.sigmaMax, sigmaTo: 0, solver: model.defaultSolver as 'heun', steps: model.defaultSteps } }] },
            scoreXpred: false,
          })),
        });
        samples.push(...evaluated.outcomes.map((o) => o.sample!));
      }
      classes.push(new FittedGaussian(samples));
    }
  });

  after(async () => {
    fleet?.close();
    await stopServer(server);
  });

  /** The independent judge's score of a search's final sample. */
  async function judged(result: SearchResult): Promise<number> {
    const evaluated = await fleet.evaluate({
      model: 'gmm',
      condition: result.condition,
      verifiers: [],
      returnSamples: true,
      candidates: [{ id: 'judged', lineage: result.best.lineage, scoreXpred: false }],
    });
    const outcome = evaluated.outcomes[0];
    assert.ok(!outcome.error && outcome.sample, JSON.stringify(outcome.error));
    return discriminant(classes, outcome.sample!, CLASS);
  }

  /** Each level searches seeds of its own; returns the mean judged score per level. */
  async function sweep(levels: Level[]): Promise<number[]> {
    const means: number[] = [];
    for (const [i, level] of levels.entries()) {
      const scores: number[] = [];
      for (let s = 0; s < SEEDS_PER_LEVEL; s++) {
        const spec: SearchSpec = { model: 'gmm', condition: { classLabel: CLASS }, algorithm: level.algorithm, verifiers: [SEARCHED_WITH], budgetNfe: level.budgetNfe, seed: 1000 * (i + 1) + s };
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
