// A campaign across a fleet: four simulated GPU servers (--model sim) behind one worker, run with the real
// CLI. Every search must come out exactly as the same search does on one embedded gmm server through the
// in-process driver (the result does not depend on the fleet's size, which server ran which batch, or what
// else shared the batch); every server must get work; and the servers' dynamic batchers must have merged
// rounds of different searches into one engine run.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cli, scrapeServer, startServers, writeSpec, type SimServer } from '../src/bench/sim-fleet';
import { stopProcess } from '../src/embedded/processes';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import { openStore } from '../src/store';
import { stopServer, tempDir, withModelServer, withTemporal } from './helpers';

/** Candidates a search sends per round: a batch of more came from more than one search. */
const ROUND = 8;
const SERVERS = 4;

/** What a search computed; the measured seconds and the executed NFEs depend on the servers' caches and clocks. */
function computed(result: SearchResult): object {
  const { verifierSeconds: _v, verifierCosts: _c, seconds: _s, nfe, ...rest } = result;
  const { executed: _e, ...logical } = nfe;
  return { ...rest, nfe: logical };
}

async function batchCounts(server: SimServer): Promise<{ batches: number; merged: number }> {
  const response = await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`, { signal: AbortSignal.timeout(5_000) });
  const text = await response.text();
  const upToOneRound = Number(new RegExp(`^noisesearch_server_batch_candidates_bucket\\{le="${ROUND}\\.0"\\} (\\S+)$`, 'm').exec(text)?.[1]);
  const { batches } = await scrapeServer(server.metricsPort);
  assert.ok(Number.isFinite(upToOneRound) && Number.isFinite(batches), `no batch histogram on ${server.address}`);
  return { batches, merged: batches - upToOneRound };
}

describe('a campaign on four simulated servers', { timeout: 240_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let reference: Awaited<ReturnType<typeof withModelServer>>;
  let sims: SimServer[];
  const dir = tempDir('fleet-scale');

  before(async () => {
    [temporal, reference, sims] = await Promise.all([
      withTemporal(),
      withModelServer(),
      // A batch costs 40 ms however few candidates it has: rounds arriving meanwhile wait and are merged.
      startServers({ dir, servers: SERVERS, pace: { batchMs: 40, itemMs: 1 }, maxBatch: 64, maxConcurrency: 16 }),
    ]);
  });

  after(async () => {
    await Promise.all((sims ?? []).map((s) => stopProcess(s.pid)));
    await stopServer(reference);
    await temporal?.stop();
  });

  it('gives every search the result it has on one gmm server, uses every server, and merges searches into batches', async () => {
    const spec = writeSpec(dir, {
      name: 'fleet-scale',
      dataset: { kind: 'gmm-classes', classes: [1, 4, 7] },
      grid: {
        algorithms: [{ name: 'random', n: 3 * ROUND, roundSize: ROUND }, { name: 'zero-order', n: ROUND }],
        verifiers: ['gmm-classifier'],
        budgets: [2000],
      },
      evaluation: ['gmm-classifier'],
      seeds: [0, 1, 2, 3],
      concurrency: 24,
    });
    const run = await cli(['campaign', 'run', spec, '--temporal', temporal.address, '--fleet', sims.map((s) => s.address).join(',')], dir, 180_000);
    assert.equal(run.code, 0, run.stderr);

    const store = await openStore({ kind: 'sqlite', path: path.join(dir, 'fleet-scale.sqlite') });
    const rows = await store.searches(/campaign (campaign-\S+) finished/.exec(run.stdout)![1]).finally(() => store.close());
    assert.equal(rows.length, 3 * 2 * 4, 'one row per class, algorithm and seed');
    assert.deepEqual(rows.filter((r) => r.status !== 'done').map((r) => r.error), []);

    const one = new Fleet([reference.address]);
    try {
      for (const row of rows) {
        const alone = await runLocalSearch(row.spec, one);
        assert.deepEqual(computed(row.result!), computed(alone), `${row.workflowId}: on four simulated servers as on one gmm server`);
      }
    } finally {
      one.close();
    }

    const counts = await Promise.all(sims.map(batchCounts));
    for (const [i, c] of counts.entries()) assert.ok(c.batches > 0, `server ${i} (${sims[i].address}) ran no batch`);
    const merged = counts.reduce((sum, c) => sum + c.merged, 0);
    assert.ok(merged > 0, `no batch held more than one search's round of ${ROUND}: ${JSON.stringify(counts)}`);
  });
});
