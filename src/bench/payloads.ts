// What a search puts through Temporal: the largest payload (activity input or result, workflow input,
// continue-as-new input, result) and the history's size over every run of each search, for the paper's
// presets run on the embedded model through a real Temporal dev server; and, without running it, the
// payloads of a 50,000-search campaign plan. Targets: no payload over 256 KB, history <= 100 KB a search
// at the presets. Run with `npm run bench` (or `node dist/src/bench/payloads.js`).
import { temporal as proto } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { campaignItem, campaignSize, type CampaignInput } from '../campaign/plan';
import { createRun, type SearchResult } from '../search/run';
import type { SearchSpec } from '../search/spec';
import { startSearch } from '../temporal/client';
import { withBenchServices } from './harness';

const KB = 1024;

/** The paper's ImageNet settings (Ma et al. 2025, Sec. 4) on the embedded model: Heun, 25 search steps (49 NFEs), a 125-step final generation. */
const SIT = { searchSampler: { solver: 'heun' as const, steps: 25 }, finalSampler: { solver: 'heun' as const, steps: 125 } };

interface Case {
  label: string;
  spec: SearchSpec;
}

function base(seed: number): Pick<SearchSpec, 'model' | 'condition' | 'verifiers' | 'seed'> {
  return { model: 'gmm', condition: { classLabel: 3 }, verifiers: ['gmm-classifier'], seed };
}

export const CASES: Case[] = [
  { label: 'FK k=64, 250 steps, resampling every 2', spec: { ...base(1), algorithm: { name: 'fk', k: 64, resampleEvery: 2 }, searchSampler: { steps: 250 }, budgetNfe: 64 * 250 } },
  { label: 'FK k=64, 250 steps, resampling every 25', spec: { ...base(1), algorithm: { name: 'fk', k: 64, resampleEvery: 25 }, searchSampler: { steps: 250 }, budgetNfe: 64 * 250 } },
  // Paths-4, M = 8 with the 25-step Heun search sampler: 4 * 50 + 3 * 32 * 3 + 32 = 520 NFEs.
  { label: 'paths (paths-paper, sit-imagenet sampler)', spec: { ...base(2), ...SIT, algorithm: { name: 'paths', n: 4, m: 8, sigmaStart: 0.11, deltaF: 0.78, deltaB: 0.81 }, budgetNfe: 520 } },
  // A pivot and 50 iterations of 8 neighbours at 49 NFEs each, and the 249-NFE final generation.
  { label: 'zero-order, 50 moves of N=8 (sit-imagenet sampler)', spec: { ...base(3), ...SIT, algorithm: { name: 'zero-order', n: 8 }, budgetNfe: 49 * (1 + 50 * 8) + 249 } },
  { label: 'random, N=64 (sit-imagenet sampler)', spec: { ...base(4), ...SIT, algorithm: { name: 'random', n: 64 }, budgetNfe: 49 * 64 + 249 } },
];

export interface Measured {
  label: string;
  runs: number;
  events: number;
  historyBytes: number;
  largestPayload: number;
  largestPayloadWhat: string;
  nfe: SearchResult['nfe'];
}

function payloadBytes(payloads: proto.api.common.v1.IPayloads | null | undefined): number {
  return (payloads?.payloads ?? []).reduce((sum, p) => sum + (p.data?.length ?? 0) + Object.values(p.metadata ?? {}).reduce((m, v) => m + v.length, 0), 0);
}

/** Every payload an event carries, with what it is. */
function eventPayloads(event: proto.api.history.v1.IHistoryEvent): Array<[string, number]> {
  const found: Array<[string, number]> = [];
  const add = (what: string, payloads: proto.api.common.v1.IPayloads | null | undefined) => payloads && found.push([what, payloadBytes(payloads)]);
  add('workflow input', event.workflowExecutionStartedEventAttributes?.input);
  add('workflow result', event.workflowExecutionCompletedEventAttributes?.result);
  add('continue-as-new input', event.workflowExecutionContinuedAsNewEventAttributes?.input);
  add(`${event.activityTaskScheduledEventAttributes?.activityType?.name} input`, event.activityTaskScheduledEventAttributes?.input);
  add('activity result', event.activityTaskCompletedEventAttributes?.result);
  add('signal', event.workflowExecutionSignaledEventAttributes?.input);
  add('child input', event.startChildWorkflowExecutionInitiatedEventAttributes?.input);
  add('child result', event.childWorkflowExecutionCompletedEventAttributes?.result);
  return found;
}

async function measure(env: TestWorkflowEnvironment, taskQueue: string, c: Case, workflowId: string): Promise<Measured> {
  const handle = await startSearch(env.client, c.spec, { taskQueue, workflowId });
  const result = await handle.result();
  const measured: Measured = { label: c.label, runs: 0, events: 0, historyBytes: 0, largestPayload: 0, largestPayloadWhat: '', nfe: result.nfe };
  for await (const execution of env.client.workflow.list({ query: `WorkflowId = "${workflowId}"` })) {
    const history = await env.client.workflow.getHandle(workflowId, execution.runId).fetchHistory();
    measured.runs++;
    measured.events += history.events?.length ?? 0;
    measured.historyBytes += proto.api.history.v1.History.encode(history).finish().length;
    for (const event of history.events ?? []) {
      for (const [what, bytes] of eventPayloads(event)) {
        if (bytes > measured.largestPayload) Object.assign(measured, { largestPayload: bytes, largestPayloadWhat: what });
      }
    }
  }
  return measured;
}

/** The payloads of a 50,000-search campaign on the embedded model, from its plan alone. */
export function campaignPlan(): { searches: number; input: number; donePage: number; childInput: number; items: number } {
  const input: CampaignInput = {
    campaignId: 'campaign-plan-0123456789ab',
    name: 'plan',
    model: 'gmm',
    items: Array.from({ length: 10 }, (_, c) => ({ id: `class-${c}`, label: `class ${c}`, condition: { classLabel: c } })),
    algorithms: [{ name: 'random' }, { name: 'zero-order', n: 8 }, { name: 'paths' }, { name: 'fk' }],
    verifierSets: [['gmm-classifier'], ['gmm-oracle', 'gmm-classifier']],
    budgets: [200, 500, 1000, 2000, 5000],
    seeds: Array.from({ length: 125 }, (_, i) => i),
    evaluation: ['gmm-oracle', 'gmm-classifier', 'gmm-selfsup'],
    concurrency: 64,
    store: { kind: 'sqlite', path: '/var/lib/noisesearch/results.sqlite' },
    folder: '/var/lib/noisesearch/campaigns/campaign-plan-0123456789ab',
  };
  const page = Array.from({ length: 500 }, (_, i) => campaignItem(input, 49_500 + i).workflowId);
  const child = campaignItem(input, campaignSize(input) - 1);
  return {
    searches: campaignSize(input),
    input: JSON.stringify(input).length,
    donePage: JSON.stringify({ store: input.store, campaignId: input.campaignId, workflowIds: page }).length,
    childInput: JSON.stringify([child.spec, { indexed: true }]).length,
    items: input.items.length,
  };
}

async function main(): Promise<void> {
  await withBenchServices('payloads', async ({ env, fleet, taskQueue }) => {
    const model = await fleet.describe('gmm');
    console.log('Payloads and history per search through Temporal (embedded model; sizes in KB, history over all runs):');
    console.log(`  ${'search'.padEnd(52)} ${'runs'.padStart(4)} ${'events'.padStart(6)} ${'history'.padStart(8)}  largest payload`);
    for (const [i, c] of CASES.entries()) {
      createRun(c.spec, model);
      const m = await measure(env, taskQueue, c, `payloads-${process.pid}-${i}`);
      console.log(
        `  ${c.label.padEnd(52)} ${String(m.runs).padStart(4)} ${String(m.events).padStart(6)} ${(m.historyBytes / KB).toFixed(1).padStart(8)}  ${(m.largestPayload / KB).toFixed(1)} (${m.largestPayloadWhat})`,
      );
    }
    const plan = campaignPlan();
    console.log(`A ${plan.searches.toLocaleString('en-US')}-search campaign plan (${plan.items} items): workflow input ${(plan.input / KB).toFixed(1)} KB, a donePage of 500 searches ${(plan.donePage / KB).toFixed(1)} KB, a child's input ${(plan.childInput / KB).toFixed(2)} KB`);
  });
}

if (require.main === module) {
  main().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
