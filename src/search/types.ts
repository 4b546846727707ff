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

export type SolverName = 'euler' | 'heun' | 'euler_ancestral';

export interface SolveOp {
  sigmaFrom: number;
  sigmaTo: number;
  solver: SolverName;
  steps: number;
  /** euler_ancestral only: the stream its per-step noises are drawn from. */
  seed?: number;
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
  /** With a prompt: what classifier-free guidance steers away from (unset: the empty prompt). */
  negativePrompt?: string;
  /** Unset: the model's default; 0: unconditional sampling. */
  guidanceScale?: number;
}

/** A state (or a noise) a server evaluated earlier, by the key it returned for it. */
export interface StateRef {
  key: string;
  /** The server scored this state's x-prediction: a solve from it reuses that denoiser evaluation. */
  xpred?: boolean;
}

/**
 * What a batch carries for one candidate. Without a base, `lineage` is the whole lineage; with one, only
 * what follows it (perturbations to add to a base noise, or the ops after a base state), so a request
 * never grows with the length of a search.
 */
export interface WireCandidate {
  id: string;
  base?: StateRef;
  lineage: Lineage;
  /** Score the clean x-prediction of the last state (one extra NFE) rather than the state. */
  scoreXpred: boolean;
}

/**
 * A candidate as an algorithm proposes it: what travels, plus its state's lineage in the algorithm's own
 * compact form (`recipe`), from which the whole lineage is rebuilt when a server lost the base. The recipe
 * never travels to a server.
 */
export interface Candidate extends WireCandidate {
  recipe?: unknown;
}

export interface VerifierInfo {
  name: string;
  kind: string;
  needsCondition: boolean;
  xpredSigma: number;
}

export type ScheduleKind = 'karras' | 'shifted';

/**
 * How a model's solves space their steps, as a map from a normalised noise level l in [0, 1] to sigma
 * (src/search/schedule.ts): "karras" by rho, "shifted" by shift.
 */
export interface NoiseSchedule {
  kind: ScheduleKind;
  rho: number;
  shift: number;
}

/** "ve": a state is x0 + sigma * n; "flow": (1 - sigma) * x0 + sigma * n (rectified flow, sigma_max = 1). */
export type NoiseProcess = 've' | 'flow';

/** What a model server says of the model it hosts. */
export interface ModelInfo {
  model: string;
  latentShape: number[];
  sigmaMin: number;
  sigmaMax: number;
  process: NoiseProcess;
  schedule: NoiseSchedule;
  solvers: string[];
  maxBatch: number;
  maxConcurrency: number;
  verifiers: VerifierInfo[];
  defaultSolver: string;
  defaultSteps: number;
  numClasses: number;
  defaultGuidanceScale: number;
  /** A text-to-image model: its conditions are prompts, not classes. */
  takesPrompts: boolean;
  /** [3, H, W] of a decoded sample; empty when the sample is the latent itself. */
  imageShape: number[];
}

export interface CandidateError {
  code: string;
  message: string;
}

export interface CandidateOutcome {
  id: string;
  scores: Record<string, number>;
  /** The candidate's own logical NFEs as the server counts them; for a failure, the work done before it failed. */
  nfeLogical: number;
  nfeExecuted: number;
  error?: CandidateError;
  /** The scored sample, when the request asked for samples (a latent model's). */
  sample?: number[];
  /**
   * An image model's decoded sample as PNG bytes, when the request asked for samples. Only activities see
   * it: it never travels through a workflow's history (packing leaves it out).
   */
  image?: Uint8Array;
  /** The final state's key (before any x-prediction): what a later candidate names as its base. */
  key?: string;
  /** The candidate's noise's key, perturbations applied. */
  noiseKey?: string;
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
  candidates: WireCandidate[];
  returnSamples?: boolean;
  /** Which key of each candidate the algorithm continues from (default 'state'): only that one comes back through Temporal. */
  keys?: KeyKind;
}

/** The key an algorithm keeps of an evaluated candidate: its final state's, its noise's, or none. */
export type KeyKind = 'state' | 'noise' | 'none';

export interface PopulationMetrics {
  frechetDistance: number;
  inceptionScore: number;
  samples: number;
  referenceSamples: number;
  /** CLIP-FID: only from an image model's server started with a CLIP reference (--clip-fid). */
  clipFrechetDistance?: number;
}

export interface BatchOutcome {
  outcomes: CandidateOutcome[];
  verifierTimings: VerifierTiming[];
  /**
   * This batch's share of the server's denoising time (solves and x-predictions) in the merged run it joined;
   * absent in results recorded before servers measured it, which count as 0.
   */
  denoiseSeconds?: number;
  /** The server that answered (not carried through Temporal: nothing decides on it). */
  serverId?: string;
}
