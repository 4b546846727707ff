// A campaign as plain data, and its expansion into searches: dataset items x algorithms x search
// verifier sets x budgets x seeds. Pure, so the campaign workflow expands it itself and a spec of
// thousands of searches travels as a few kilobytes.
import type { DatasetItem } from '../datasets/types';
import type { AlgorithmSpec, SearchSpec } from '../search/spec';
import type { StoreConfig } from '../store/types';
import { stableHash } from './hash';

export interface CampaignInput {
  campaignId: string;
  name: string;
  model: string;
  items: DatasetItem[];
  algorithms: AlgorithmSpec[];
  verifierSets: string[][];
  budgets: number[];
  seeds: number[];
  evaluation: string[];
  concurrency: number;
  store: StoreConfig;
  /** Where pictures of final samples and the report go, on the workers' machine. */
  folder: string;
}

export interface CampaignItem {
  index: number;
  workflowId: string;
  cell: string;
  item: DatasetItem;
  spec: SearchSpec;
}

/** "random", or "zero-order(n=4,t=0.9)" when parameters are given. */
export function algorithmLabel(algorithm: AlgorithmSpec): string {
  const params = Object.entries(algorithm)
    .filter(([key, value]) => key !== 'name' && value !== undefined)
    .map(([key, value]) => `${key}=${value}`);
  return params.length > 0 ? `${algorithm.name}(${params.join(',')})` : algorithm.name;
}

export function cellKey(algorithm: AlgorithmSpec, verifiers: string[], budgetNfe: number): string {
  return `${algorithmLabel(algorithm)}|${verifiers.join('+')}|${budgetNfe}`;
}

export function campaignSize(input: CampaignInput): number {
  return input.seeds.length * input.items.length * input.budgets.length * input.algorithms.length * input.verifierSets.length;
}

/** The search at `index`: seeds, then items, then budgets, then algorithms, then verifier sets vary fastest. */
export function campaignItem(input: CampaignInput, index: number): CampaignItem {
  let rest = index;
  const pick = <T>(list: T[]): T => {
    const value = list[rest % list.length];
    rest = Math.floor(rest / list.length);
    return value;
  };
  const verifiers = pick(input.verifierSets);
  const algorithm = pick(input.algorithms);
  const budgetNfe = pick(input.budgets);
  const item = pick(input.items);
  const seed = pick(input.seeds);
  const spec: SearchSpec = { model: input.model, condition: item.condition, algorithm, verifiers, budgetNfe, seed };
  return {
    index,
    workflowId: `${input.campaignId}--${item.id}--${stableHash(spec)}`,
    cell: cellKey(algorithm, verifiers, budgetNfe),
    item,
    spec,
  };
}

export function allCells(input: CampaignInput): string[] {
  return input.algorithms.flatMap((a) => input.verifierSets.flatMap((v) => input.budgets.map((b) => cellKey(a, v, b))));
}
