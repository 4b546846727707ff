// Campaign activities: the results store, evaluation of final samples, pictures and population metrics.
// Each is idempotent (upserts keyed by workflow ID or cell), so a retry or a crashed worker never
// writes a search twice.
import { mkdirSync, writeFileSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import * as path from 'node:path';
import { classified } from '../activities';
import type { Fleet } from '../fleet/client';
import { samplePicture } from '../report/report';
import { BASE_MISSING, type SearchResult } from '../search/run';
import type { BatchRequest, CandidateOutcome, WireCandidate } from '../search/types';
import { openStore } from '../store';
import type { ResultsStore, SearchRecord, StoreConfig } from '../store/types';
import { canonicalJson } from './hash';
import { allCells, type CampaignInput, type CampaignItem } from './plan';

export interface FinishedSearch {
  campaign: Pick<CampaignInput, 'campaignId' | 'model' | 'evaluation' | 'store' | 'folder'>;
  item: CampaignItem;
  result: SearchResult;
  wallSeconds: number;
}

export interface FailedSearch {
  campaign: Pick<CampaignInput, 'campaignId' | 'store'>;
  item: CampaignItem;
  error: string;
  wallSeconds: number;
}

function pictureFile(folder: string, workflowId: string): string {
  return path.join(folder, 'samples', `${workflowId.replace(/[^\w.-]+/g, '_')}.svg`);
}

function baseRecord(campaignId: string, item: CampaignItem, wallSeconds: number): Omit<SearchRecord, 'status' | 'error' | 'result' | 'evaluation' | 'sample' | 'nfeSearch' | 'nfeFinal' | 'nfeTotal' | 'nfeExecuted' | 'verifierSeconds'> {
  return {
    workflowId: item.workflowId,
    campaignId,
    itemId: item.item.id,
    itemLabel: item.item.label,
    itemCategory: item.item.category ?? null,
    cell: item.cell,
    algorithm: item.spec.algorithm.name,
    searchVerifiers: item.spec.verifiers,
    budgetNfe: item.spec.budgetNfe,
    seed: item.spec.seed,
    spec: item.spec,
    wallSeconds,
    finishedAt: new Date().toISOString(),
  };
}

/**
 * The final sample, scored by the evaluation verifiers: by its key while a server holds it (no NFE), else
 * recomputed from its whole lineage.
 */
async function evaluateFinalSample(fleet: Fleet, campaign: FinishedSearch['campaign'], item: CampaignItem, result: SearchResult): Promise<CandidateOutcome> {
  const request = (candidate: WireCandidate): BatchRequest => ({
    model: campaign.model,
    condition: item.spec.condition,
    verifiers: campaign.evaluation,
    candidates: [candidate],
    returnSamples: true,
  });
  if (result.best.key) {
    const byKey = await fleet.evaluate(request({ id: 'evaluation', base: { key: result.best.key }, lineage: { noise: { seed: 0, perturbations: [] }, ops: [] }, scoreXpred: false }));
    if (byKey.outcomes[0].error?.code !== BASE_MISSING) return byKey.outcomes[0];
  }
  return (await fleet.evaluate(request({ id: 'evaluation', lineage: result.best.lineage, scoreXpred: false }))).outcomes[0];
}

export function createCampaignActivities({ fleet }: { fleet: Fleet }) {
  const stores = new Map<string, Promise<ResultsStore>>();
  const storeFor = (config: StoreConfig): Promise<ResultsStore> => {
    const key = canonicalJson(config);
    if (!stores.has(key)) stores.set(key, openStore(config));
    return stores.get(key)!;
  };

  return {
    /** Registers the campaign in the store. */
    openCampaign: classified(async (input: Omit<CampaignInput, 'items'> & { itemCount: number }): Promise<void> => {
      const store = await storeFor(input.store);
      if (!(await store.getCampaign(input.campaignId))) {
        await store.upsertCampaign({ campaignId: input.campaignId, name: input.name, spec: input, createdAt: new Date().toISOString() });
      }
    }),

    /**
     * Which of a page of the campaign's searches are already done, as indices into the page: asked a page
     * at a time, so no payload grows with the size of the campaign.
     */
    donePage: classified(async ({ store: config, campaignId, workflowIds }: { store: StoreConfig; campaignId: string; workflowIds: string[] }): Promise<number[]> => {
      const done = new Set(await (await storeFor(config)).doneAmong(campaignId, workflowIds));
      return workflowIds.flatMap((id, i) => (done.has(id) ? [i] : []));
    }),

    /** Scores the final sample with the evaluation verifiers, saves its picture, and writes the search. */
    recordSearch: classified(async ({ campaign, item, result, wallSeconds }: FinishedSearch): Promise<void> => {
      const outcome = await evaluateFinalSample(fleet, campaign, item, result);
      if (outcome.error) throw new Error(`evaluating the final sample failed: ${outcome.error.code}: ${outcome.error.message}`);
      const sample = outcome.sample ?? [];
      const file = pictureFile(campaign.folder, item.workflowId);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, await samplePicture(sample, item.item.label));
      const store = await storeFor(campaign.store);
      await store.upsertSearch({
        ...baseRecord(campaign.campaignId, item, wallSeconds),
        status: 'done',
        error: null,
        result,
        evaluation: outcome.scores,
        sample,
        nfeSearch: result.nfe.search,
        nfeFinal: result.nfe.final,
        nfeTotal: result.nfe.total,
        nfeExecuted: result.nfe.executed,
        verifierSeconds: result.verifierSeconds,
      });
    }),

    recordFailure: classified(async ({ campaign, item, error, wallSeconds }: FailedSearch): Promise<void> => {
      const store = await storeFor(campaign.store);
      await store.upsertSearch({
        ...baseRecord(campaign.campaignId, item, wallSeconds),
        status: 'failed',
        error,
        result: null,
        evaluation: {},
        sample: [],
        nfeSearch: 0,
        nfeFinal: 0,
        nfeTotal: 0,
        nfeExecuted: 0,
        verifierSeconds: 0,
      });
    }),

    /** Fréchet distance and Inception-Score analogue of each grid cell's final samples. */
    computeCellMetrics: classified(async (input: Omit<CampaignInput, 'items'>): Promise<number> => {
      const store = await storeFor(input.store);
      const done = (await store.searches(input.campaignId)).filter((s) => s.status === 'done' && s.sample.length > 0);
      let written = 0;
      for (const cell of allCells({ ...input, items: [] })) {
        const samples = done.filter((s) => s.cell === cell).map((s) => ({ values: s.sample, condition: s.spec.condition }));
        if (samples.length < 2) continue;
        Context.current().heartbeat({ cell });
        const metrics = await fleet.population(input.model, samples);
        await store.upsertCellMetrics({
          campaignId: input.campaignId,
          cell,
          samples: metrics.samples,
          frechetDistance: metrics.frechetDistance,
          inceptionScore: metrics.inceptionScore,
          computedAt: new Date().toISOString(),
        });
        written++;
      }
      return written;
    }),
  };
}

export type CampaignActivities = ReturnType<typeof createCampaignActivities>;
