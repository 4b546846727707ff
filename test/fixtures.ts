import type { ModelInfo } from '../src/search/types';

/** The embedded model as its server describes it, for tests that need no server; override what a test varies. */
export function gmmModelInfo(overrides: Partial<ModelInfo> = {}): ModelInfo {
  return {
    model: 'gmm',
    latentShape: [16],
    sigmaMin: 0.02,
    sigmaMax: 40,
    process: 've',
    schedule: { kind: 'karras', rho: 7, shift: 1 },
    solvers: ['euler', 'heun', 'euler_ancestral'],
    maxBatch: 64,
    maxConcurrency: 8,
    verifiers: [
      { name: 'gmm-oracle', kind: 'oracle', needsCondition: true, xpredSigma: 0 },
      { name: 'gmm-classifier', kind: 'supervised', needsCondition: true, xpredSigma: 0 },
      { name: 'gmm-selfsup', kind: 'self-supervised', needsCondition: false, xpredSigma: 0.4 },
    ],
    defaultSolver: 'heun',
    defaultSteps: 28,
    numClasses: 10,
    defaultGuidanceScale: 1,
    takesPrompts: false,
    imageShape: [],
    ...overrides,
  };
}
