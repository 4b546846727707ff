// Cost, not only NFEs: the measured fleet seconds a search carries and the budget in seconds. First the pure
// core, with seconds counted by hand; then a simulated GPU server (--model sim) whose /metrics give an
// independent measure of what it spent, the CLI, the results store and the report.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { freePort, startModelServer, type StartedProcess } from '../src/embedded/processes';
import { createRun, finishRound, progressOf, startRound, type RunState, type SearchResult } from '../src/search/run';
import { SpecError, type SearchSpec } from '../src/search/spec';
import type { BatchOutcome } from '../src/search/types';
import { GEN, hashScore, MODEL, spec } from './drive';
import { FakeServer } from './fake-server';
import { stopServer, tempDir } from './helpers';

/** Denoising charged per candidate-NFE of a batch; FakeServer charges 0.001 s per verifier per batch. */
const SECONDS_PER_NFE = 0.002;
const VERIFIER_SECONDS_PER_BATCH = 0.001;

/**
 * Runs the search to its end as a driver would, each batch's outcome carrying its denoising seconds (or
 * none, as outcomes recorded before servers measured it).
 */
function run(searchSpec: SearchSpec, measureDenoising = true, after?: (state: RunState) => void): SearchResult {
  const server = new FakeServer({ scorer: hashScore });
  let state: RunState = createRun(searchSpec, MODEL);
  for (let rounds = 0; state.phase !== 'done'; rounds++) {
    assert.ok(rounds < 1000, 'the search did not end');
    const round = startRound(state);
    const outcomes = round.batches.map((batch): BatchOutcome => {
      const outcome = server.evaluate(batch);
      return measureDenoising ? { ...outcome, denoiseSeconds: SECONDS_PER_NFE * GEN * batch.candidates.length } : outcome;
    });
    state = finishRound(round.run, outcomes);
    after?.(state);
  }
  return state.result!;
}

describe('measured seconds in the search core', () => {
  // Random search, rounds of 32 candidates of 19 NFEs in 4 batches of 8: each round measures
  // 4 * (8 * 19 * 0.002 + 0.001) = 1.220 s over 608 NFEs; the final generation (19 NFEs) 0.038 + 0.001 s.
  const ROUND_SECONDS = 4 * (8 * GEN * SECONDS_PER_NFE + VERIFIER_SECONDS_PER_BATCH);
  const FINAL_SECONDS = GEN * SECONDS_PER_NFE + VERIFIER_SECONDS_PER_BATCH;
  const random = (budgetSeconds?: number) => spec({ name: 'random' }, { budgetNfe: 2000, ...(budgetSeconds !== undefined ? { budgetSeconds } : {}) });

  it('adds up denoising and each verifier per search', () => {
    // Without a seconds budget the NFEs bound it: 1,981 NFEs buy 32 + 32 + 32 + 8 candidates.
    const result = run(random());
    assert.equal(result.candidates, 104);
    const batches = 4 + 4 + 4 + 1;
    assert.ok(Math.abs(result.seconds!.denoise - (104 + 1) * GEN * SECONDS_PER_NFE) < 1e-9);
    assert.ok(Math.abs(result.seconds!.verifiers.v - (batches + 1) * VERIFIER_SECONDS_PER_BATCH) < 1e-9);
    assert.ok(Math.abs(result.seconds!.total - result.seconds!.denoise - result.verifierSeconds) < 1e-12);
    assert.equal(result.budget.seconds, undefined);
  });

  it('stops before the round predicted to pass the seconds budget, keeping the final generation in reserve', () => {
    // After round 1: 1.220 s spent, 1.220/608 s an NFE; round 2 is predicted to end at 1.220 + 1.220 + 19 * 1.220/608
    // = 2.478 s <= 3: it runs. Round 3 would end at 3.698 s > 3: the search stops and generates its winner.
    const result = run(random(3));
    assert.equal(result.candidates, 64);
    assert.equal(result.stopped, true);
    assert.equal(result.nfe.total, 64 * GEN + GEN);
    assert.deepEqual(result.budget, { nfe: 2000, seconds: 3 });
    assert.ok(Math.abs(result.seconds!.total - (2 * ROUND_SECONDS + FINAL_SECONDS)) < 1e-9);
    // A budget the NFEs run out before changes nothing.
    const roomy = run(random(100));
    const unbounded = run(random());
    assert.deepEqual([roomy.best, roomy.candidates, roomy.stopped], [unbounded.best, unbounded.candidates, unbounded.stopped]);
  });

  it('reports the seconds spent, and the seconds budget, in its progress', () => {
    const seen: Array<[number, number | undefined]> = [];
    run(random(3), true, (state) => {
      const progress = progressOf(state);
      seen.push([progress.secondsSpent, progress.budgetSeconds]);
    });
    const expected = [ROUND_SECONDS, 2 * ROUND_SECONDS, 2 * ROUND_SECONDS + FINAL_SECONDS];
    assert.equal(seen.length, expected.length);
    seen.forEach(([spent, budget], i) => {
      assert.ok(Math.abs(spent - expected[i]) < 1e-9, `after round ${i + 1}: ${spent} s`);
      assert.equal(budget, 3);
    });
  });

  it('runs the first round unpredicted, whatever the budget', () => {
    const result = run(random(0.001));
    assert.equal(result.candidates, 32);
    assert.ok(Math.abs(result.seconds!.total - (ROUND_SECONDS + FINAL_SECONDS)) < 1e-9);
  });

  it('counts outcomes without denoise seconds (recorded before servers measured them) as 0', () => {
    const result = run(random(), false);
    assert.equal(result.seconds!.denoise, 0);
    assert.ok(Math.abs(result.seconds!.total - result.verifierSeconds) < 1e-12);
    // Verifier seconds alone still pace a budget: 0.004 s a round.
    assert.equal(run(random(0.006), false).candidates, 32);
  });

  it('refuses a seconds budget that is not a positive finite number, in one line', () => {
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '5']) {
      assert.throws(
        () => createRun(random(bad as number), MODEL),
        (error: SpecError) => {
          assert.ok(error instanceof SpecError);
          assert.equal(error.problems.length, 1);
          assert.match(error.problems[0], /^budgetSeconds: .* must be a finite number of seconds above 0/);
          return true;
        },
      );
    }
  });
});

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], home: string, timeoutMs = 300_000): Promise<CliRun> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '' } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, ...output });
    }),
  );
}

/** The simulated server's engine seconds so far (its sleep included), from its own /metrics. */
async function busySeconds(metricsPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const line = text.split('\n').find((l) => l.startsWith('noisesearch_server_busy_seconds_total '));
  assert.ok(line, 'the server exports noisesearch_server_busy_seconds_total');
  return Number(line.split(' ')[1]);
}

/** Five rounds of random search at the embedded model's default sampler (55 NFEs a candidate). */
const BUDGET_NFE = 8000;

describe('measured seconds against a simulated GPU server', { timeout: 900_000 }, () => {
  const home = tempDir('cost');
  let server: StartedProcess | undefined;
  let metricsPort = 0;

  before(async () => {
    metricsPort = await freePort();
    server = await startModelServer({ logFile: path.join(home, 'sim.log'), sim: { batchMs: 20, itemMs: 1 }, metricsPort });
    const start = await cli(['server', 'start'], home);
    assert.equal(start.code, 0, start.stderr);
  });

  after(async () => {
    await cli(['server', 'stop'], home);
    await stopServer(server);
  });

  it('charges a search seconds of denoising and of each verifier, within what the server says it was busy', async () => {
    const before = await busySeconds(metricsPort);
    const search = await cli(['search', '--class', '3', '--budget', String(BUDGET_NFE), '--verifier', 'gmm-classifier,gmm-oracle', '--fleet', server!.address, '--json'], home);
    assert.equal(search.code, 0, search.stderr);
    const busy = (await busySeconds(metricsPort)) - before;
    const result: SearchResult = JSON.parse(search.stdout);
    const { seconds } = result;
    assert.ok(seconds!.denoise > 0 && seconds!.verifiers['gmm-classifier'] > 0 && seconds!.verifiers['gmm-oracle'] > 0, JSON.stringify(seconds));
    assert.ok(Math.abs(seconds!.total - seconds!.denoise - result.verifierSeconds) < 1e-9);
    // The server was busy with this search alone: its share of denoising is at most all of it, and most of it
    // (the rest is verifiers and the engine's bookkeeping).
    assert.ok(seconds!.denoise <= busy * (1 + 1e-9) + 1e-6, `denoise ${seconds!.denoise} s > busy ${busy} s`);
    assert.ok(seconds!.denoise >= 0.5 * busy, `denoise ${seconds!.denoise} s < half of busy ${busy} s`);
    assert.match(search.stdout, /"seconds":\{"denoise":/);
  });

  it('stops a --budget-seconds search before its NFE budget, at most one round past the seconds budget', async () => {
    // Measured with the same driver: how a round's batches merge on the server, and so its pace, differs between drivers.
    const args = ['search', '--class', '3', '--budget', String(BUDGET_NFE), '--verifier', 'gmm-classifier,gmm-oracle', '--fleet', server!.address, '--local', '--json'];
    // The first search on a fresh server pays its warm-up: the reference is the search run again.
    assert.equal((await cli(args, home)).code, 0);
    const unbounded = await cli(args, home);
    assert.equal(unbounded.code, 0, unbounded.stderr);
    const reference: SearchResult = JSON.parse(unbounded.stdout);
    const budgetSeconds = Number((0.4 * reference.seconds!.total).toPrecision(3));
    const search = await cli([...args, '--budget-seconds', String(budgetSeconds)], home);
    assert.equal(search.code, 0, search.stderr);
    const result: SearchResult = JSON.parse(search.stdout);
    assert.equal(result.stopped, true);
    assert.ok(result.nfe.total < BUDGET_NFE && result.candidates < reference.candidates, `${result.nfe.total} NFEs, ${result.candidates} candidates`);
    assert.deepEqual(result.budget, { nfe: BUDGET_NFE, seconds: budgetSeconds });
    // One round of random search (32 candidates, each costing what the final generation does) and the final
    // generation, at this search's pace.
    const perNfe = result.seconds!.total / result.nfe.total;
    assert.ok(result.seconds!.total <= budgetSeconds + perNfe * (32 + 1) * result.nfe.final, `${result.seconds!.total} s against a budget of ${budgetSeconds} s`);
    const text = await cli(['search', '--class', '3', '--budget', String(BUDGET_NFE), '--budget-seconds', String(budgetSeconds), '--fleet', server!.address, '--local'], home);
    assert.match(text.stdout, /fleet time {5}\d+\.\d{4} s \(denoising \d+\.\d{4} s \+ verifiers \d+\.\d{4} s\) of [\d.]+ s/);
  });

  it('refuses a bad --budget-seconds in one line, exit code 2, before anything runs', async () => {
    const fresh = tempDir('cost-refused');
    for (const value of ['0', '-2', 'soon', 'Infinity', '1e999', '']) {
      const run = await cli(['search', '--class', '3', `--budget-seconds=${value}`], fresh);
      assert.equal(run.code, 2, `${value}: ${run.stderr}`);
      assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
      assert.match(run.stderr, /--budget-seconds: ".*" is not a number of seconds above 0/);
      assert.equal(run.stdout, '');
    }
    assert.ok(!existsSync(path.join(fresh, 'services.json')), 'nothing was started');
  });

  it('keeps the seconds in the results store and plots quality against them in the report', async () => {
    const specFile = path.join(home, 'cost.json');
    const store = path.join(home, 'results.sqlite');
    writeFileSync(specFile, JSON.stringify({
      name: 'cost',
      dataset: { kind: 'gmm-classes', classes: [2, 5] },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier', ['gmm-classifier', 'gmm-oracle']], budgets: [200, 400] },
      seeds: [0],
      concurrency: 4,
      results: { path: store, folder: path.join(home, 'cost') },
    }));
    const campaign = await cli(['campaign', 'run', specFile, '--fleet', server!.address], home);
    assert.equal(campaign.code, 0, campaign.stderr);
    const campaignId = campaign.stdout.match(/campaign (campaign-cost-[0-9a-f]{12}) finished/)![1];
    const db = new Database(store, { readonly: true });
    const rows = db.prepare('SELECT status, denoise_seconds, verifier_seconds_by_name, search_verifiers FROM searches WHERE campaign_id = ?').all(campaignId) as Array<Record<string, string | number>>;
    db.close();
    assert.equal(rows.length, 2 * 2 * 2);
    for (const row of rows) {
      assert.equal(row.status, 'done');
      assert.ok((row.denoise_seconds as number) > 0);
      const byName = JSON.parse(row.verifier_seconds_by_name as string);
      assert.deepEqual(Object.keys(byName).sort(), JSON.parse(row.search_verifiers as string).sort());
      assert.ok(Object.values(byName).every((s) => (s as number) > 0));
    }
    const report = await cli(['report', campaignId], home);
    assert.equal(report.code, 0, report.stderr);
    const html = readFileSync(report.stdout.trim(), 'utf8');
    assert.ok(html.includes('mean fleet seconds per search'), 'a scaling curve against fleet seconds');
    assert.ok(html.includes('Measured fleet seconds per search'), 'the seconds table');
  });
});
