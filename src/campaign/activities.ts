// Campaign activities: the results store, evaluation of final samples, pictures and population metrics.
// Each is idempotent (upserts keyed by workflow ID or cell, pictures written whole under fixed names), so
// a retry or a crashed worker never writes a search twice. An image model's PNGs stay here: they go to
// files and to the model servers, and no activity returns one to a workflow.
import { existsSync, readFileSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import { classified } from '../activities';
import type { Fleet, PopulationSample } from '../fleet/client';
import { FleetError, MESSAGE_TOO_LARGE } from '../fleet/errors';
import * as metrics from '../metrics';
import { solveNfe } from '../search/nfe';
import { BASE_MISSING, type SearchResult } from '../search/run';
import { deriveSeed, SeedStream } from '../search/seeds';
import { fullSolve, type SamplerSpec } from '../search/spec';
import type { BatchRequest, CandidateOutcome, SolverName, WireCandidate } from '../search/types';
import { openStore } from '../store';
import type { ResultsStore, SearchRecord, StoreConfig } from '../store/types';
import { canonicalJson } from './hash';
import { allCells, type CampaignInput, type CampaignItem } from './plan';
import { baselinePath, samplePath, writeFileAtomic } from './samples';

const HEARTBEAT_EVERY_MS = 1_000;

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
  // Outside the search's budget: counted as phase "evaluation", so the search's own NFEs stay what the store says.
  const evaluate = async (batch: BatchRequest) => {
    const outcome = await fleet.evaluate(batch);
    metrics.countBatch(batch, outcome, { algorithm: item.spec.algorithm.name, phase: 'evaluation' });
    return outcome;
  };
  if (result.best.key) {
    const byKey = await evaluate(request({ id: 'evaluation', base: { key: result.best.key }, lineage: { noise: { seed: 0, perturbations: [] }, ops: [] }, scoreXpred: false }));
    if (byKey.outcomes[0].error?.code !== BASE_MISSING) return byKey.outcomes[0];
  }
  return (await evaluate(request({ id: 'evaluation', lineage: result.best.lineage, scoreXpred: false }))).outcomes[0];
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

    /**
     * Scores the final sample with the evaluation verifiers and writes the search; an image model's sample
     * is saved as its PNG. A latent model's sample is kept in the store and drawn by the report: drawing it
     * here (a Vega heatmap) took about half the worker's CPU per search (docs/campaigns.md).
     */
    recordSearch: classified(async ({ campaign, item, result, wallSeconds }: FinishedSearch): Promise<void> => {
      const outcome = await evaluateFinalSample(fleet, campaign, item, result);
      if (outcome.error) throw new Error(`evaluating the final sample failed: ${outcome.error.code}: ${outcome.error.message}`);
      // An image model's sample is its decoded PNG, kept as a file: the store holds no latent of it.
      const sample = outcome.image ? [] : (outcome.sample ?? []);
      if (outcome.image) writeFileAtomic(samplePath(campaign.folder, item.workflowId, 'png'), outcome.image);
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
      metrics.searches.inc({ algorithm: item.spec.algorithm.name, state: 'completed' });
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
      metrics.searches.inc({ algorithm: item.spec.algorithm.name, state: 'failed' });
    }),

    /**
     * For an image model, first the no-search baseline of every (item, seed) the report shows beside its
     * searches; then the Fréchet distance and Inception-Score analogue of each grid cell's final samples
     * (an image model's as their PNGs). Returns the cells written.
     */
    computeCellMetrics: classified(async (input: Omit<CampaignInput, 'items'>): Promise<number> => {
      // A real model's batch of baselines, or a cell's metrics, may take longer than the heartbeat timeout.
      const context = Context.current();
      const heartbeat = setInterval(() => context.heartbeat(), HEARTBEAT_EVERY_MS);
      try {
        return await cellMetrics(fleet, await storeFor(input.store), input);
      } finally {
        clearInterval(heartbeat);
      }
    }),
  };
}

/** Baselines first (an image model's), then each cell's population metrics; the cells written. */
async function cellMetrics(fleet: Fleet, store: ResultsStore, input: Omit<CampaignInput, 'items'>): Promise<number> {
  const done = (await store.searches(input.campaignId)).filter((s) => s.status === 'done');
  const pictured = done.filter((s) => existsSync(samplePath(input.folder, s.workflowId, 'png')));
  if (pictured.length > 0) await recordBaselines(fleet, input, pictured);
  const sampleOf = (s: (typeof done)[number]): PopulationSample | null => {
    const png = samplePath(input.folder, s.workflowId, 'png');
    if (existsSync(png)) return { image: readFileSync(png), condition: s.spec.condition };
    return s.sample.length > 0 ? { values: s.sample, condition: s.spec.condition } : null;
  };
  let written = 0;
  for (const cell of allCells({ ...input, items: [] })) {
    const samples = done.filter((s) => s.cell === cell).map(sampleOf).filter((s): s is PopulationSample => s !== null);
    if (samples.length < 2) continue;
    let metrics;
    try {
      metrics = await fleet.population(input.model, samples);
    } catch (error) {
      // A cell too big for one message has no metrics, and the campaign keeps the rest.
      if (!(error instanceof FleetError && error.code === MESSAGE_TOO_LARGE)) throw error;
      Context.current().log.warn(`population metrics of cell ${cell} left out: ${error.message}`);
      continue;
    }
    await store.upsertCellMetrics({
      campaignId: input.campaignId,
      cell,
      samples: metrics.samples,
      frechetDistance: metrics.frechetDistance,
      inceptionScore: metrics.inceptionScore,
      ...(metrics.clipFrechetDistance !== undefined ? { clipFrechetDistance: metrics.clipFrechetDistance } : {}),
      computedAt: new Date().toISOString(),
    });
    written++;
  }
  return written;
}

/**
 * The no-search sample of each (item, seed) among `pictured` that has none yet: the noise random search
 * draws first, generated once with the model's default sampler and scored by the evaluation verifiers,
 * a batch of seeds per item. Its NFEs are outside every search's budget.
 */
async function recordBaselines(fleet: Fleet, input: Omit<CampaignInput, 'items'>, pictured: Array<{ itemId: string; seed: number; spec: { condition: BatchRequest['condition'] } }>): Promise<void> {
  const missing = new Map<string, { condition: BatchRequest['condition']; seeds: Set<number> }>();
  for (const s of pictured) {
    if (existsSync(baselinePath(input.folder, s.itemId, s.seed, 'json'))) continue;
    const entry = missing.get(s.itemId) ?? { condition: s.spec.condition, seeds: new Set<number>() };
    entry.seeds.add(s.seed);
    missing.set(s.itemId, entry);
  }
  if (missing.size === 0) return;
  const model = await fleet.describe(input.model);
  const sampler: SamplerSpec = { solver: model.defaultSolver as SolverName, steps: model.defaultSteps };
  const solve = fullSolve(model.sigmaMax, sampler);
  for (const [itemId, { condition, seeds }] of missing) {
    const all = [...seeds].sort((a, b) => a - b);
    for (let start = 0; start < all.length; start += Math.max(1, model.maxBatch)) {
      const chunk = all.slice(start, start + Math.max(1, model.maxBatch));
      const candidates: WireCandidate[] = chunk.map((seed) => ({
        id: `baseline-${seed}`,
        lineage: { noise: { seed: deriveSeed(seed, SeedStream.randomNoise, 0), perturbations: [] }, ops: [{ solve }] },
        scoreXpred: false,
      }));
      const request: BatchRequest = { model: input.model, condition, verifiers: input.evaluation, candidates, returnSamples: true };
      const batch = await fleet.evaluate(request);
      metrics.countBatch(request, batch, { algorithm: 'baseline', phase: 'evaluation' });
      for (const [i, seed] of chunk.entries()) {
        const outcome = batch.outcomes.find((o) => o.id === candidates[i].id);
        if (!outcome || outcome.error || !outcome.image) {
          // The gallery shows "no baseline" for it; the campaign's own results do not depend on it.
          const why = outcome?.error ? `${outcome.error.code}: ${outcome.error.message}` : 'no image came back';
          Context.current().log.warn(`the no-search baseline of ${itemId}, seed ${seed}, is left out: ${why}`);
          continue;
        }
        writeFileAtomic(baselinePath(input.folder, itemId, seed, 'png'), outcome.image);
        // The scores last: a baseline counts as recorded once its picture is there.
        writeFileAtomic(baselinePath(input.folder, itemId, seed, 'json'), JSON.stringify({ evaluation: outcome.scores, nfe: solveNfe(solve) }));
      }
    }
  }
}

export type CampaignActivities = ReturnType<typeof createCampaignActivities>;
