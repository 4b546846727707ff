// Cost, not only NFEs: what each algorithm's searches measured on the fleet at the same NFE budget, with one
// search verifier and with an ensemble of two: the denoising seconds, each verifier's, and the share the
// verifiers take. Searches run in-process against one embedded gmm model server (real computation: the
// seconds are the server's own measurements, not wall time). Run with `npm run bench` (or
// `node dist/src/bench/cost.js`); BENCH_QUICK=1 runs one seed per cell. stdout is the table; progress goes to
// stderr.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { startModelServer, stopProcess } from '../embedded/processes';
import { Fleet } from '../fleet/client';
import { runLocalSearch } from '../local';
import type { SearchResult } from '../search/run';
import type { AlgorithmSpec } from '../search/spec';

const QUICK = process.env.BENCH_QUICK === '1';
const SEEDS = Number(process.env.BENCH_COST_SEEDS ?? (QUICK ? 1 : 12));
const BUDGET_NFE = 2000;

const ALGORITHMS: AlgorithmSpec[] = [{ name: 'random' }, { name: 'zero-order', n: 8 }, { name: 'paths' }, { name: 'fk' }];
const SINGLE = ['gmm-classifier'];
const ENSEMBLE = ['gmm-classifier', 'gmm-oracle'];
const VERIFIERS = [SINGLE, ENSEMBLE];
const ALL_VERIFIERS = [...new Set(VERIFIERS.flat())];

interface Cell {
  algorithm: string;
  verifiers: string[];
  results: SearchResult[];
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** The median: a search preempted on this shared machine moves a mean of millisecond figures, not a median. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const ms = (seconds: number) => (seconds * 1000).toFixed(1);

function table(cells: Cell[]): string {
  const head = ['algorithm', 'search verifiers', 'NFEs', 'denoise ms', ...ALL_VERIFIERS.map((v) => `${v} ms`), 'verifiers ms', 'fleet ms', 'verifier share', 'verifiers / single', 'fleet / single'];
  const verifierSeconds = (r: SearchResult) => r.seconds!.total - r.seconds!.denoise;
  const rows = cells.map((cell) => {
    const seconds = cell.results.map((r) => r.seconds!);
    const verifiers = median(cell.results.map(verifierSeconds));
    const total = median(seconds.map((s) => s.total));
    const single = cells.find((c) => c.algorithm === cell.algorithm && c.verifiers.join('+') === SINGLE.join('+'))!;
    return [
      cell.algorithm,
      cell.verifiers.join('+'),
      median(cell.results.map((r) => r.nfe.total)).toFixed(0),
      ms(median(seconds.map((s) => s.denoise))),
      ...ALL_VERIFIERS.map((v) => (cell.verifiers.includes(v) ? ms(median(seconds.map((s) => s.verifiers[v] ?? 0))) : '-')),
      ms(verifiers),
      ms(total),
      `${(100 * median(cell.results.map((r) => verifierSeconds(r) / r.seconds!.total))).toFixed(1)} %`,
      (verifiers / median(single.results.map(verifierSeconds))).toFixed(2),
      (total / median(single.results.map((r) => r.seconds!.total))).toFixed(2),
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cols: string[]) => `| ${cols.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(head), `|${widths.map((w, i) => (i < 2 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...rows.map(line)].join('\n');
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-bench-cost-'));
  const server = await startModelServer({ logFile: path.join(dir, 'server.log') });
  const fleet = new Fleet([server.address]);
  const started = Date.now();
  try {
    // One search first, not counted: the server's first calls pay its warm-up.
    await runLocalSearch({ model: 'gmm', condition: { classLabel: 0 }, algorithm: { name: 'random' }, verifiers: ENSEMBLE, budgetNfe: BUDGET_NFE, seed: 999 }, fleet);
    const cells: Cell[] = [];
    for (const algorithm of ALGORITHMS) {
      for (const verifiers of VERIFIERS) {
        const results: SearchResult[] = [];
        // Seeds of its own per cell: a cell searching the noises another cell searched would find them in
        // the server's trajectory cache and measure almost no denoising.
        for (let s = 0; s < SEEDS; s++) {
          const seed = 1000 * cells.length + s;
          results.push(await runLocalSearch({ model: 'gmm', condition: { classLabel: 3 }, algorithm, verifiers, budgetNfe: BUDGET_NFE, seed }, fleet));
        }
        cells.push({ algorithm: algorithm.name, verifiers, results });
        log(`cost: ${algorithm.name} with ${verifiers.join('+')} done (${((Date.now() - started) / 1000).toFixed(0)} s)`);
      }
    }
    const lines = [
      `Measured fleet seconds per search, median of ${SEEDS} seed${SEEDS === 1 ? '' : 's'} per cell: in-process driver, one embedded gmm model server, class 3, budget ${BUDGET_NFE} NFEs.`,
      'Every cell of an algorithm spends the same NFEs; "verifiers / single" and "fleet / single" are its median verifier and fleet seconds over those of the same algorithm with gmm-classifier alone.',
      '',
      table(cells),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    fleet.close();
    await stopProcess(server.pid);
  }
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
