// The process's metrics (docs/metrics.md is the contract: names, types and labels). One registry per
// process; every metric is defined here, and updating one costs a map lookup, so the instrumented code
// updates them whether or not anyone serves them. Labels are bounded: a model, algorithm, phase,
// verifier, endpoint, code or campaign *name*, never an ID, seed or prompt.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BatchOutcome, BatchRequest } from '../search/types';

export const registry = new Registry();

/** Latencies from a cached verifier call (milliseconds) to a real model's batch (a minute and more). */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export type Phase = 'search' | 'final' | 'evaluation';

export const nfeLogical = new Counter({
  name: 'noisesearch_nfe_logical_total',
  help: 'Denoiser evaluations the searches paid for (what budgets count); phase "evaluation": scoring final samples and baselines, outside every budget.',
  labelNames: ['model', 'algorithm', 'phase'] as const,
  registers: [registry],
});

export const nfeExecuted = new Counter({
  name: 'noisesearch_nfe_executed_total',
  help: 'Denoiser evaluations the servers actually ran (cache hits cost nothing).',
  labelNames: ['model', 'algorithm', 'phase'] as const,
  registers: [registry],
});

export const candidates = new Counter({
  name: 'noisesearch_candidates_total',
  help: 'Candidates evaluated, by outcome (scored, failed, cancelled).',
  labelNames: ['model', 'algorithm', 'outcome'] as const,
  registers: [registry],
});

export const verifierCalls = new Counter({
  name: 'noisesearch_verifier_calls_total',
  help: 'Samples scored, as the servers report them.',
  labelNames: ['verifier'] as const,
  registers: [registry],
});

export const verifierSeconds = new Histogram({
  name: 'noisesearch_verifier_seconds',
  help: 'Verifier time per scored sample, as the servers report it.',
  labelNames: ['verifier'] as const,
  buckets: LATENCY_BUCKETS,
  registers: [registry],
});

export const endpointRequestSeconds = new Histogram({
  name: 'noisesearch_endpoint_request_seconds',
  help: 'gRPC call latency per model server.',
  labelNames: ['endpoint', 'method'] as const,
  buckets: LATENCY_BUCKETS,
  registers: [registry],
});

export const endpointInFlight = new Gauge({
  name: 'noisesearch_endpoint_in_flight_requests',
  help: 'Calls on the wire now.',
  labelNames: ['endpoint'] as const,
  registers: [registry],
});

export const endpointQueued = new Gauge({
  name: 'noisesearch_endpoint_queued_requests',
  help: "Calls waiting for the endpoint's concurrency limit (p-limit).",
  labelNames: ['endpoint'] as const,
  registers: [registry],
});

export const endpointUp = new Gauge({
  name: 'noisesearch_endpoint_up',
  help: "1 while the endpoint's gRPC health says SERVING, else 0.",
  labelNames: ['endpoint'] as const,
  registers: [registry],
});

export const errors = new Counter({
  name: 'noisesearch_errors_total',
  help: 'Errors, as classified once by the fleet client.',
  labelNames: ['code', 'retryable'] as const,
  registers: [registry],
});

export const searches = new Counter({
  name: 'noisesearch_searches_total',
  help: 'Searches this process drove to that state (started, completed, failed, cancelled).',
  labelNames: ['algorithm', 'state'] as const,
  registers: [registry],
});

export const campaigns = new Counter({
  name: 'noisesearch_campaigns_total',
  help: 'Campaigns this process drove to that state (started, completed, failed).',
  labelNames: ['state'] as const,
  registers: [registry],
});

export const campaignSearches = new Gauge({
  name: 'noisesearch_campaign_searches',
  help: "A campaign's progress: its searches in total, done and failed.",
  labelNames: ['campaign', 'state'] as const,
  registers: [registry],
});

export const campaignEta = new Gauge({
  name: 'noisesearch_campaign_eta_seconds',
  help: 'A campaign\'s remaining time at its current rate.',
  labelNames: ['campaign'] as const,
  registers: [registry],
});

let defaultsCollected = false;

/** Node's process metrics: only in a process that serves them (their collectors cost a little each scrape). */
export function collectProcessMetrics(): void {
  if (defaultsCollected) return;
  defaultsCollected = true;
  collectDefaultMetrics({ register: registry });
}

/** Whose batch it is: the labels its NFEs and candidates are counted under. */
export interface BatchLabels {
  algorithm: string;
  phase: Phase;
}

/**
 * Counts a batch's NFEs, candidates and verifier work from the outcomes the servers sent: per candidate
 * its logical and executed NFEs, and per verifier its calls and seconds (a batch reports a verifier's
 * total, spread evenly over its calls, so the histogram holds one observation per sample scored).
 */
export function countBatch(batch: BatchRequest, outcome: BatchOutcome, { algorithm, phase }: BatchLabels): void {
  const labels = { model: batch.model, algorithm, phase };
  let logical = 0;
  let executed = 0;
  let failed = 0;
  for (const o of outcome.outcomes) {
    logical += o.nfeLogical;
    executed += o.nfeExecuted;
    if (o.error) failed++;
  }
  nfeLogical.inc(labels, logical);
  nfeExecuted.inc(labels, executed);
  if (outcome.outcomes.length > failed) candidates.inc({ model: batch.model, algorithm, outcome: 'scored' }, outcome.outcomes.length - failed);
  if (failed > 0) candidates.inc({ model: batch.model, algorithm, outcome: 'failed' }, failed);
  for (const t of outcome.verifierTimings) {
    if (t.calls <= 0) continue;
    verifierCalls.inc({ verifier: t.verifier }, t.calls);
    const each = t.seconds / t.calls;
    for (let i = 0; i < t.calls; i++) verifierSeconds.observe({ verifier: t.verifier }, each);
  }
}

/** A batch cancelled on the wire: its candidates were neither scored nor failed. */
export function countCancelled(batch: BatchRequest, algorithm: string): void {
  candidates.inc({ model: batch.model, algorithm, outcome: 'cancelled' }, batch.candidates.length);
}
