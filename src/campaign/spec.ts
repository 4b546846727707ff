// A campaign spec as a user writes it (YAML or JSON), validated before anything starts: every problem is
// listed at once, each naming its field and saying what would be right.
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { stripBom } from '../datasets/csv';
import { loadDataset, validateDatasetSpec } from '../datasets/load';
import type { DatasetItem, DatasetSpec } from '../datasets/types';
import { ALGORITHM_NAMES, createRun } from '../search/run';
import { algorithmShapeProblems, conditionProblems, describeValue, SpecError, type AlgorithmSpec } from '../search/spec';
import type { ModelInfo } from '../search/types';
import type { StoreConfig } from '../store/types';
import { CAMPAIGN_INPUT_LIMIT_BYTES } from '../temporal/constants';
import { canonicalJson } from './hash';
import { campaignSize, cellKey, type CampaignInput } from './plan';

export interface CampaignSpec {
  name: string;
  model?: string;
  dataset: DatasetSpec;
  grid: {
    algorithms: Array<AlgorithmSpec | string>;
    /** Each entry a verifier, or an ensemble as a list or "a,b". */
    verifiers: Array<string | string[]>;
    budgets: number[];
  };
  /** With a prompt dataset: what classifier-free guidance steers away from, for every prompt. */
  negativePrompt?: string;
  /** Verifiers scored on every final sample, whatever it was searched with (default: all the model hosts). */
  evaluation?: string[];
  seeds?: number[];
  concurrency?: number;
  results?: { store?: 'sqlite' | 'postgres'; path?: string; url?: string; folder?: string };
}

export const DEFAULT_CONCURRENCY = 8;
/** Item problems listed one by one before the rest are counted: a bad dataset file would list thousands. */
const MAX_ITEM_PROBLEMS = 10;
/** One worker holds 1,000 running searches in about 300 MB (docs/benchmarks.md, the large campaign). */
const MAX_CONCURRENCY = 1000;

/** A spec names its dataset file rather than holding it: a few kilobytes; anything near this is a mistake. */
export const MAX_SPEC_BYTES = 1024 * 1024;

/** Nesting a spec never needs (it nests four levels): the YAML parser recurses, and slowly, past it. */
const MAX_SPEC_NESTING = 64;

/**
 * The first line at which a YAML text nests deeper than `max`, from its characters alone, before the parser
 * sees it: "[[[[...", or lines indented (or opened by "- ") ever deeper; null when none does. A 400 KB text
 * nested 200,000 deep took the parser 5 s and 220 MB to refuse; this scan is linear and allocates nothing.
 */
function tooDeepAt(text: string, max: number): number | null {
  let flow = 0;
  let quote: string | null = null;
  let line = 1;
  let lineStart = true;
  let lead = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') {
      line++;
      lineStart = true;
      lead = 0;
      continue;
    }
    if (lineStart) {
      // Indentation (two columns a level, as specs are written) and compact nested sequences ("- - - x").
      if (c === ' ' || c === '\t' || c === '-') {
        if (++lead / 2 > max) return line;
        continue;
      }
      lineStart = false;
    }
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = null;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (c === '#') while (i + 1 < text.length && text[i + 1] !== '\n') i++;
    else if (c === '[' || c === '{') {
      if (++flow > max) return line;
    } else if ((c === ']' || c === '}') && flow > 0) flow--;
  }
  return null;
}

export function readCampaignSpec(file: string): { spec: unknown; problems: string[] } {
  if (file.includes('\0')) return { spec: null, problems: [`spec: ${describeValue(file)} holds a NUL byte; give a path without one`] };
  let stat;
  try {
    stat = statSync(file, { throwIfNoEntry: false });
  } catch (error) {
    return { spec: null, problems: [`spec: ${describeValue(file)} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`] };
  }
  if (!stat) return { spec: null, problems: [`spec: file ${file} does not exist`] };
  if (!stat.isFile()) return { spec: null, problems: [`spec: ${file} is not a file; give a YAML or JSON campaign spec`] };
  if (stat.size > MAX_SPEC_BYTES) {
    return { spec: null, problems: [`spec: ${file} is ${stat.size} bytes, over the ${MAX_SPEC_BYTES} a spec may be; put prompts in a dataset file (dataset.path)`] };
  }
  const format = file.endsWith('.json') ? 'JSON' : 'YAML';
  try {
    const text = stripBom(readFileSync(file, 'utf8'));
    const deepAt = format === 'YAML' ? tooDeepAt(text, MAX_SPEC_NESTING) : null;
    if (deepAt !== null) return { spec: null, problems: [`spec: ${file} nests more than ${MAX_SPEC_NESTING} levels deep (line ${deepAt}); a campaign spec needs a few`] };
    // YAML's own guard refuses an alias bomb ("billion laughs"): at most 100 aliases are expanded. Its
    // warnings (an unknown tag, read as text) would print as Node warnings: the spec's checks speak instead.
    return { spec: format === 'JSON' ? JSON.parse(text) : YAML.parse(text, { maxAliasCount: 100, logLevel: 'error' }), problems: [] };
  } catch (error) {
    // A spec nested thousands deep overflows the parser's stack: one more way of not being a spec.
    return { spec: null, problems: [`spec: ${file} is not valid ${format}: ${(error as Error).message.split('\n')[0]}`] };
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isWhole = (v: unknown, min: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min;

function list<T>(value: unknown, field: string, problems: string[], check: (item: unknown, field: string) => T | null): T[] {
  if (!Array.isArray(value) || value.length === 0) {
    problems.push(`${field}: must be a non-empty list`);
    return [];
  }
  return value.map((item, i) => check(item, `${field}[${i}]`)).filter((x): x is T => x !== null);
}

function algorithmOf(value: unknown, field: string, problems: string[]): AlgorithmSpec | null {
  const algorithm = typeof value === 'string' ? { name: value } : value;
  if (!isObject(algorithm) || !ALGORITHM_NAMES.includes(algorithm.name as never)) {
    const shown = isObject(value) ? `{name: ${describeValue(value.name)}}` : describeValue(value);
    problems.push(`${field}: ${shown} is not an algorithm; use one of ${ALGORITHM_NAMES.join(', ')}, or {name: ..., parameters}`);
    return null;
  }
  // Parameters of the wrong type or unknown (a typo) are refused here, before they reach the campaign's ID.
  const shape = algorithmShapeProblems(algorithm, field);
  problems.push(...shape);
  return shape.length === 0 ? (algorithm as unknown as AlgorithmSpec) : null;
}

function verifierSetOf(value: unknown, field: string, problems: string[]): string[] | null {
  const set = typeof value === 'string' ? value.split(',').map((s) => s.trim()) : value;
  if (!Array.isArray(set) || set.length === 0 || !set.every((v) => typeof v === 'string' && v.length > 0)) {
    problems.push(`${field}: ${describeValue(value)} is not a verifier or a list of verifiers`);
    return null;
  }
  return set;
}

/** A path a user gave: text without NUL bytes (which no file system takes), or a problem. */
function pathProblem(value: unknown, field: string): string | null {
  if (value === undefined) return null;
  if (typeof value !== 'string' || value.trim() === '') return `${field}: ${describeValue(value)} is not a path`;
  if (value.includes('\0')) return `${field}: ${describeValue(value)} holds a NUL byte; give a path without one`;
  return null;
}

/** Where the campaign's pictures and report go: results.folder as given, else a folder of its own under campaignsDir. */
function folderOf(spec: CampaignSpec, campaignsDir: string, campaignId: string, problems: string[]): string {
  const results = isObject(spec.results) ? spec.results : {};
  const problem = pathProblem(results.folder, 'results.folder');
  if (problem) problems.push(problem);
  return path.resolve(typeof results.folder === 'string' && !problem ? results.folder : path.join(campaignsDir, campaignId));
}

function storeOf(spec: CampaignSpec, folder: string, problems: string[]): StoreConfig {
  const results = spec.results ?? {};
  if (!isObject(results)) {
    problems.push('results: must be a mapping with store, path, url or folder');
    return { kind: 'sqlite', path: path.join(folder, 'results.sqlite') };
  }
  if (results.store === 'postgres') {
    if (typeof results.url !== 'string' || !/^postgres(ql)?:\/\//.test(results.url)) {
      problems.push('results.url: a postgres store needs url: postgres://user@host:port/database');
    }
    return { kind: 'postgres', url: String(results.url) };
  }
  if (results.store !== undefined && results.store !== 'sqlite') problems.push(`results.store: ${describeValue(results.store)} is not one of sqlite, postgres`);
  const problem = pathProblem(results.path, 'results.path');
  if (problem) problems.push(problem);
  return { kind: 'sqlite', path: path.resolve(typeof results.path === 'string' && !problem ? results.path : path.join(folder, 'results.sqlite')) };
}

/** A prompt dataset for a model that takes no prompts, or a class dataset for a text-to-image model. */
function datasetKindProblem(kind: string, items: DatasetItem[], model: ModelInfo): string | null {
  if (items.some((item) => item.condition.prompt !== undefined) && !model.takesPrompts) {
    const takes = model.numClasses > 0 ? `is class-conditional (${model.numClasses} classes)` : 'takes no prompt';
    return `dataset.kind: ${kind} gives text prompts, but model ${model.model} ${takes}; use a text-to-image model, or a class dataset (gmm-classes, imagenet)`;
  }
  if (items.some((item) => item.condition.classLabel !== undefined) && model.takesPrompts) {
    return `dataset.kind: ${kind} gives classes, but model ${model.model} is a text-to-image model; use a prompt dataset (drawbench, partiprompts, t2i-compbench, geneval), or a class-conditional model`;
  }
  return null;
}

/**
 * Checks the whole spec against the model and resolves it into the campaign workflow's input; throws
 * SpecError with every problem.
 */
export function resolveCampaign(raw: unknown, model: ModelInfo, campaignsDir: string): CampaignInput {
  const problems: string[] = [];
  if (!isObject(raw)) throw new SpecError(['spec: must be a mapping with name, dataset, grid and optional evaluation, seeds, concurrency, results']);
  const spec = raw as unknown as CampaignSpec;
  if (typeof spec.name !== 'string' || !/^[\w.-]{1,64}$/.test(spec.name)) problems.push(`name: ${describeValue(spec.name)} must be 1 to 64 letters, digits, '.', '_' or '-'`);
  if ((spec.model ?? model.model) !== model.model) problems.push(`model: "${spec.model}" is not hosted; the fleet hosts ${model.model}`);
  const datasetProblems = validateDatasetSpec(spec.dataset, 'dataset');
  problems.push(...datasetProblems);
  if (spec.negativePrompt !== undefined && typeof spec.negativePrompt !== 'string') problems.push(`negativePrompt: ${describeValue(spec.negativePrompt)} must be text`);
  const negativePrompt = typeof spec.negativePrompt === 'string' ? spec.negativePrompt : undefined;
  const items = (datasetProblems.length === 0 ? loadDataset(spec.dataset) : []).map((item) =>
    negativePrompt !== undefined && item.condition.prompt !== undefined ? { ...item, condition: { ...item.condition, negativePrompt } } : item,
  );
  if (negativePrompt !== undefined && items.length > 0 && !items.some((item) => item.condition.prompt !== undefined)) {
    problems.push(`negativePrompt: dataset ${spec.dataset.kind} gives no prompts for it to steer away from; leave it out`);
  }
  // A dataset of the wrong kind for the model is one problem, not one per item.
  const wrongKind = datasetKindProblem(spec.dataset?.kind, items, model);
  if (wrongKind) problems.push(wrongKind);
  if (!isObject(spec.grid)) problems.push('grid: must be a mapping with algorithms, verifiers and budgets');
  const grid = isObject(spec.grid) ? spec.grid : { algorithms: [], verifiers: [], budgets: [] };
  const algorithms = list(grid.algorithms, 'grid.algorithms', problems, (v, f) => algorithmOf(v, f, problems));
  const verifierSets = list(grid.verifiers, 'grid.verifiers', problems, (v, f) => verifierSetOf(v, f, problems));
  const budgets = list(grid.budgets, 'grid.budgets', problems, (v, f) => (isWhole(v, 1) ? v : (problems.push(`${f}: ${describeValue(v)} must be a whole number of NFEs`), null)));
  const hosted = model.verifiers.map((v) => v.name);
  const evaluation = spec.evaluation === undefined ? hosted : list(spec.evaluation, 'evaluation', problems, (v, f) => (typeof v === 'string' && hosted.includes(v) ? v : (problems.push(`${f}: ${describeValue(v)} is not hosted; use one of ${hosted.join(', ')}`), null)));
  const seeds = spec.seeds === undefined ? [0] : list(spec.seeds, 'seeds', problems, (v, f) => (isWhole(v, 0) ? v : (problems.push(`${f}: ${describeValue(v)} must be a whole number >= 0`), null)));
  const concurrency = spec.concurrency ?? DEFAULT_CONCURRENCY;
  if (!isWhole(concurrency, 1) || concurrency > MAX_CONCURRENCY) problems.push(`concurrency: ${describeValue(concurrency)} must be a whole number from 1 to ${MAX_CONCURRENCY}`);

  // Every dataset item must be a condition the model takes, with every verifier it will be scored by.
  const scoredBy = [...new Set([...verifierSets.flat(), ...evaluation])];
  const badItems = wrongKind ? [] : items.flatMap((item, i) => conditionProblems(item.condition, scoredBy, model).map((problem) => `dataset item ${i} (${item.id}): ${problem}`));
  problems.push(...badItems.slice(0, MAX_ITEM_PROBLEMS));
  if (badItems.length > MAX_ITEM_PROBLEMS) problems.push(`dataset: ${badItems.length - MAX_ITEM_PROBLEMS} more item problems like these`);
  // Every grid cell must be a search the model can run: refused here, not hours later.
  const probe = wrongKind ? undefined : items[0];
  if (probe) {
    algorithms.forEach((algorithm, a) =>
      verifierSets.forEach((verifiers, v) =>
        budgets.forEach((budgetNfe, b) => {
          try {
            createRun({ model: model.model, condition: probe.condition, algorithm, verifiers, budgetNfe, seed: seeds[0] ?? 0 }, model);
          } catch (error) {
            if (!(error instanceof SpecError)) throw error;
            const where = `grid (algorithms[${a}] ${algorithm.name}, verifiers[${v}] ${verifiers.join('+')}, budgets[${b}] ${budgetNfe})`;
            for (const problem of error.problems) problems.push(`${where}: ${problem}`);
          }
        }),
      ),
    );
  }
  const name = String(spec.name);
  const identity = { name, model: model.model, items, algorithms, verifierSets, budgets, seeds, evaluation };
  const campaignId = `campaign-${name}-${createHash('sha256').update(canonicalJson(identity)).digest('hex').slice(0, 12)}`;
  const folder = folderOf(spec, campaignsDir, campaignId, problems);
  const store = storeOf(spec, folder, problems);
  const input: CampaignInput = { campaignId, name, model: model.model, items, algorithms, verifierSets, budgets, seeds, evaluation, concurrency, store, folder };
  // The campaign workflow's input carries the dataset's items: each prompt may be short and the whole still
  // past what Temporal takes in one payload. Refused here, not as a start that Temporal rejects; measured only
  // once every field is valid, since an invalid one (a list nested 20,000 deep) cannot be serialised.
  const inputBytes = problems.length === 0 ? Buffer.byteLength(JSON.stringify(input)) : 0;
  if (inputBytes > CAMPAIGN_INPUT_LIMIT_BYTES) {
    problems.push(`dataset: its ${items.length} items make a campaign input of ${(inputBytes / 2 ** 20).toFixed(1)} MiB, past the ${CAMPAIGN_INPUT_LIMIT_BYTES / 2 ** 20} MiB a Temporal payload may hold; take fewer items (the dataset's limit field keeps the first N) or split its file into several campaigns`);
  }
  if (problems.length > 0) throw new SpecError([...new Set(problems)]);
  return input;
}

export function describeCampaign(input: CampaignInput): string {
  const cells = input.algorithms.length * input.verifierSets.length * input.budgets.length;
  return `${campaignSize(input)} searches: ${input.items.length} items x ${cells} grid cells (e.g. ${cellKey(input.algorithms[0], input.verifierSets[0], input.budgets[0])}) x ${input.seeds.length} seeds`;
}
