// What a user asks for (SearchSpec) and what it resolves to against the model a server describes
// (SearchPlan). Validation returns every problem at once, each saying what is wrong and what would be right.
import { MAX_SEED } from './seeds';
import { solveNfe } from './nfe';
import type { Condition, ModelInfo, SolveOp, SolverName } from './types';

export interface SamplerSpec {
  solver: SolverName;
  steps: number;
}

export interface RandomSearchParams {
  name: 'random';
  /** Number of noises; when absent, as many as the budget pays for. */
  n?: number;
  /** Candidates proposed per round: sets progress granularity, never the result. */
  roundSize?: number;
}

export type AlgorithmSpec = RandomSearchParams;

export interface SearchSpec {
  model: string;
  condition: Condition;
  algorithm: AlgorithmSpec;
  verifiers: string[];
  budgetNfe: number;
  seed: number;
  searchSampler?: Partial<SamplerSpec>;
  finalSampler?: Partial<SamplerSpec>;
}

export interface SearchPlan {
  spec: SearchSpec;
  sigmaMax: number;
  searchSampler: SamplerSpec;
  finalSampler: SamplerSpec;
  /** Cost of one full generation with the search sampler. */
  generationNfe: number;
  finalNfe: number;
  maxBatch: number;
}

export class SpecError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'SpecError';
  }
}

export function fullSolve(sigmaMax: number, sampler: SamplerSpec): SolveOp {
  return { sigmaFrom: sigmaMax, sigmaTo: 0, solver: sampler.solver, steps: sampler.steps };
}

function resolveSampler(
  requested: Partial<SamplerSpec> | undefined,
  model: ModelInfo,
  field: string,
  problems: string[],
): SamplerSpec {
  const solver = (requested?.solver ?? model.defaultSolver) as SolverName;
  const steps = requested?.steps ?? model.defaultSteps;
  if (!model.solvers.includes(solver)) {
    problems.push(`${field}.solver: "${solver}" is not offered by model ${model.model}; use one of ${model.solvers.join(', ')}`);
  }
  if (!Number.isInteger(steps) || steps < 1) {
    problems.push(`${field}.steps: ${steps} must be a whole number of at least 1`);
  }
  return { solver, steps };
}

function checkCondition(spec: SearchSpec, model: ModelInfo, problems: string[]): void {
  const { classLabel, guidanceScale } = spec.condition;
  const needsCondition = spec.verifiers.some(
    (name) => model.verifiers.find((v) => v.name === name)?.needsCondition,
  );
  if (classLabel === undefined) {
    if (needsCondition) problems.push(`class: verifier ${spec.verifiers.join(',')} scores against a class; give --class 0..${model.numClasses - 1}`);
  } else if (!Number.isInteger(classLabel) || classLabel < 0 || classLabel >= model.numClasses) {
    problems.push(`class: ${classLabel} is not a class of model ${model.model}; use a whole number from 0 to ${model.numClasses - 1}`);
  }
  if (guidanceScale !== undefined && !(Number.isFinite(guidanceScale) && guidanceScale >= 0)) {
    problems.push(`guidance: ${guidanceScale} must be a finite number >= 0`);
  }
}

function checkVerifiers(spec: SearchSpec, model: ModelInfo, problems: string[]): void {
  const hosted = model.verifiers.map((v) => v.name);
  if (spec.verifiers.length === 0) problems.push(`verifier: none given; use one of ${hosted.join(', ')}`);
  if (spec.verifiers.length > 1) problems.push(`verifier: ${spec.verifiers.join(',')} is an ensemble; give exactly one verifier`);
  for (const name of spec.verifiers) {
    if (!hosted.includes(name)) problems.push(`verifier: "${name}" is not hosted with model ${model.model}; use one of ${hosted.join(', ')}`);
  }
}

/** Resolves a spec against a model description; throws SpecError listing every problem. */
export function planSearch(spec: SearchSpec, model: ModelInfo): SearchPlan {
  const problems: string[] = [];
  if (spec.model !== model.model) problems.push(`model: "${spec.model}" is not the model described (${model.model})`);
  checkVerifiers(spec, model, problems);
  checkCondition(spec, model, problems);
  if (!Number.isInteger(spec.seed) || spec.seed < 0 || spec.seed > MAX_SEED) {
    problems.push(`seed: ${spec.seed} must be a whole number from 0 to ${MAX_SEED}`);
  }
  const searchSampler = resolveSampler(spec.searchSampler, model, 'searchSampler', problems);
  const finalSampler = resolveSampler(spec.finalSampler, model, 'finalSampler', problems);
  const plan: SearchPlan = {
    spec,
    sigmaMax: model.sigmaMax,
    searchSampler,
    finalSampler,
    generationNfe: solveNfe(fullSolve(model.sigmaMax, searchSampler)),
    finalNfe: solveNfe(fullSolve(model.sigmaMax, finalSampler)),
    maxBatch: model.maxBatch,
  };
  if (!Number.isInteger(spec.budgetNfe) || spec.budgetNfe < 1) {
    problems.push(`budget: ${spec.budgetNfe} must be a whole number of NFEs`);
  } else if (problems.length === 0) {
    const smallest = plan.finalNfe + plan.generationNfe;
    if (spec.budgetNfe < smallest) {
      problems.push(
        `budget: ${spec.budgetNfe} NFEs cannot pay for one candidate (${plan.generationNfe} NFEs) plus the final generation (${plan.finalNfe} NFEs); use --budget ${smallest} or more`,
      );
    }
  }
  if (problems.length > 0) throw new SpecError(problems);
  return plan;
}
