// Plain data shared by the algorithms, the drivers and the fleet client. Everything here is
// JSON-serializable: it travels through Temporal history as is.

export interface Perturbation {
  seed: number;
  cosine: number;
}

/** An initial noise as a recipe: servers materialize it with a counter-based RNG. */
export interface NoiseRecipe {
  seed: number;
  perturbations: Perturbation[];
}

export type SolverName = 'euler' | 'heun';

export interface SolveOp {
  sigmaFrom: number;
  sigmaTo: number;
  solver: SolverName;
  steps: number;
}

export interface RenoiseOp {
  sigmaFrom: number;
  sigmaTo: number;
  seed: number;
}

export type Op = { solve: SolveOp } | { renoise: RenoiseOp };

/** A trajectory state: the noise materialized at sigma_max, then each op in order. */
export interface Lineage {
  noise: NoiseRecipe;
  ops: Op[];
}

export interface Condition {
  classLabel?: number;
  prompt?: string;
  guidanceScale?: number;
}

export interface Candidate {
  id: string;
  lineage: Lineage;
  /** Score the clean x-prediction of the last state (one extra NFE) rather than the state. */
  scoreXpred: boolean;
  /** Leading ops already paid for by an earlier evaluation of a parent state. */
  paidOps?: number;
}

export interface VerifierInfo {
  name: string;
  kind: string;
  needsCondition: boolean;
  xpredSigma: number;
}

/** What a model server says of the model it hosts. */
export interface ModelInfo {
  model: string;
  latentShape: number[];
  sigmaMin: number;
  sigmaMax: number;
  solvers: string[];
  maxBatch: number;
  maxConcurrency: number;
  verifiers: VerifierInfo[];
  defaultSolver: string;
  defaultSteps: number;
  numClasses: number;
  defaultGuidanceScale: number;
}

export interface CandidateError {
  code: string;
  message: string;
}

export interface CandidateOutcome {
  id: string;
  scores: Record<string, number>;
  nfeLogical: number;
  nfeExecuted: number;
  error?: CandidateError;
  /** The scored sample, when the request asked for samples. */
  sample?: number[];
}

export interface VerifierTiming {
  verifier: string;
  calls: number;
  seconds: number;
}

export interface BatchRequest {
  model: string;
  condition: Condition;
  verifiers: string[];
  candidates: Candidate[];
  returnSamples?: boolean;
}

export interface PopulationMetrics {
  frechetDistance: number;
  inceptionScore: number;
  samples: number;
  referenceSamples: number;
}

export interface BatchOutcome {
  outcomes: CandidateOutcome[];
  verifierTimings: VerifierTiming[];
  serverId: string;
}
