import type { SearchResult } from '../search/run';
import type { SearchSpec } from '../search/spec';

export type StoreConfig = { kind: 'sqlite'; path: string } | { kind: 'postgres'; url: string };

export interface CampaignRecord {
  campaignId: string;
  name: string;
  /** The campaign spec as given (JSON), datasets resolved to items. */
  spec: unknown;
  createdAt: string;
}

/** One finished (or failed) search of a campaign, written once: upserted on its workflow ID. */
export interface SearchRecord {
  workflowId: string;
  campaignId: string;
  itemId: string;
  itemLabel: string;
  itemCategory: string | null;
  /** The grid cell: algorithm (with its parameters), search verifiers and budget, e.g. "random|gmm-classifier|400". */
  cell: string;
  algorithm: string;
  searchVerifiers: string[];
  budgetNfe: number;
  seed: number;
  status: 'done' | 'failed';
  error: string | null;
  spec: SearchSpec;
  /** Null when the search failed. */
  result: SearchResult | null;
  /** Evaluation verifiers' scores of the final sample. */
  evaluation: Record<string, number>;
  /** The final sample (the embedded model's latent vector). */
  sample: number[];
  nfeSearch: number;
  nfeFinal: number;
  nfeTotal: number;
  nfeExecuted: number;
  verifierSeconds: number;
  wallSeconds: number;
  finishedAt: string;
}

/** Population metrics of a grid cell's final samples against the true distribution. */
export interface CellMetricsRecord {
  campaignId: string;
  cell: string;
  samples: number;
  frechetDistance: number;
  inceptionScore: number;
  /** CLIP-FID, when the model's server computes it (an image model with a CLIP reference). */
  clipFrechetDistance?: number;
  computedAt: string;
}

export interface ResultsStore {
  /** Creates the tables if they do not exist. */
  init(): Promise<void>;
  upsertCampaign(campaign: CampaignRecord): Promise<void>;
  getCampaign(campaignId: string): Promise<CampaignRecord | null>;
  upsertSearch(record: SearchRecord): Promise<void>;
  searches(campaignId: string): Promise<SearchRecord[]>;
  /** Those of `workflowIds` whose search is done (failed ones are not), in the order given. */
  doneAmong(campaignId: string, workflowIds: string[]): Promise<string[]>;
  upsertCellMetrics(metrics: CellMetricsRecord): Promise<void>;
  cellMetrics(campaignId: string): Promise<CellMetricsRecord[]>;
  close(): Promise<void>;
}
