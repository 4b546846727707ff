// What a user asks for (SearchSpec) and what it resolves to against the model a server describes
// (SearchPlan). Validation returns every problem at once, each saying what is wrong and what would be right.
import { MAX_SEED } from './seeds';
import { solveNfe } from './nfe';
import type { Condition, ModelInfo, NoiseSchedule, SolveOp, SolverName } from './types';

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

export interface ZeroOrderParams {
  name: 'zero-order';
  /** Neighbours per iteration (the paper's N). */
  n?: number;
  /** Cosine similarity of a neighbour to the pivot, in (0, 1): the step size (the paper's lambda). */
  t?: number;
  /** Start again from a fresh pivot when no neighbour beats the pivot. */
  restart?: boolean;
}

export interface PathsParams {
  name: 'paths';
  /** Paths kept each round (the paper's N). */
  n?: number;
  /** Forward-noise perturbations per kept path (the paper's M). */
  m?: number;
  /** The paper's sigma_start, delta_f and delta_b, as normalised noise levels in [0, 1] (src/search/schedule.ts). */
  sigmaStart?: number;
  deltaF?: number;
  deltaB?: number;
  /** Solver steps of each backward solve from sigma + delta_f to sigma + delta_f - delta_b. */
  backwardSteps?: number;
}

export type FkPotential = 'max' | 'difference' | 'sum';
export type FkResampling = 'multinomial' | 'adaptive';

export interface FkParams {
  name: 'fk';
  /** Particles (Singhal et al.'s k). */
  k?: number;
  /** Potential sharpness lambda. */
  lambda?: number;
  potential?: FkPotential;
  resampling?: FkResampling;
  /** Sampler steps between resampling points. */
  resampleEvery?: number;
}

export type AlgorithmSpec = RandomSearchParams | ZeroOrderParams | PathsParams | FkParams;
export type AlgorithmName = AlgorithmSpec['name'];

export interface SearchSpec {
  model: string;
  condition: Condition;
  algorithm: AlgorithmSpec;
  verifiers: string[];
  budgetNfe: number;
  /**
   * A budget of fleet seconds (the servers' measured denoising and verifier time, not wall time): the search
   * stops proposing when its next round is predicted to exceed it. The NFE budget bounds it still.
   */
  budgetSeconds?: number;
  seed: number;
  searchSampler?: Partial<SamplerSpec>;
  finalSampler?: Partial<SamplerSpec>;
}

export interface SearchPlan {
  spec: SearchSpec;
  sigmaMin: number;
  sigmaMax: number;
  /** How the model's solves space their steps: the map between noise levels and sigmas. */
  schedule: NoiseSchedule;
  /** The solvers the model offers. */
  solvers: string[];
  searchSampler: SamplerSpec;
  finalSampler: SamplerSpec;
  /** Cost of one full generation with the search sampler. */
  generationNfe: number;
  /** Cost of the final generation; 0 for algorithms whose winner already is a finished sample. */
  finalNfe: number;
  maxBatch: number;
}

export const SCHEDULE_KINDS = ['karras', 'shifted'];

/** The model's schedule; a description recorded before models said theirs (in a workflow history) is Karras. */
export function scheduleOf(model: ModelInfo): NoiseSchedule {
  return model.schedule ?? { kind: 'karras', rho: (model as unknown as { rho: number }).rho, shift: 1 };
}

/** Solvers that map a noise to one sample: a search sampler must be one (FK steering brings its own). */
export const DETERMINISTIC_SOLVERS: string[] = ['euler', 'heun'];

/** A problem a user reads is one line of at most this many characters, whatever value it quotes. */
export const MAX_PROBLEM_CHARS = 1000;

/**
 * One line: a value quoted in a problem (a prompt, a verifier name, a file's line) may hold line breaks, and
 * may be megabytes long; the middle goes, so the field named at the start and the fix at the end stay.
 */
function oneLine(problem: string): string {
  const line = problem.replace(/[\r\n\u2028\u2029]+/g, ' ');
  if (line.length <= MAX_PROBLEM_CHARS) return line;
  const keep = (MAX_PROBLEM_CHARS - 3) / 2;
  return `${line.slice(0, Math.ceil(keep))} … ${line.slice(-Math.floor(keep))}`;
}

export class SpecError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    const lines = problems.map(oneLine);
    super(lines.join('\n'));
    this.problems = lines;
    this.name = 'SpecError';
  }
}

/**
 * A value as a problem quotes it: text and numbers as JSON (escapes show a line break), anything else by
 * its kind, so that a hostile value (a list nested 20,000 deep, a megabyte of text) is never rendered whole.
 */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return `a list of ${value.length}`;
  return typeof value === 'object' ? 'a mapping' : `a ${typeof value}`;
}

type ParamType = 'number' | 'boolean' | 'string';

/** Every algorithm's parameters and their JSON types: ranges are each algorithm's own `validate`. */
export const ALGORITHM_PARAMETERS: Record<AlgorithmName, Record<string, ParamType>> = {
  random: { n: 'number', roundSize: 'number' },
  'zero-order': { n: 'number', t: 'number', restart: 'boolean' },
  paths: { n: 'number', m: 'number', sigmaStart: 'number', deltaF: 'number', deltaB: 'number', backwardSteps: 'number' },
  fk: { k: 'number', lambda: 'number', potential: 'string', resampling: 'string', resampleEvery: 'number' },
};

const isMapping = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * What is wrong with an algorithm as a user wrote it (a name and parameters), before its ranges are checked:
 * an unknown name, a parameter of the wrong type, a parameter the algorithm does not have (a typo would
 * otherwise be silently ignored). `field` prefixes each problem.
 */
export function algorithmShapeProblems(algorithm: unknown, field: string): string[] {
  const names = Object.keys(ALGORITHM_PARAMETERS);
  const name = isMapping(algorithm) ? algorithm.name : undefined;
  if (typeof name !== 'string' || !Object.hasOwn(ALGORITHM_PARAMETERS, name)) {
    return [`${field}: ${isMapping(algorithm) ? describeValue(name) : describeValue(algorithm)} is unknown; use one of ${names.join(', ')}`];
  }
  const known = ALGORITHM_PARAMETERS[name as AlgorithmName];
  const problems: string[] = [];
  for (const [key, value] of Object.entries(algorithm as Record<string, unknown>)) {
    if (key === 'name' || value === undefined) continue;
    if (!Object.hasOwn(known, key)) {
      problems.push(`${field}.${key}: not a parameter of ${name}; use ${Object.keys(known).join(', ')}`);
    } else if (typeof value !== known[key]) {
      problems.push(`${field}.${key}: ${describeValue(value)} must be a ${known[key]}`);
    }
  }
  return problems;
}

const SPEC_FIELDS = ['model', 'condition', 'algorithm', 'verifiers', 'budgetNfe', 'budgetSeconds', 'seed', 'searchSampler', 'finalSampler'];
const CONDITION_FIELDS: Record<string, ParamType> = { classLabel: 'number', prompt: 'string', negativePrompt: 'string', guidanceScale: 'number' };
const SAMPLER_FIELDS: Record<string, ParamType> = { solver: 'string', steps: 'number' };

function fieldsProblems(value: unknown, field: string, types: Record<string, ParamType>): string[] {
  if (value === undefined) return [];
  if (!isMapping(value)) return [`${field}: ${describeValue(value)} must be a mapping of ${Object.keys(types).join(', ')}`];
  return Object.entries(value).flatMap(([key, v]): string[] => {
    if (v === undefined) return [];
    if (!Object.hasOwn(types, key)) return [`${field}.${key}: not a field; use ${Object.keys(types).join(', ')}`];
    return typeof v === types[key] ? [] : [`${field}.${key}: ${describeValue(v)} must be a ${types[key]}`];
  });
}

/**
 * What is wrong with the shape of a search spec (a workflow's input may come from any client): every field
 * of its JSON type, no unknown field. Values are checked against the model afterwards, by planSearch.
 */
export function searchSpecShapeProblems(spec: unknown): string[] {
  if (!isMapping(spec)) return [`spec: ${describeValue(spec)} must be a mapping with ${SPEC_FIELDS.join(', ')}`];
  const problems: string[] = [];
  for (const key of Object.keys(spec)) {
    if (!SPEC_FIELDS.includes(key)) problems.push(`${key}: not a field of a search spec; use ${SPEC_FIELDS.join(', ')}`);
  }
  if (typeof spec.model !== 'string') problems.push(`model: ${describeValue(spec.model)} must be the name of a model`);
  if (spec.condition === undefined) problems.push('condition: missing; give a mapping, {} for an unconditional search');
  problems.push(...fieldsProblems(spec.condition, 'condition', CONDITION_FIELDS));
  problems.push(...algorithmShapeProblems(spec.algorithm, 'algorithm'));
  if (!Array.isArray(spec.verifiers) || !spec.verifiers.every((v) => typeof v === 'string')) {
    problems.push(`verifiers: ${describeValue(spec.verifiers)} must be a list of verifier names`);
  }
  for (const key of ['budgetNfe', 'seed']) {
    if (typeof spec[key] !== 'number') problems.push(`${key}: ${describeValue(spec[key])} must be a whole number`);
  }
  if (spec.budgetSeconds !== undefined) problems.push(...budgetSecondsProblems(spec.budgetSeconds));
  problems.push(...fieldsProblems(spec.searchSampler, 'searchSampler', SAMPLER_FIELDS));
  problems.push(...fieldsProblems(spec.finalSampler, 'finalSampler', SAMPLER_FIELDS));
  return problems;
}

/** What is wrong with a budget of fleet seconds, one line; [] when nothing is. */
export function budgetSecondsProblems(budgetSeconds: unknown): string[] {
  if (typeof budgetSeconds === 'number' && Number.isFinite(budgetSeconds) && budgetSeconds > 0) return [];
  return [`budgetSeconds: ${describeValue(budgetSeconds)} must be a finite number of seconds above 0 (the servers' measured denoising and verifier time)`];
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
  const deterministic = model.solvers.filter((s) => DETERMINISTIC_SOLVERS.includes(s));
  if (!deterministic.includes(solver)) {
    problems.push(`${field}.solver: "${solver}" is not a deterministic solver of model ${model.model}; use one of ${deterministic.join(', ')}`);
  }
  if (!Number.isInteger(steps) || steps < 1) {
    problems.push(`${field}.steps: ${steps} must be a whole number of at least 1`);
  }
  return { solver, steps };
}

/** What is wrong with a condition for this model and these verifiers, one line each; [] when nothing is. */
export function conditionProblems(condition: Condition, verifiers: string[], model: ModelInfo): string[] {
  const problems: string[] = [];
  const { classLabel, prompt, negativePrompt, guidanceScale } = condition;
  const needing = verifiers.filter((name) => model.verifiers.find((v) => v.name === name)?.needsCondition);
  if (model.takesPrompts) {
    if (classLabel !== undefined) {
      problems.push(`class: model ${model.model} is a text-to-image model and takes no class; give a prompt (--prompt "...")`);
    } else if (prompt === undefined && needing.length > 0) {
      problems.push(`prompt: verifier ${needing.join(',')} scores against a prompt; give --prompt "..."`);
    } else if (prompt !== undefined && typeof prompt !== 'string') {
      problems.push(`prompt: ${JSON.stringify(prompt)} is not text`);
    }
    if (negativePrompt !== undefined && prompt === undefined && classLabel === undefined) {
      problems.push('negativePrompt: a negative prompt steers away from what a prompt asks for; give --prompt too');
    }
  } else if (prompt !== undefined || negativePrompt !== undefined) {
    const what = prompt !== undefined ? 'prompt' : 'negativePrompt';
    problems.push(
      model.numClasses > 0
        ? `${what}: model ${model.model} is class-conditional (${model.numClasses} classes) and takes no text prompt; give a class from 0 to ${model.numClasses - 1}`
        : `${what}: model ${model.model} takes no text prompt; leave it out`,
    );
  } else if (classLabel === undefined) {
    if (needing.length > 0) problems.push(`class: verifier ${verifiers.join(',')} scores against a class; give --class 0..${model.numClasses - 1}`);
  } else if (!Number.isInteger(classLabel) || classLabel < 0 || classLabel >= model.numClasses) {
    problems.push(`class: ${classLabel} is not a class of model ${model.model}; use a whole number from 0 to ${model.numClasses - 1}`);
  }
  if (guidanceScale !== undefined && !(Number.isFinite(guidanceScale) && guidanceScale >= 0)) {
    problems.push(`guidance: ${guidanceScale} must be a finite number >= 0`);
  }
  return problems;
}

function checkVerifiers(spec: SearchSpec, model: ModelInfo, problems: string[]): void {
  const hosted = model.verifiers.map((v) => v.name);
  if (spec.verifiers.length === 0) problems.push(`verifier: none given; use one of ${hosted.join(', ')}`);
  const duplicates = spec.verifiers.filter((v, i) => spec.verifiers.indexOf(v) !== i);
  if (duplicates.length > 0) problems.push(`verifier: ${duplicates.join(',')} is listed twice; name each verifier of an ensemble once`);
  for (const name of spec.verifiers) {
    if (!hosted.includes(name)) problems.push(`verifier: ${describeValue(name)} is not hosted with model ${model.model}; use one of ${hosted.join(', ')}`);
  }
}

/** A budget problem, or none: every algorithm refuses a budget below what its smallest search costs. */
export function budgetProblems(plan: SearchPlan, needed: number, what: string): string[] {
  if (plan.spec.budgetNfe >= needed) return [];
  return [`budget: ${plan.spec.budgetNfe} NFEs cannot pay for ${what}, which costs ${needed} NFEs; use --budget ${needed} or more`];
}

/**
 * Resolves a spec against a model description. Returns the plan and the problems found (the algorithm
 * adds its own before anything is refused).
 */
export function planSearch(spec: SearchSpec, model: ModelInfo, finalGeneration: boolean): { plan: SearchPlan; problems: string[] } {
  const problems: string[] = [];
  if (spec.model !== model.model) problems.push(`model: "${spec.model}" is not the model described (${model.model})`);
  checkVerifiers(spec, model, problems);
  problems.push(...conditionProblems(spec.condition, spec.verifiers, model));
  if (!Number.isInteger(spec.seed) || spec.seed < 0 || spec.seed > MAX_SEED) {
    problems.push(`seed: ${spec.seed} must be a whole number from 0 to ${MAX_SEED}`);
  }
  const searchSampler = resolveSampler(spec.searchSampler, model, 'searchSampler', problems);
  const finalSampler = resolveSampler(spec.finalSampler, model, 'finalSampler', problems);
  const schedule = scheduleOf(model);
  if (!SCHEDULE_KINDS.includes(schedule.kind)) {
    problems.push(`model: ${model.model} steps on a "${schedule.kind}" schedule, which this orchestrator does not know (${SCHEDULE_KINDS.join(', ')}); upgrade noisesearch`);
  }
  const plan: SearchPlan = {
    spec,
    sigmaMin: model.sigmaMin,
    sigmaMax: model.sigmaMax,
    schedule,
    solvers: model.solvers,
    searchSampler,
    finalSampler,
    generationNfe: solveNfe(fullSolve(model.sigmaMax, searchSampler)),
    finalNfe: finalGeneration ? solveNfe(fullSolve(model.sigmaMax, finalSampler)) : 0,
    maxBatch: model.maxBatch,
  };
  if (!Number.isInteger(spec.budgetNfe) || spec.budgetNfe < 1) {
    problems.push(`budget: ${spec.budgetNfe} must be a whole number of NFEs`);
  }
  return { plan, problems };
}
