// Logs kept out of the terminal, and stuck workflows (workflow tasks that keep failing) reported once, in
// words, by `server status`, `campaign status`, the dashboard and the `worker` command: real processes, the
// embedded Temporal dev server and model server in a throw-away state folder.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { startDashboard } from '../src/dashboard/server';
import { TASK_QUEUE } from '../src/temporal/constants';
import { tempDir, uniqueId, waitUntil } from './helpers';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');
/** What the TypeScript SDK says when a workflow's type is not in the worker's bundle: the error the reports must carry. */
const UNREGISTERED = /Failed to initialize workflow of type 'noSuchWorkflow'/;
/** SDK or core log lines, or colour codes, on a terminal. */
const SDK_LINES = /\[(WARN|ERROR|INFO|DEBUG)\]|temporalio|sdkComponent|Failing workflow task|\x1b\[/;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cliProcess(args: string[], home: string, env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', NOISESEARCH_LOG_LEVEL: '', ...env } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const done = new Promise<Run>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, ...output })));
  return { child, output, done };
}

/** A command that must end: killed, and the test failed, if it overstays `timeoutMs`. */
async function cli(args: string[], home: string, env: Record<string, string> = {}, timeoutMs = 120_000): Promise<Run> {
  const run = cliProcess(args, home, env);
  const timer = setTimeout(() => run.child.kill('SIGKILL'), timeoutMs);
  try {
    const result = await run.done;
    assert.notEqual(result.code, -1, `${args.join(' ')} overstayed ${timeoutMs} ms: ${result.stderr}`);
    return result;
  } finally {
    clearTimeout(timer);
  }
}

const count = (text: string, needle: string) => text.split(needle).length - 1;

describe('logs and stuck workflows', { timeout: 300_000 }, () => {
  const home = tempDir('stuck');
  const logFile = path.join(home, 'noisesearch.log');
  const stuckId = uniqueId('stuck');
  let temporalAddress: string;
  let modelAddress: string;
  let connection: Connection;
  let client: Client;
  let campaignId: string;

  /** What the log file gained while `work` ran. */
  async function logDuring(work: () => Promise<void>): Promise<string> {
    const from = existsSync(logFile) ? statSync(logFile).size : 0;
    await work();
    return readFileSync(logFile, 'utf8').slice(from);
  }

  async function pendingAttempts(workflowId: string): Promise<number> {
    return (await client.workflow.getHandle(workflowId).describe()).raw.pendingWorkflowTask?.attempt ?? 0;
  }

  before(async () => {
    const start = await cli(['server', 'start'], home);
    assert.equal(start.code, 0, start.stderr);
    temporalAddress = /Temporal (\S+)/.exec(start.stdout)![1];
    modelAddress = /model server (\S+)/.exec(start.stdout)![1];
    connection = await Connection.connect({ address: temporalAddress });
    client = new Client({ connection });
    // No worker polls yet: the next one to poll the search task queue fails this workflow's first task.
    await client.workflow.start('noSuchWorkflow', { taskQueue: TASK_QUEUE, workflowId: stuckId });
  });

  after(async () => {
    await connection?.close();
    await cli(['server', 'stop'], home);
  });

  it('keeps a stuck workflow\'s failures out of another command\'s terminal, and puts them in the log file', async () => {
    const spec = path.join(home, 'small.json');
    writeFileSync(spec, JSON.stringify({
      name: 'small',
      dataset: { kind: 'gmm-classes', classes: [1] },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400] },
      seeds: [0, 1],
      concurrency: 2,
      results: { folder: path.join(home, 'small') },
    }));
    let run!: Run;
    const logged = await logDuring(async () => {
      run = await cli(['campaign', 'run', spec], home);
    });
    assert.equal(run.code, 0, run.stderr);
    campaignId = /campaign (campaign-\S+):/.exec(run.stderr)![1];
    assert.ok(!run.stderr.includes(stuckId), `the stuck workflow stays off the campaign's terminal: ${run.stderr}`);
    assert.doesNotMatch(run.stderr, SDK_LINES);
    assert.doesNotMatch(run.stdout, SDK_LINES);
    assert.match(logged, /Failing workflow task/);
    assert.ok(logged.includes(stuckId), 'the log file names the stuck workflow');
    assert.match(logged, UNREGISTERED);
    // One entry a line: ISO time, level, message, meta as JSON.
    for (const line of logged.trim().split('\n')) assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR) \S.*?( \{.*\})?$/, line);
  });

  it('has the worker command print one line per stuck workflow while Temporal retries, and campaign status report a stuck campaign', async () => {
    // A campaign workflow that cannot take its input (a TypeError, not an application failure): stuck, under
    // the ID of the campaign just run, whose record `campaign status` reads.
    await client.workflow.start('campaignWorkflow', { taskQueue: TASK_QUEUE, workflowId: campaignId, args: [null] });
    const freshId = uniqueId('stuck-fresh');
    await client.workflow.start('noSuchWorkflow', { taskQueue: TASK_QUEUE, workflowId: freshId });
    const worker = cliProcess(['worker', '--temporal', temporalAddress, '--fleet', modelAddress], home);
    try {
      // The first one's task, failed by the campaign's worker, waits for a poller: this worker meets it at once.
      await waitUntil('the worker\'s lines on the three stuck workflows', async () => [stuckId, freshId, campaignId].every((id) => worker.output.stderr.includes(id)), 60_000, 100);
      await waitUntil('retries of the stuck campaign', async () => (await pendingAttempts(campaignId)) >= 2, 30_000, 200);
      const status = await cli(['campaign', 'status', campaignId], home);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, new RegExp(`campaign ${campaignId}: running, stuck`));
      const about = status.stdout.split('\n').filter((line) => line.includes(`workflow ${campaignId}`));
      assert.equal(about.length, 1, status.stdout);
      assert.match(about[0], /its workflow tasks keep failing( \(attempt \d+\))?: Cannot read properties of null/);
      // Temporal retries the failing tasks meanwhile; the worker says each workflow once.
      const attemptsBefore = await pendingAttempts(freshId);
      await new Promise((resolve) => setTimeout(resolve, 10_000));
      assert.ok((await pendingAttempts(freshId)) > attemptsBefore, 'Temporal retried the task while the worker ran');
      const lines = worker.output.stderr.trim().split('\n');
      assert.match(lines[0], /^worker polling /);
      for (const id of [stuckId, freshId, campaignId]) {
        const said = lines.filter((line) => line.includes(id));
        assert.equal(said.length, 1, worker.output.stderr);
        assert.match(said[0], new RegExp(`^workflow ${id}: its workflow tasks keep failing: .+ \\(retried by Temporal; details in ${logFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\)$`));
      }
      assert.match(lines.find((line) => line.includes(freshId))!, UNREGISTERED);
      // Found through its run ID: the core names the workflow only at a task's first attempt, long past.
      assert.match(lines.find((line) => line.includes(stuckId))!, UNREGISTERED);
      // Nothing else: the startup line and one line per stuck workflow.
      assert.ok(lines.every((line) => /^worker polling |^workflow \S+: its workflow tasks keep failing: /.test(line)), worker.output.stderr);
      assert.doesNotMatch(worker.output.stderr, SDK_LINES);
    } finally {
      worker.child.kill('SIGINT');
      await Promise.race([worker.done, new Promise((resolve) => setTimeout(resolve, 15_000))]);
      worker.child.kill('SIGKILL');
      await client.workflow.getHandle(campaignId).terminate('the test is done with the stuck campaign');
    }
  });

  it('has server status name the stuck workflow once, with its first error', async () => {
    await waitUntil('two attempts of the stuck workflow\'s task', async () => (await pendingAttempts(stuckId)) >= 2, 30_000, 200);
    const status = await cli(['server', 'status'], home);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(count(status.stdout, stuckId), 1, status.stdout);
    const line = status.stdout.split('\n').find((l) => l.includes(stuckId))!;
    assert.match(line, new RegExp(`^stuck: workflow ${stuckId}: its workflow tasks keep failing( \\(attempt \\d+\\))?: `));
    assert.match(line, UNREGISTERED);
    assert.doesNotMatch(status.stdout, /looked for among the first/, 'the embedded Temporal finds them by search attribute');
  });

  it('has the dashboard list the stuck workflow once, with its attempts and first error', async () => {
    const dashboard = await startDashboard({ client, namespace: 'default', fleet: [], allowActions: false, host: '127.0.0.1', port: 0, pollMs: 500, campaignsDir: tempDir('stuck-campaigns') });
    try {
      const state = await waitUntil('the stuck workflow in the dashboard\'s state', async () => {
        const body = await (await fetch(new URL('/api/state', dashboard.url))).json() as { stuck: Array<{ workflowId: string; attempts: number; firstError: string }> };
        return body.stuck.some((s) => s.workflowId === stuckId) && body;
      }, 30_000, 250);
      const listed = state.stuck.filter((s) => s.workflowId === stuckId);
      assert.equal(listed.length, 1);
      assert.equal(typeof listed[0].attempts, 'number');
      assert.match(listed[0].firstError, UNREGISTERED);
      const page = await (await fetch(dashboard.url)).text();
      assert.match(page, /<h2>Stuck workflows/);
    } finally {
      await dashboard.close();
    }
  });

  it('writes the log file at the level asked for', async () => {
    const search = ['search', '--class', '3', '--budget', '200'];
    const debug = await logDuring(async () => assert.equal((await cli(search, home, { NOISESEARCH_LOG_LEVEL: 'DEBUG' })).code, 0));
    assert.match(debug, /^\S+ DEBUG /m);
    const info = await logDuring(async () => assert.equal((await cli(search, home)).code, 0));
    assert.match(info, /^\S+ INFO  /m, 'info by default');
    assert.doesNotMatch(info, /^\S+ (DEBUG|TRACE) /m);
    const errorsOnly = await logDuring(async () => assert.equal((await cli(search, home, { NOISESEARCH_LOG_LEVEL: 'error' })).code, 0));
    assert.doesNotMatch(errorsOnly, /^\S+ (TRACE|DEBUG|INFO |WARN ) /m);
  });
});
