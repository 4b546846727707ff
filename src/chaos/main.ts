// `npm run chaos`: a campaign run once without faults (the reference) and once under a seeded schedule of
// every kind of fault, then compared search by search; prints the reliability table and writes it into
// docs/reliability.md.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { PROJECT_ROOT } from '../embedded/paths';
import { compareRuns, runUnderFaults, type Comparison, type RunOutcome } from './harness';
import { FAULT_KINDS, faultSchedule } from './schedule';

/** Every algorithm, a single verifier and an ensemble, one budget: 8 searches per (class, seed). */
export function chaosSpec(searches: number, budget = 300, concurrency = 8): Record<string, unknown> {
  const combos = Math.ceil(searches / 8);
  const classes = Math.min(10, Math.ceil(Math.sqrt(combos)));
  const seeds = Math.ceil(combos / classes);
  return {
    name: 'chaos',
    dataset: { kind: 'gmm-classes', classes: Array.from({ length: classes }, (_, i) => i) },
    grid: {
      algorithms: ['random', { name: 'zero-order', n: 4 }, 'paths', { name: 'fk', k: 4 }],
      verifiers: ['gmm-classifier', 'gmm-classifier,gmm-oracle'],
      budgets: [budget],
    },
    evaluation: ['gmm-oracle'],
    seeds: Array.from({ length: seeds }, (_, i) => i),
    concurrency,
  };
}

/** One run under faults, compared with the reference. */
export interface FaultedRun {
  seed: number;
  /** How many faults the run's schedule holds: a campaign that ends sooner was not put through them all. */
  scheduled: number;
  outcome: RunOutcome;
  comparison: Comparison;
}

export interface ChaosReport {
  reference: RunOutcome;
  runs: FaultedRun[];
}

/** The reference once, then `runs` runs under the schedules of seeds `seed`, `seed + 1`, ... */
export async function chaosRun(options: { searches: number; seed: number; runs: number; workers: number; repeats: number; pace?: number; budget?: number; concurrency?: number; timeoutMs: number; log: (line: string) => void }): Promise<ChaosReport> {
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-chaos-'));
  const spec = chaosSpec(options.searches, options.budget, options.concurrency);
  options.log(`reference run (no faults) in ${dir}/reference`);
  const reference = await runUnderFaults({ spec, dir: path.join(dir, 'reference'), schedule: [], workers: options.workers, timeoutMs: options.timeoutMs, log: options.log });
  const runs: FaultedRun[] = [];
  for (let run = 0; run < options.runs; run++) {
    const seed = options.seed + run;
    const schedule = faultSchedule({ seed, repeats: options.repeats, workers: options.workers, pace: options.pace });
    options.log(`faulted run ${run + 1} of ${options.runs} (${schedule.length} faults, seed ${seed}) in ${dir}/faulted-${seed}`);
    const outcome = await runUnderFaults({ spec, dir: path.join(dir, `faulted-${seed}`), schedule, workers: options.workers, timeoutMs: options.timeoutMs, log: options.log });
    runs.push({ seed, scheduled: schedule.length, outcome, comparison: compareRuns(reference, outcome) });
  }
  return { reference, runs };
}

/** Whether a run ended as it must: every search once, done, identical, nothing left running or dead on its own. */
export function healthy(run: FaultedRun): boolean {
  const { outcome, comparison } = run;
  return [comparison.lost, comparison.duplicated, comparison.differing, comparison.failed, outcome.running, outcome.unexpectedExits].every((list) => list.length === 0) && !outcome.timedOut && outcome.cliExit === 0;
}

/**
 * The table of docs/reliability.md: a row per kind of fault, and the total over all runs. Lost,
 * duplicated, differing and failed searches and extra NFEs belong to whole runs, which every kind took
 * part in (a zero there is a zero for each kind; anything else cannot be put down to one kind and is
 * shown on the total only).
 */
export function reliabilityTable(report: ChaosReport): string {
  const { runs } = report;
  const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const injected = runs.flatMap((r) => r.outcome.injected);
  const longest = (faults: typeof injected) =>
    faults.length === 0 ? '-' : faults.some((f) => f.recoveryMs === null) ? 'never' : seconds(Math.max(...faults.map((f) => f.recoveryMs!)));
  const sum = (pick: (run: FaultedRun) => number) => runs.reduce((total, run) => total + pick(run), 0);
  const counts = [sum((r) => r.comparison.lost.length), sum((r) => r.comparison.duplicated.length), sum((r) => r.comparison.differing.length), sum((r) => r.comparison.failed.length)];
  const clean = counts.every((c) => c === 0);
  const searches = sum((r) => r.comparison.expected);
  const extra = sum((r) => r.comparison.extraExecutedNfe);
  const row = (name: string, faults: typeof injected, total: boolean) =>
    `| ${name} | ${faults.length} | ${runs.length} | ${searches} | ${clean || total ? counts.join(' | ') : '(total) | (total) | (total) | (total)'} | ${total ? extra : '(total)'} | ${longest(faults)} |`;
  return [
    '| fault | injected | runs | searches | lost | duplicated | differing | failed | extra executed NFEs | longest time to recover |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...FAULT_KINDS.map((kind) => row(kind, injected.filter((f) => f.event.kind === kind), false)),
    row('**all**', injected, true),
    '',
    `Workflows left running: ${sum((r) => r.outcome.running.length)}. Processes that exited on their own: ${sum((r) => r.outcome.unexpectedExits.length)}. ` +
      `Reference run ${seconds(report.reference.wallMs)}; faulted runs ${runs.map((r) => `${seconds(r.outcome.wallMs)} (seed ${r.seed})`).join(', ')}, each with its own start-up. ` +
      `Executed NFEs: ${report.reference.records.reduce((t, r) => t + r.nfeExecuted, 0)} without faults; ${runs.map((r) => r.comparison.executedNfe.faulted).join(', ')} under faults.`,
    '',
    runs.every(healthy) ? 'Every search done exactly once, bit-identical to the reference.' : 'NOT HEALTHY: see the lists printed below the table.',
  ].join('\n');
}

const BEGIN = '<!-- chaos-table:begin -->';
const END = '<!-- chaos-table:end -->';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      searches: { type: 'string', default: '200' },
      seed: { type: 'string', default: '11' },
      runs: { type: 'string', default: '1' },
      workers: { type: 'string', default: '2' },
      repeats: { type: 'string', default: '2' },
      budget: { type: 'string', default: '300' },
      'no-docs': { type: 'boolean', default: false },
    },
  });
  const number = (name: string, low: number) => {
    const value = Number(values[name as keyof typeof values]);
    if (!Number.isInteger(value) || value < low) {
      process.stderr.write(`--${name}: got ${values[name as keyof typeof values]}; want a whole number >= ${low}\n`);
      process.exit(2);
    }
    return value;
  };
  const options = { searches: number('searches', 8), seed: number('seed', 0), runs: number('runs', 1), workers: number('workers', 1), repeats: number('repeats', 1), budget: number('budget', 100) };
  const log = (line: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
  const report = await chaosRun({ ...options, timeoutMs: 20 * 60_000, log });
  const table = reliabilityTable(report);
  process.stdout.write(`${table}\n`);
  for (const run of report.runs) {
    const { seed, comparison, outcome } = run;
    for (const [what, list] of [['lost', comparison.lost], ['duplicated', comparison.duplicated], ['differing', comparison.differing], ['failed', comparison.failed], ['left running', outcome.running], ['unexpected exits', outcome.unexpectedExits]] as const) {
      if (list.length > 0) process.stdout.write(`seed ${seed}: ${what}: ${list.slice(0, 20).join('; ')}\n`);
    }
    if (outcome.injected.length < run.scheduled) process.stdout.write(`seed ${seed}: the campaign ended after ${outcome.injected.length} of its ${run.scheduled} faults; give it more --searches\n`);
    if (outcome.cliExit !== 0) process.stdout.write(`seed ${seed}: campaign run ended with ${outcome.timedOut ? 'the time limit' : `exit code ${outcome.cliExit}`}: ${outcome.cliStderr.trim().split('\n').pop()}\n`);
  }
  if (!values['no-docs']) {
    const docs = path.join(PROJECT_ROOT, 'docs', 'reliability.md');
    const text = readFileSync(docs, 'utf8');
    const stamp = `\`npm run chaos -- --searches ${options.searches} --seed ${options.seed} --runs ${options.runs} --workers ${options.workers} --repeats ${options.repeats} --budget ${options.budget}\`, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC:`;
    const start = text.indexOf(BEGIN);
    const end = text.indexOf(END);
    if (start >= 0 && end > start) writeFileSync(docs, `${text.slice(0, start + BEGIN.length)}\n${stamp}\n\n${table}\n${text.slice(end)}`);
  }
  return report.runs.every((run) => healthy(run) && run.outcome.injected.length === run.scheduled) ? 0 : 1;
}

if (require.main === module) {
  main().then((code) => process.exit(code), (error) => {
    process.stderr.write(`chaos: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
