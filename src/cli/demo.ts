// The demo: random searches at a few budgets on a few classes of the embedded model, through Temporal
// and the model server, as one table. It shows the paper's first finding: the verifier score rises with
// the search budget.
import { startSearch } from '../temporal/client';
import type { SearchResult } from '../search/run';
import type { SearchSpec } from '../search/spec';
import { parseFlags } from './args';
import { openDeployment } from './deployment';

const CLASSES = [1, 4, 7];
const BUDGETS = [38, 190, 950, 3800];
const VERIFIER = 'gmm-classifier';
const DEMO_USAGE = 'noisesearch demo';

const DEMO_HELP = `Runs random searches on classes ${CLASSES.join(', ')} at budgets ${BUDGETS.join(', ')} NFEs with verifier ${VERIFIER},
through the embedded Temporal dev server and model server (started if needed, stopped after), and prints a table.

Usage: ${DEMO_USAGE}
`;

function demoSpec(classLabel: number, budgetNfe: number): SearchSpec {
  return { model: 'gmm', condition: { classLabel }, algorithm: { name: 'random' }, verifiers: [VERIFIER], budgetNfe, seed: 7 };
}

/** Log-posteriors crowd toward 0 as search improves; keep their differences visible. */
function formatScore(score: number): string {
  return Math.abs(score) >= 1e-3 || score === 0 ? score.toFixed(4) : score.toExponential(2);
}

function table(rows: SearchResult[]): string {
  const header = ['class', 'budget (NFEs)', 'best score', 'NFEs search / final / total', 'candidates', 'verifier s'];
  const body = rows.map((r) => [
    String(r.condition.classLabel),
    String(r.budget.nfe),
    formatScore(r.best.score),
    `${r.nfe.search} / ${r.nfe.final} / ${r.nfe.total}`,
    String(r.candidates),
    r.verifierSeconds.toFixed(4),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

export async function demoCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, {}, DEMO_USAGE);
  if (values.help) {
    process.stdout.write(DEMO_HELP);
    return 0;
  }
  const log = (line: string) => process.stdout.write(`${line}\n`);
  const deployment = await openDeployment({ temporal: true, log });
  try {
    if (deployment.uiUrl) log(`Temporal UI: ${deployment.uiUrl}`);
    const specs = CLASSES.flatMap((c) => BUDGETS.map((b) => demoSpec(c, b)));
    log(`running ${specs.length} random searches (${VERIFIER}) through Temporal...`);
    const started = Date.now();
    const handles = await Promise.all(specs.map((spec) => startSearch(deployment.client!, spec)));
    const results = await deployment.run(Promise.all(handles.map((h) => h.result())));
    log('');
    log(table(results));
    log('');
    log(`${results.length} searches in ${((Date.now() - started) / 1000).toFixed(1)} s; workflows: ${handles[0].workflowId} ...`);
    if (deployment.uiUrl) log(`Temporal UI (stopped with the demo; keep it with "noisesearch server start" first): ${deployment.uiUrl}`);
    return 0;
  } finally {
    await deployment.close();
  }
}
