// What durability costs: the wall time of one 2,000-NFE random search through Temporal against the
// in-process driver, on the same model server, alternated and measured side by side. Each run uses its
// own seed so neither driver gets the other's cache hits. Run with `npm run bench`.
import { runLocalSearch } from '../local';
import type { SearchSpec } from '../search/spec';
import { startSearch } from '../temporal/client';
import { withBenchServices } from './harness';

const REPEATS = Number(process.env.BENCH_REPEATS ?? 5);

function spec(seed: number): SearchSpec {
  return { model: 'gmm', condition: { classLabel: 3 }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier'], budgetNfe: 2000, seed };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function timed(work: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

async function main(): Promise<void> {
  await withBenchServices('bench', async ({ env, fleet, taskQueue }) => {
    await runLocalSearch(spec(1), fleet);
    await (await startSearch(env.client, spec(2), { taskQueue, workflowId: `bench-warmup-${process.pid}` })).result();
    const local: number[] = [];
    const temporal: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      local.push(await timed(() => runLocalSearch(spec(1000 + 2 * i), fleet)));
      temporal.push(
        await timed(async () => (await startSearch(env.client, spec(1001 + 2 * i), { taskQueue, workflowId: `bench-${process.pid}-${i}` })).result()),
      );
    }
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
    const model = await fleet.describe('gmm');
    const generation = model.defaultSolver === 'heun' ? 2 * model.defaultSteps - 1 : model.defaultSteps;
    console.log(`2,000-NFE random search (${Math.floor((2000 - generation) / generation)} candidates of ${generation} NFEs + the final generation), median of ${REPEATS}, alternated:`);
    console.log(`  in-process driver: ${median(local).toFixed(1)} ms   [${fmt(local)}]`);
    console.log(`  Temporal driver:   ${median(temporal).toFixed(1)} ms   [${fmt(temporal)}]`);
    console.log(`  ratio Temporal / in-process: ${(median(temporal) / median(local)).toFixed(2)}`);
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
