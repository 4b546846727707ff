// The demo: a small campaign on the embedded model through Temporal and the model server (a few classes,
// three algorithms, two search verifiers, four budgets), a table of what it found, and its report. It
// shows the paper's findings: scores rise with the search budget, and a verifier searched against
// scores best on itself (the cross table), with the population metrics exposing verifier hacking.
import * as path from 'node:path';
import { resolveCampaign } from '../campaign/spec';
import { describeEmbeddedModel } from '../embedded/describe';
import { stateDir } from '../embedded/paths';
import { openStore } from '../store';
import type { SearchRecord } from '../store/types';
import { runCampaign, writeCampaignReport } from './campaign';
import type { FlagValues } from './flags';

const DEMO_CAMPAIGN = {
  name: 'demo',
  dataset: { kind: 'gmm-classes', classes: [1, 4, 7] },
  grid: {
    algorithms: ['random', { name: 'zero-order', n: 4, t: 0.9 }, 'paths'],
    verifiers: ['gmm-classifier', 'gmm-oracle'],
    budgets: [200, 600, 2000, 6000],
  },
  evaluation: ['gmm-oracle', 'gmm-classifier', 'gmm-selfsup'],
  seeds: [0, 1],
  concurrency: 12,
};

export const DEMO_HELP = `Runs a demo campaign on the embedded Gaussian-mixture model: classes ${DEMO_CAMPAIGN.dataset.classes.join(', ')}, algorithms random, zero-order and paths,
search verifiers ${DEMO_CAMPAIGN.grid.verifiers.join(' and ')}, budgets ${DEMO_CAMPAIGN.grid.budgets.join(', ')} NFEs, seeds ${DEMO_CAMPAIGN.seeds.join(', ')}; through the embedded
Temporal dev server and model server (started if needed, stopped after). Prints a table and the path of the report.`;

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** The finished searches by grid cell, in the table's order. */
function cellsInOrder(records: SearchRecord[]): SearchRecord[][] {
  const cells = new Map<string, SearchRecord[]>();
  for (const r of records.filter((r) => r.status === 'done')) cells.set(r.cell, [...(cells.get(r.cell) ?? []), r]);
  return [...cells.values()].sort(
    (a, b) => a[0].algorithm.localeCompare(b[0].algorithm) || a[0].searchVerifiers.join().localeCompare(b[0].searchVerifiers.join()) || a[0].budgetNfe - b[0].budgetNfe,
  );
}

/** The table's rows as numbers, for --json. */
function jsonRows(records: SearchRecord[], evaluation: string[]) {
  return cellsInOrder(records).map((rs) => ({
    cell: rs[0].cell,
    algorithm: rs[0].algorithm,
    searchVerifiers: rs[0].searchVerifiers,
    budgetNfe: rs[0].budgetNfe,
    searches: rs.length,
    nfeTotal: mean(rs.map((r) => r.nfeTotal)),
    evaluation: Object.fromEntries(evaluation.map((v) => [v, mean(rs.map((r) => r.evaluation[v]))])),
    verifierSeconds: mean(rs.map((r) => r.verifierSeconds)),
  }));
}

function table(records: SearchRecord[], evaluation: string[]): string {
  const header = ['algorithm', 'searched with', 'budget', 'NFEs total', ...evaluation.map((v) => `eval ${v}`), 'verifier s'];
  const rows = cellsInOrder(records).map((rs) => [
    rs[0].algorithm,
    rs[0].searchVerifiers.join('+'),
    String(rs[0].budgetNfe),
    mean(rs.map((r) => r.nfeTotal)).toFixed(0),
    ...evaluation.map((v) => mean(rs.map((r) => r.evaluation[v])).toFixed(3)),
    mean(rs.map((r) => r.verifierSeconds)).toFixed(4),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export async function demoCommand(values: FlagValues): Promise<number> {
  // The table and the report's path are the result; what the services and the campaign say on the way is not.
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const print = (line: string) => process.stdout.write(`${line}\n`);
  const input = resolveCampaign(DEMO_CAMPAIGN, describeEmbeddedModel('gmm'), path.join(stateDir(), 'campaigns'));
  (values.json ? log : print)(`demo campaign ${input.campaignId}: mean scores of the final samples per grid cell (${input.items.length} classes x ${input.seeds.length} seeds each)`);
  const started = Date.now();
  const outcome = await runCampaign(input, { log });
  const seconds = (Date.now() - started) / 1000;
  if (outcome.failed) {
    log(`demo campaign failed: ${outcome.failed}`);
    return 1;
  }
  const store = await openStore(input.store);
  let records: SearchRecord[];
  try {
    records = (await store.searches(input.campaignId)).filter((r) => r.campaignId === input.campaignId);
  } finally {
    await store.close();
  }
  const ranNow = records.filter((r) => Date.parse(r.finishedAt) >= started).length;
  const report = await writeCampaignReport(input.campaignId, input.store, path.join(input.folder, 'report.html'));
  if (values.json) {
    print(JSON.stringify({ campaignId: input.campaignId, searches: records.length, ranNow, seconds, rows: jsonRows(records, input.evaluation), report }));
    return 0;
  }
  print('');
  print(table(records, input.evaluation));
  print('');
  print(`${records.length} searches (${ranNow} run now, ${records.length - ranNow} found in the store) in ${seconds.toFixed(1)} s`);
  print(`report: ${report}`);
  return 0;
}
