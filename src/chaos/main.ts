// `npm run chaos`: a campaign run once without faults (the reference) and once under a seeded schedule of
// every kind of fault, then compared search by search; prints the reliability table and writes it into
// docs/reliability.md.
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { mkdtempSync } from 'node:fs';
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

export interface ChaosReport {
  reference: RunOutcome;
  faulted: RunOutcome;
  comparison: Comparison;
}

export async function chaosRun(options: { searches: number; seed: number; workers: number; repeats: number; budget?: number; concurrency?: number; timeoutMs: number; log: (line: string) => void }): Promise<ChaosReport> {
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-chaos-'));
  const spec = chaosSpec(options.searches, options.budget, options.concurrency);
  options.log(`reference run (no faults) in ${dir}/reference`);
  const reference = await runUnderFaults({ spec, dir: path.join(dir, 'reference'), schedule: [], workers: options.workers, timeoutMs: options.timeoutMs, log: options.log });
  const schedule = faultSchedule({ seed: options.seed, repeats: options.repeats, workers: options.workers });
  options.log(`faulted run (${schedule.length} faults, seed ${options.seed}) in ${dir}/faulted`);
  const faulted = await runUnderFaults({ spec, dir: path.join(dir, 'faulted'), schedule, workers: options.workers, timeoutMs: options.timeoutMs, log: options.log });
  return { reference, faulted, comparison: compareRuns(reference, faulted) };
}

/**
 * The table of docs/reliability.md: a row per kind of fault, and the run's total. Lost, duplicated and
 * differing searches and extra NFEs belong to the whole run, which every kind took part in (a zero there
 * is a zero for each kind; anything else cannot be put down to one kind and is shown on the total only).
 */
export function reliabilityTable(report: ChaosReport): string {
  const { faulted, comparison } = report;
  const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const longest = (faults: typeof faulted.injected) =>
    faults.length === 0 ? '-' : faults.some((f) => f.recoveryMs === null) ? 'never' : seconds(Math.max(...faults.map((f) => f.recoveryMs!)));
  const counts = [comparison.lost.length, comparison.duplicated.length, comparison.differing.length, comparison.failed.length];
  const clean = counts.every((c) => c === 0);
  const row = (name: string, faults: typeof faulted.injected, total: boolean) =>
    `| ${name} | ${faults.length} | 1 | ${comparison.expected} | ${clean || total ? counts.join(' | ') : '(total) | (total) | (total) | (total)'} | ${total ? comparison.extraExecutedNfe : '(total)'} | ${longest(faults)} |`;
  const healthy = clean && faulted.running.length === 0 && faulted.unexpectedExits.length === 0 && !faulted.timedOut;
  return [
    '| fault | injected | runs | searches | lost | duplicated | differing | failed | extra executed NFEs | longest time to recover |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...FAULT_KINDS.map((kind) => row(kind, faulted.injected.filter((f) => f.event.kind === kind), false)),
    row('**all**', faulted.injected, true),
    '',
    `Workflows left running: ${faulted.running.length}. Processes that exited on their own: ${faulted.unexpectedExits.length}. ` +
      `Faulted run ${seconds(faulted.wallMs)}, reference run ${seconds(report.reference.wallMs)} (each with its own start-up); ` +
      `executed NFEs ${comparison.executedNfe.faulted} against ${comparison.executedNfe.reference} without faults.`,
    '',
    healthy ? 'Every search done exactly once, bit-identical to the reference.' : 'NOT HEALTHY: see the lists printed below the table.',
  ].join('\n');
}

const BEGIN = '<!-- chaos-table:begin -->';
const END = '<!-- chaos-table:end -->';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      searches: { type: 'string', default: '200' },
      seed: { type: 'string', default: '11' },
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
  const options = { searches: number('searches', 8), seed: number('seed', 0), workers: number('workers', 1), repeats: number('repeats', 1), budget: number('budget', 100) };
  const log = (line: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
  const report = await chaosRun({ ...options, timeoutMs: 20 * 60_000, log });
  const table = reliabilityTable(report);
  process.stdout.write(`${table}\n`);
  const { comparison, faulted } = report;
  for (const [what, list] of [['lost', comparison.lost], ['duplicated', comparison.duplicated], ['differing', comparison.differing], ['failed', comparison.failed], ['left running', faulted.running], ['unexpected exits', faulted.unexpectedExits]] as const) {
    if (list.length > 0) process.stdout.write(`${what}: ${list.slice(0, 20).join('; ')}\n`);
  }
  if (!values['no-docs']) {
    const docs = path.join(PROJECT_ROOT, 'docs', 'reliability.md');
    const text = readFileSync(docs, 'utf8');
    const stamp = `\`npm run chaos -- --searches ${options.searches} --seed ${options.seed} --workers ${options.workers} --repeats ${options.repeats} --budget ${options.budget}\`, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC:`;
    const start = text.indexOf(BEGIN);
    const end = text.indexOf(END);
    if (start >= 0 && end > start) writeFileSync(docs, `${text.slice(0, start + BEGIN.length)}\n${stamp}\n\n${table}\n${text.slice(end)}`);
  }
  const bad = comparison.lost.length + comparison.duplicated.length + comparison.differing.length + comparison.failed.length + faulted.running.length;
  return bad === 0 && !faulted.timedOut ? 0 : 1;
}

if (require.main === module) {
  main().then((code) => process.exit(code), (error) => {
    process.stderr.write(`chaos: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
