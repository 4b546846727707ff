import type { Condition } from '../search/types';

/** One condition of a campaign's dataset: a class of the embedded model, an ImageNet class, or a prompt. */
export interface DatasetItem {
  /** Stable within the dataset: e.g. "class-3", "drawbench-17", "geneval-412". */
  id: string;
  condition: Condition;
  /** What a person reads in a report: "class 3" or the prompt. */
  label: string;
  /** The dataset's own category (DrawBench Category, PartiPrompts Category, GenEval tag, T2I-CompBench file). */
  category?: string;
  /** PartiPrompts only: the Challenge aspect ("Basic", "Fine-grained Detail", ...). */
  challenge?: string;
  /** GenEval only: the objects its evaluator looks for (and, for counting, those it must not find). */
  geneval?: { include: GenevalObject[]; exclude?: GenevalObject[] };
}

/** One object of a GenEval prompt's metadata, as in evaluation_metadata.jsonl. */
export interface GenevalObject {
  class: string;
  count: number;
  color?: string;
  /** [relation, index of the object it is relative to], e.g. ["left of", 0]. */
  position?: [string, number];
}

export type DatasetSpec =
  | { kind: 'gmm-classes'; classes: number[] }
  | { kind: 'imagenet'; classes: number[]; /** One class name a line, in id order: labels read "goldfish (ImageNet class 1)". */ names?: string }
  | { kind: 'drawbench'; path: string; limit?: number }
  | { kind: 'partiprompts'; path: string; limit?: number }
  | { kind: 't2i-compbench'; path: string; limit?: number }
  | { kind: 'geneval'; path: string; limit?: number };

export type DatasetKind = DatasetSpec['kind'];
