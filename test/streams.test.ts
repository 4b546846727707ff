// Results on stdout, messages on stderr, --json on every command that prints a result: the CLI as real
// processes on the embedded services, its output read through a real shell pipe.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { tempDir, waitUntil } from './helpers';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The environment of every command here: a throw-away state folder, no TTY, no debug stacks. */
function env(home: string): NodeJS.ProcessEnv {
  return { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', CI: 'true' };
}

function cliProcess(args: string[], home: string) {
  const child = spawn(process.execPath, [BIN, ...args], { env: env(home) });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const done = new Promise<Run>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, ...output })));
  return { child, output, done };
}

/** A command, killed (and the test failed) if it has not exited within `timeoutMs`. */
async function cli(args: string[], home: string, timeoutMs = 60_000): Promise<Run> {
  const run = cliProcess(args, home);
  const timer = setTimeout(() => run.child.kill('SIGKILL'), timeoutMs);
  const result = await run.done;
  clearTimeout(timer);
  return result;
}

/** A shell pipeline, as a user types it: `set -o pipefail` so that a failed noisesearch fails it. */
async function shell(script: string, home: string, timeoutMs = 60_000): Promise<Run> {
  const child = spawn('bash', ['-c', `set -o pipefail; ${script}`], { env: { ...env(home), NOISESEARCH: `${process.execPath} ${BIN}` } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  clearTimeout(timer);
  return { code, ...output };
}

/** What the results store holds for the campaign, read with SQL rather than through noisesearch. */
function storedSearches(file: string, campaignId: string): Array<{ workflow_id: string; status: string; nfe_total: number }> {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT workflow_id, status, nfe_total FROM searches WHERE campaign_id = ? ORDER BY workflow_id').all(campaignId) as Array<{ workflow_id: string; status: string; nfe_total: number }>;
  } finally {
    db.close();
  }
}

/** `work`, or its failure with what the commands involved printed: a timeout alone says nothing of why. */
async function explained<T>(work: Promise<T>, outputs: () => string): Promise<T> {
  try {
    return await work;
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${outputs()}`);
  }
}

// A terminal's control sequences (colour, erase line) and a carriage return: none belongs in a log or a pipe.
const CONTROL = /\x1b\[|\r/;

describe('output streams and --json', { timeout: 480_000 }, () => {
  const home = tempDir('streams');
  const dir = tempDir('streams-campaign');
  const storeFile = path.join(dir, 'results.sqlite');
  let campaignId = '';
  let temporal = '';

  before(async () => {
    const start = await cli(['server', 'start', '--json'], home, 120_000);
    assert.equal(start.code, 0, start.stderr);
    const started = JSON.parse(start.stdout);
    assert.match(started.temporal, /^127\.0\.0\.1:\d+$/);
    temporal = started.temporal;
    assert.equal(started.fleet.length, 1);
    assert.equal(started.state, home);
  });

  after(async () => {
    await cli(['server', 'stop'], home);
  });

  it('campaign run --json: messages and progress on stderr, plain (no TTY), one JSON summary on stdout', async () => {
    const spec = path.join(dir, 'spec.json');
    writeFileSync(spec, JSON.stringify({
      name: 'streams',
      dataset: { kind: 'gmm-classes', classes: [2, 5] },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [200, 400] },
      evaluation: ['gmm-oracle'],
      seeds: [0],
      concurrency: 4,
      results: { path: storeFile, folder: path.join(dir, 'out') },
    }));
    const run = await cli(['campaign', 'run', spec, '--json'], home, 120_000);
    assert.equal(run.code, 0, run.stderr);
    const summary = JSON.parse(run.stdout);
    campaignId = summary.campaignId;
    assert.match(campaignId, /^campaign-streams-[0-9a-f]{12}$/);
    const stored = storedSearches(storeFile, campaignId);
    assert.equal(stored.length, 2 * 2);
    assert.deepEqual(
      { status: summary.status, total: summary.total, done: summary.done, failed: summary.failed },
      { status: 'completed', total: stored.length, done: stored.filter((s) => s.status === 'done').length, failed: 0 },
    );
    assert.equal(summary.nfe, stored.reduce((sum, s) => sum + s.nfe_total, 0));
    assert.equal(summary.report, `noisesearch report ${campaignId}`);
    // The description and the progress lines went to stderr, as plain lines.
    assert.match(run.stderr, new RegExp(`campaign ${campaignId}: `));
    // The last progress line, a sentence: a bar is drawn only on a terminal.
    assert.match(run.stderr, /4 of 4 searches finished/);
    assert.doesNotMatch(run.stderr, /\[#*\.*\]/, 'no progress bar off a TTY');
    assert.doesNotMatch(run.stderr, CONTROL);
    assert.equal(run.stdout.trim().split('\n').length, 1, 'stdout holds the summary alone');
  });

  it('export writes its rows to stdout, which a shell pipe hands whole to Python\'s csv reader', async () => {
    const piped = await shell(
      `$NOISESEARCH export ${campaignId} --format csv | python3 -c 'import csv, json, sys; rows = list(csv.DictReader(sys.stdin)); print(json.dumps({"count": len(rows), "ids": sorted(r["workflow_id"] for r in rows), "status": sorted({r["status"] for r in rows})}))'`,
      home,
    );
    assert.equal(piped.code, 0, piped.stderr);
    const read = JSON.parse(piped.stdout);
    const stored = storedSearches(storeFile, campaignId);
    assert.equal(read.count, stored.length);
    assert.deepEqual(read.ids, stored.map((s) => s.workflow_id));
    assert.deepEqual(read.status, ['done']);
    assert.equal(piped.stderr, '', 'nothing but rows, and nothing on stderr');

    // stdout is the CSV and nothing else: a header and one CRLF-ended row per search.
    const csv = await cli(['export', campaignId, '--format', 'csv'], home);
    assert.equal(csv.code, 0, csv.stderr);
    assert.equal(csv.stderr, '');
    const lines = csv.stdout.split('\r\n');
    assert.equal(lines.pop(), '', 'ends with a line break');
    assert.equal(lines.length, stored.length + 1);
    assert.match(lines[0], /^workflow_id,campaign_id,/);

    const jsonl = await cli(['export', campaignId, '--format', 'jsonl'], home);
    assert.equal(jsonl.code, 0, jsonl.stderr);
    const rows = jsonl.stdout.trim().split('\n').map((line) => JSON.parse(line));
    assert.deepEqual(rows.map((r) => r.workflow_id).sort(), stored.map((s) => s.workflow_id));

    // --out: the file holds what stdout would have, stdout is empty and stderr names the file.
    const file = path.join(dir, 'exports', 'rows.csv');
    const toFile = await cli(['export', campaignId, '--format', 'csv', '--out', file], home);
    assert.equal(toFile.code, 0, toFile.stderr);
    assert.equal(toFile.stdout, '');
    assert.equal(toFile.stderr.trim(), file);
    assert.equal(readFileSync(file, 'utf8'), csv.stdout);
  });

  it('campaign status --json counts what the store holds; report --json names the file', async () => {
    const status = await cli(['campaign', 'status', campaignId, '--json'], home);
    assert.equal(status.code, 0, status.stderr);
    const state = JSON.parse(status.stdout);
    const stored = storedSearches(storeFile, campaignId);
    assert.equal(state.campaignId, campaignId);
    assert.equal(state.status, 'not running');
    assert.equal(state.done, stored.filter((s) => s.status === 'done').length);
    assert.equal(state.failed, stored.filter((s) => s.status === 'failed').length);
    assert.deepEqual(Object.keys(state.cells).length, 2, 'one cell per budget');
    assert.equal(Object.values(state.cells as Record<string, { done: number }>).reduce((sum, c) => sum + c.done, 0), state.done);
    assert.deepEqual(state.failures, []);

    const report = await cli(['report', campaignId, '--json'], home);
    assert.equal(report.code, 0, report.stderr);
    const { report: file } = JSON.parse(report.stdout);
    assert.ok(existsSync(file), file);
    assert.match(readFileSync(file, 'utf8'), /<html/i);
  });

  it('search prints only its result on stdout; the Temporal UI line and the rest go to stderr', async () => {
    const human = await cli(['search', '--class', '3', '--budget', '200', '--seed', '11'], home);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^search-\S+ \(temporal\)\n/);
    assert.match(human.stdout, /best score/);
    assert.doesNotMatch(human.stdout, /Temporal UI|starting|http:\/\//);
    assert.match(human.stderr, /Temporal UI: http:\/\/127\.0\.0\.1:\d+\//);
    assert.doesNotMatch(human.stderr, CONTROL);

    const json = await cli(['search', '--class', '3', '--budget', '200', '--seed', '11', '--json'], home);
    assert.equal(json.code, 0, json.stderr);
    const result = JSON.parse(json.stdout);
    assert.equal(result.budget.nfe, 200);
    assert.equal(result.workflowId, /^(\S+)/.exec(human.stdout)![1], 'the same search, attached to');
  });

  it('progress, budget and stop take --json on a running search; stop says its message on stderr without it', async () => {
    // Budgets far beyond what the test waits for: each search runs (its worker in its command) until stopped.
    const workflowIds = [`streams-json-${process.pid}`, `streams-human-${process.pid}`];
    const searches = workflowIds.map((id, i) => cliProcess(['search', '--class', String(4 + i), '--budget', '2000000', '--workflow-id', id, '--json'], home));
    try {
      const [viaJson, viaMessage] = workflowIds;
      // Named, not found through the state folder: a half-second readiness probe there is no test of streams.
      const at = ['--temporal', temporal];
      let last: Run | undefined;
      const progress = await explained(waitUntil('the search to report progress', async () => {
        last = await cli(['progress', viaJson, '--json', ...at], home, 20_000);
        if (last.code !== 0) return null;
        const p = JSON.parse(last.stdout);
        return p && p.nfeSpent > 0 ? p : null;
        // Two commands starting their workers side by side take long on a loaded 2-core machine.
      }, 120_000, 500), () => `last progress: ${JSON.stringify(last)}\nsearch: ${JSON.stringify(searches[0].output)} exit ${searches[0].child.exitCode}`);
      assert.equal(progress.budget, 2_000_000);
      assert.equal(progress.stopRequested, false);

      const budget = await cli(['budget', viaJson, '1900000', '--json', ...at], home, 20_000);
      assert.equal(budget.code, 0, budget.stderr);
      assert.equal(JSON.parse(budget.stdout).budget, 1_900_000);

      const stop = await cli(['stop', viaJson, '--json', ...at], home, 20_000);
      assert.equal(stop.code, 0, stop.stderr);
      assert.deepEqual(JSON.parse(stop.stdout), { workflowId: viaJson, stopRequested: true });
      assert.equal(stop.stderr, '');
      // Without --json: a message for the person, on stderr; stdout stays empty.
      const human = await cli(['stop', viaMessage, ...at], home, 20_000);
      assert.equal(human.code, 0, human.stderr);
      assert.equal(human.stdout, '');
      assert.match(human.stderr, new RegExp(`asked ${viaMessage} to stop`));

      for (const search of searches) {
        const ended = await waitUntil('a stopped search to exit', async () => (search.child.exitCode !== null ? search.done : null), 60_000, 200);
        assert.equal(ended.code, 0, ended.stderr);
        const result = JSON.parse(ended.stdout);
        assert.equal(result.stopped, true);
        assert.ok(result.nfe.total < 1_900_000);
      }
    } finally {
      for (const search of searches) search.child.kill('SIGKILL');
    }
  });

  it('campaign status --json while it runs, cancel --json, and run --json reports the cancelled campaign', async () => {
    const spec = path.join(dir, 'long.json');
    // A budget far beyond what the test waits for: the campaign runs until cancelled.
    writeFileSync(spec, JSON.stringify({
      name: 'streams-long',
      dataset: { kind: 'gmm-classes', classes: [1] },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [2_000_000] },
      seeds: [0, 1],
      concurrency: 2,
      results: { path: path.join(dir, 'long.sqlite'), folder: path.join(dir, 'long') },
    }));
    // On the embedded services (no --temporal): this command's worker runs the searches.
    const run = cliProcess(['campaign', 'run', spec, '--json'], home);
    try {
      const id = await waitUntil('the campaign ID', async () => /campaign (campaign-streams-long-[0-9a-f]{12}): /.exec(run.output.stderr)?.[1], 60_000, 100);
      let last: Run | undefined;
      const state = await explained(waitUntil('the campaign to run its searches', async () => {
        last = await cli(['campaign', 'status', id, '--json', '--temporal', temporal], home, 20_000);
        if (last.code !== 0) return null;
        const s = JSON.parse(last.stdout);
        return s.status === 'running' && s.running === 2 ? s : null;
      }, 120_000, 500), () => `last status: ${JSON.stringify(last)}\ncampaign run: ${JSON.stringify(run.output)} exit ${run.child.exitCode}`);
      assert.deepEqual({ done: state.done, failed: state.failed, total: state.total, cells: Object.keys(state.cells).length }, { done: 0, failed: 0, total: 2, cells: 1 });

      const cancel = await cli(['campaign', 'cancel', id, '--json', '--temporal', temporal], home, 20_000);
      assert.equal(cancel.code, 0, cancel.stderr);
      assert.deepEqual(JSON.parse(cancel.stdout), { campaignId: id, cancelled: true });

      const ended = await waitUntil('the cancelled campaign run to exit', async () => (run.child.exitCode !== null ? run.done : null), 60_000, 200);
      assert.equal(ended.code, 1, ended.stderr);
      const summary = JSON.parse(ended.stdout);
      assert.equal(summary.campaignId, id);
      assert.equal(summary.status, 'failed');
      assert.match(summary.error, /cancel/i);
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  it('server status and stop take --json; stop\'s message goes to stderr', async () => {
    const status = await cli(['server', 'status', '--json'], home);
    assert.equal(status.code, 0, status.stderr);
    const { services } = JSON.parse(status.stdout);
    assert.deepEqual(services.map((s: { name: string; state: string }) => `${s.name} ${s.state}`).sort(), ['modelServer ready', 'temporal ready']);

    const stop = await cli(['server', 'stop', '--json'], home);
    assert.equal(stop.code, 0, stop.stderr);
    assert.deepEqual(JSON.parse(stop.stdout).stopped.sort(), ['modelServer', 'temporal']);
    const nothing = await cli(['server', 'stop'], home);
    assert.equal(nothing.stdout, '');
    assert.match(nothing.stderr, /nothing was running/);
  });
});
