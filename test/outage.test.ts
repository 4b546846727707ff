// The CLI through a Temporal outage: the embedded dev server SIGKILLed under a running command and restarted
// with `noisesearch server start`, in a throw-away state folder; the command waits, then finishes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { resolveCampaign } from '../src/campaign/spec';
import { describeEmbeddedModel } from '../src/embedded/describe';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { openStore } from '../src/store';
import { campaignProgressQuery } from '../workflows/campaign';
import { UsageError } from '../src/cli/args';
import { ServiceUnreachableError } from '../src/cli/errors';
import { isUnreachable, Outage, parseWait } from '../src/cli/outage';
import { freePort } from '../src/embedded/processes';
import { stopServer, tempDir, waitUntil, withModelServer } from './helpers';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** A running `noisesearch` without a TTY, as CI runs it: what it printed so far, and its exit. */
function cliProcess(args: string[], home: string) {
  const started = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', CI: 'true' } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const done = new Promise<Run>((resolve) => child.on('close', (code, signal) => resolve({ code: code ?? (signal ? -1 : -2), ...output, seconds: (Date.now() - started) / 1000 })));
  return { child, output, done };
}

function cli(args: string[], home: string): Promise<Run> {
  return cliProcess(args, home).done;
}

/** Resolves with the run, or fails the test after `ms`: no wait of a test is unbounded. */
async function within(run: Promise<Run>, ms: number, what: string): Promise<Run> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no exit within ${ms / 1000} s`)), ms)));
  try {
    return await Promise.race([run, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What neither stream may show, outage or not: stack frames, SDK core lines (they go to the log file), colour codes. */
function assertCalm(stderr: string): void {
  assert.doesNotMatch(stderr, /^\s+at /m, `no stack trace: ${stderr}`);
  assert.doesNotMatch(stderr, /temporalio_client|\[WARN\]|\[ERROR\]/, `no SDK core lines: ${stderr}`);
  assert.doesNotMatch(stderr, /\x1b\[/, `no ANSI escapes off a TTY: ${stderr}`);
}

function recorded(home: string): { temporal: { pid: number; address: string }; modelServer: { address: string } } {
  return JSON.parse(readFileSync(path.join(home, 'services.json'), 'utf8'));
}

function killTemporal(home: string): void {
  process.kill(recorded(home).temporal.pid, 'SIGKILL');
}

async function restartTemporal(home: string): Promise<void> {
  const before = recorded(home).temporal.address;
  const start = await within(cli(['server', 'start'], home), 90_000, 'server start');
  assert.equal(start.code, 0, start.stderr);
  assert.equal(recorded(home).temporal.address, before, 'Temporal back on its recorded address');
}

const SEARCH_LINE = /^\s+best score\s+(\S+).*$|^\s+best noise\s+(.*)$/gm;

/** The best score and noise a search printed: what must not change with an outage in the middle. */
function bestOf(stdout: string): string[] {
  return [...stdout.matchAll(SEARCH_LINE)].map((m) => (m[1] ?? m[2]).replace(/^-(0\.0+)$/, '$1'));
}

/** A stream that says whether it is a terminal and keeps what is written to it. */
function fakeTerminal(isTTY: boolean): NodeJS.WriteStream & { text: string } {
  const out = {
    isTTY,
    text: '',
    write(chunk: string) {
      out.text += chunk;
      return true;
    },
  };
  return out as unknown as NodeJS.WriteStream & { text: string };
}

describe('waiting for Temporal', () => {
  it('reads --wait as seconds, minutes or hours, and refuses anything else in one line', () => {
    assert.equal(parseWait(undefined), Number.POSITIVE_INFINITY);
    assert.equal(parseWait('0'), 0);
    assert.equal(parseWait('30'), 30_000);
    assert.equal(parseWait('30s'), 30_000);
    assert.equal(parseWait('1.5s'), 1_500);
    assert.equal(parseWait('5m'), 300_000);
    assert.equal(parseWait('1h'), 3_600_000);
    for (const bad of ['', 'soon', '-1', '5d', '1h30m']) {
      assert.throws(() => parseWait(bad), (e: Error) => e instanceof UsageError && /^--wait: ".*" is not a duration/.test(e.message));
    }
  });

  it('tells an unreachable Temporal from one that refused the call', () => {
    assert.ok(isUnreachable(Object.assign(new Error('14 UNAVAILABLE: No connection established'), { code: 14 })));
    assert.ok(isUnreachable(new Error('Failed to get Workflow execution history', { cause: Object.assign(new Error('x'), { code: 14 }) })));
    assert.ok(!isUnreachable(Object.assign(new Error('5 NOT_FOUND: workflow not found'), { code: 5 })));
    assert.ok(!isUnreachable(new Error('query failed')));
  });

  it('rewrites one status line in place on a terminal, and says when Temporal is back', async () => {
    const out = fakeTerminal(true);
    let answers = false;
    const outage = new Outage({ what: 'Temporal', address: '127.0.0.1:1', hint: 'restart it', waitMs: 60_000, reattach: '', probe: async () => answers, out });
    setTimeout(() => (answers = true), 2_300);
    await outage.waitUntilBack();
    const lines = out.text.split('\r\x1b[2K').filter(Boolean);
    assert.ok(lines.length >= 3, `the line rewritten about once a second: ${JSON.stringify(out.text)}`);
    assert.match(lines[0], /^waiting for Temporal at 127\.0\.0\.1:1 since \d\d:\d\d:\d\d, 0 s \(restart it\)$/);
    // Probes at 0.5, 1.5 and 3.5 s (backoff doubling): the one after it answers at 2.3 s sees it back.
    assert.match(lines.at(-2)!, /, [23] s \(restart it\)$/);
    assert.match(lines.at(-1)!, /^Temporal at 127\.0\.0\.1:1 is back after [34] s\n$/);
  });

  it('gives up past --wait with the reattach line, for every caller sharing the outage', async () => {
    const out = fakeTerminal(false);
    const outage = new Outage({ what: 'Temporal', address: '127.0.0.1:1', hint: 'restart it', waitMs: 1_000, reattach: 'the work goes on', probe: async () => false, out });
    let calls = 0;
    const unreachable = () => {
      calls++;
      return Promise.reject(Object.assign(new Error('unavailable'), { code: 14 }));
    };
    const started = Date.now();
    const results = await Promise.allSettled([outage.retrying(unreachable), outage.retrying(unreachable), outage.failure]);
    for (const result of results) {
      assert.equal(result.status, 'rejected');
      const reason = (result as PromiseRejectedResult).reason as Error;
      assert.ok(reason instanceof ServiceUnreachableError);
      assert.match(reason.message, /^Temporal at 127\.0\.0\.1:1 unreachable for 1 s \(--wait\); the work goes on$/);
    }
    assert.ok(Date.now() - started < 3_000);
    assert.equal(calls, 2, 'no call is tried again once the wait was given up');
    assert.match(out.text, /^waiting for Temporal at 127\.0\.0\.1:1 since \d\d:\d\d:\d\d \(restart it\)\n$/, 'one line off a terminal');
  });
});

describe('noisesearch through a Temporal outage', { timeout: 420_000 }, () => {
  const home = tempDir('outage');
  let client: Client | undefined;
  /** The campaign the first test ran, recorded in this state folder: `campaign status` is asked about it later. */
  let campaignId: string | undefined;

  before(async () => {
    const start = await within(cli(['server', 'start'], home), 90_000, 'server start');
    assert.equal(start.code, 0, start.stderr);
  });
  after(async () => {
    await client?.connection.close();
    await cli(['server', 'stop'], home);
  });

  async function temporalClient(): Promise<Client> {
    await client?.connection.close().catch(() => {});
    client = new Client({ connection: await Connection.connect({ address: recorded(home).temporal.address }) });
    return client;
  }

  it('campaign run waits out Temporal killed a third of the way in, and finishes as an undisturbed run does', async () => {
    const dir = tempDir('outage-campaign');
    const spec = (name: string) => ({
      name,
      dataset: { kind: 'gmm-classes', classes: [2, 5, 7] },
      grid: { algorithms: ['random', { name: 'zero-order', n: 4 }], verifiers: ['gmm-classifier'], budgets: [4000, 8000] },
      evaluation: ['gmm-oracle'],
      seeds: [0, 1],
      concurrency: 3,
      results: { path: path.join(dir, `${name}.sqlite`), folder: path.join(dir, name) },
    });
    const model = describeEmbeddedModel('gmm');
    const files = Object.fromEntries(['calm', 'outage'].map((name) => [name, path.join(dir, `${name}.json`)]));
    for (const name of ['calm', 'outage']) writeFileSync(files[name], JSON.stringify(spec(name)));
    const calm = await within(cli(['campaign', 'run', files.calm], home), 120_000, 'undisturbed campaign');
    assert.equal(calm.code, 0, calm.stderr);

    const input = resolveCampaign(spec('outage'), model, dir);
    campaignId = input.campaignId;
    const run = cliProcess(['campaign', 'run', files.outage], home);
    const temporal = await temporalClient();
    const third = await waitUntil('a third of the campaign', async () => {
      const progress = await temporal.workflow.getHandle(input.campaignId).query(campaignProgressQuery).catch(() => null);
      return progress && progress.done >= progress.total / 3 ? progress : null;
    }, 120_000, 200);
    assert.ok(third.done < third.total, 'killed in the middle');
    killTemporal(home);
    await waitUntil('the waiting line', async () => /waiting for Temporal at 127\.0\.0\.1:\d+ since \d\d:\d\d:\d\d \(restart it: noisesearch server start\)/.test(run.output.stderr), 60_000, 200);
    await restartTemporal(home);
    const done = await within(run.done, 180_000, 'campaign run after the outage');
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stderr, /Temporal at 127\.0\.0\.1:\d+ is back after \d+ s/);
    assertCalm(done.stderr);
    assertCalm(done.stdout);
    assert.doesNotMatch(done.stderr, /\[[#.]{24}\]/, 'no progress bar off a TTY');
    assert.match(done.stdout, /campaign campaign-outage-\w+ finished/);

    // Every search once, each with the best score of the undisturbed run's same search.
    const best = async (name: string) => {
      const resolved = resolveCampaign(spec(name), model, dir);
      const store = await openStore(resolved.store);
      try {
        const rows = await store.searches(resolved.campaignId);
        assert.ok(rows.every((r) => r.status === 'done'), `${name}: every search done`);
        return Object.fromEntries(rows.map((r) => [`${r.itemId}|${r.cell}|${r.seed}`, r.result!.best.score]));
      } finally {
        await store.close();
      }
    };
    const [expected, actual] = await Promise.all([best('calm'), best('outage')]);
    assert.equal(Object.keys(expected).length, 24);
    assert.deepEqual(actual, expected);
  });

  it('search waits out Temporal killed and restarted, with the result of a --local run', async () => {
    const flags = ['--class', '3', '--budget', '200000', '--seed', '11'];
    const local = await within(cli(['search', ...flags, '--local'], home), 120_000, 'local search');
    assert.equal(local.code, 0, local.stderr);
    const run = cliProcess(['search', ...flags], home);
    await waitUntil('the search to start', async () => /Temporal UI: /.test(run.output.stderr), 60_000, 100);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    killTemporal(home);
    await waitUntil('the waiting line', async () => /waiting for Temporal at 127\.0\.0\.1:\d+ since/.test(run.output.stderr), 60_000, 200);
    await restartTemporal(home);
    const done = await within(run.done, 180_000, 'search after the outage');
    assert.equal(done.code, 0, done.stderr);
    assertCalm(done.stderr);
    assertCalm(done.stdout);
    assert.deepEqual(bestOf(done.stdout), bestOf(local.stdout));
    assert.equal(bestOf(done.stdout).length, 2, 'a best score and a best noise');
  });

  it('gives up past --wait with exit 3 and one line saying how to reattach; the workflow goes on', async () => {
    const flags = ['--class', '4', '--budget', '250000', '--seed', '12'];
    const run = cliProcess(['search', ...flags, '--wait', '3s'], home);
    await waitUntil('the search to start', async () => /Temporal UI: \S+workflows\/(search-\S+)/.exec(run.output.stderr)?.[1], 60_000, 100);
    const workflowId = /Temporal UI: \S+workflows\/(search-\S+)/.exec(run.output.stderr)![1];
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    killTemporal(home);
    const killedAt = Date.now();
    const gaveUp = await within(run.done, 60_000, 'search --wait 3s');
    assert.equal(gaveUp.code, 3, gaveUp.stderr);
    // The outage is noticed within some 10 s (a poll every 2 s, a 3 s deadline, a probe), then 3 s of --wait.
    assert.ok((Date.now() - killedAt) / 1000 < 30, `gave up in ${(Date.now() - killedAt) / 1000} s`);
    const last = gaveUp.stderr.trim().split('\n').at(-1)!;
    assert.match(last, new RegExp(`^noisesearch search: Temporal at 127\\.0\\.0\\.1:\\d+ unreachable for \\d+ s \\(--wait\\); the search goes on in Temporal; rerun the same "noisesearch search" command to attach to workflow ${workflowId}, or "noisesearch progress ${workflowId}"$`));
    assertCalm(gaveUp.stderr);

    const progress = await within(cli(['progress', workflowId, '--wait', '2s'], home), 30_000, 'progress --wait 2s');
    assert.equal(progress.code, 3, progress.stderr);
    assert.match(progress.stderr.trim().split('\n').at(-1)!, /^noisesearch progress: Temporal at 127\.0\.0\.1:\d+ unreachable for \d+ s \(--wait\); nothing was changed$/);
    assert.equal(progress.stdout.trim(), '');
    if (campaignId) {
      const status = await within(cli(['campaign', 'status', campaignId, '--wait', '2s'], home), 30_000, 'campaign status --wait 2s');
      assert.equal(status.code, 3, status.stderr);
      assert.match(status.stderr.trim().split('\n').at(-1)!, /^noisesearch campaign: Temporal at 127\.0\.0\.1:\d+ unreachable for \d+ s \(--wait\); nothing was changed$/);
      assertCalm(status.stderr);
    }

    await restartTemporal(home);
    const description = await (await temporalClient()).workflow.getHandle(workflowId).describe();
    assert.equal(description.status.name, 'RUNNING', 'the search goes on in Temporal');
    // The same command attaches to it and finishes it.
    const again = await within(cli(['search', ...flags], home), 180_000, 'the rerun');
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`^${workflowId} \\(temporal\\)`, 'm'));
  });

  it('gives up on a fleet down past --wait with exit 3; the search waits on in Temporal', async () => {
    const server = await withModelServer();
    try {
      const run = cliProcess(['search', '--class', '2', '--budget', '400000', '--seed', '14', '--fleet', server.address, '--wait', '3s'], home);
      const workflowId = await waitUntil('the search to start', async () => /Temporal UI: \S+workflows\/(search-\S+)/.exec(run.output.stderr)?.[1], 60_000, 100);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      await stopServer(server, 'SIGKILL');
      const gaveUp = await within(run.done, 90_000, 'search --wait 3s with the fleet down');
      assert.equal(gaveUp.code, 3, gaveUp.stderr);
      assert.match(gaveUp.stderr.trim().split('\n').at(-1)!, new RegExp(`^noisesearch search: model servers unreachable for \\d+ s \\(--wait; waiting for model servers .*\\); the search goes on in Temporal; rerun the same "noisesearch search" command to attach to workflow ${workflowId}`));
      assertCalm(gaveUp.stderr);
      const description = await (await temporalClient()).workflow.getHandle(workflowId).describe();
      assert.equal(description.status.name, 'RUNNING', 'the search waits on in Temporal');
      await (await temporalClient()).workflow.getHandle(workflowId).terminate('test over');
    } finally {
      await stopServer(server);
    }
  });

  it('Ctrl-C leaves the search running, says how to reattach, exits 130; the rerun finishes it', async () => {
    const flags = ['--class', '6', '--budget', '300000', '--seed', '13'];
    const local = cli(['search', ...flags, '--local'], home);
    const run = cliProcess(['search', ...flags], home);
    await waitUntil('the search to start', async () => /Temporal UI: /.test(run.output.stderr), 60_000, 100);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    run.child.kill('SIGINT');
    const interrupted = await within(run.done, 30_000, 'search after SIGINT');
    assert.equal(interrupted.code, 130, interrupted.stderr);
    assert.match(interrupted.stderr, /interrupted: stopped waiting; the search goes on in Temporal; rerun the same "noisesearch search" command to attach to workflow search-\S+, or "noisesearch progress search-\S+"\. It resumes when a worker polls/);
    assertCalm(interrupted.stderr);
    const again = await within(cli(['search', ...flags], home), 180_000, 'the rerun');
    assert.equal(again.code, 0, again.stderr);
    const expected = await within(local, 120_000, 'local search');
    assert.deepEqual(bestOf(again.stdout), bestOf(expected.stdout));
  });
});

describe('noisesearch with the fleet away when it starts', { timeout: 180_000 }, () => {
  const home = tempDir('outage-fleet');

  it('gives up past --wait with exit 3 and nothing started, when no model server ever answers', async () => {
    const port = await freePort();
    const run = await within(cli(['search', '--class', '3', '--local', '--fleet', `127.0.0.1:${port}`, '--wait', '2s'], home), 60_000, 'search --wait 2s with no fleet');
    assert.equal(run.code, 3, run.stderr);
    assert.equal(run.stdout, '');
    assert.deepEqual(run.stderr.trim().split('\n'), [
      `waiting for the fleet at 127.0.0.1:${port} since ${run.stderr.match(/since (\d\d:\d\d:\d\d)/)?.[1]} (start its model servers, or check --fleet)`,
      `noisesearch search: the fleet at 127.0.0.1:${port} unreachable for 2 s (--wait); nothing was started`,
    ]);
    assertCalm(run.stderr);
  });

  it('waits for a model server started after the command, then searches as usual', async () => {
    const port = await freePort();
    const flags = ['--class', '5', '--budget', '400', '--seed', '3', '--local', '--fleet', `127.0.0.1:${port}`];
    const late = cliProcess(['search', ...flags], home);
    let server: Awaited<ReturnType<typeof withModelServer>> | undefined;
    try {
      await waitUntil('the waiting line', async () => /waiting for the fleet at /.test(late.output.stderr), 30_000, 100);
      server = await withModelServer([], port);
      const done = await within(late.done, 60_000, 'search once the fleet is up');
      assert.equal(done.code, 0, done.stderr);
      assert.match(done.stderr, new RegExp(`the fleet at 127\\.0\\.0\\.1:${port} is back after \\d+ s`));
      assertCalm(done.stderr);
      // The same search with the fleet up from the start: waiting changed nothing of the result.
      const direct = await within(cli(['search', ...flags], home), 60_000, 'search with the fleet up');
      assert.equal(direct.code, 0, direct.stderr);
      assert.doesNotMatch(direct.stderr, /waiting for the fleet/);
      assert.deepEqual(bestOf(done.stdout), bestOf(direct.stdout));
      assert.equal(bestOf(done.stdout).length, 2);
    } finally {
      late.child.kill('SIGKILL');
      await stopServer(server);
    }
  });
});

describe('campaign run interrupted, or out of --wait', { timeout: 360_000 }, () => {
  const home = tempDir('outage-campaign-run');
  after(async () => {
    await cli(['server', 'stop'], home);
  });

  it('Ctrl-C leaves the campaign running, says how to reattach, exits 130; the rerun finishes it', async () => {
    const dir = tempDir('campaign-interrupted');
    const spec = {
      name: 'interrupted',
      dataset: { kind: 'gmm-classes', classes: [1, 4] },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [30000] },
      seeds: [0, 1],
      concurrency: 2,
      results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'interrupted') },
    };
    const file = path.join(dir, 'spec.json');
    writeFileSync(file, JSON.stringify(spec));
    const campaignId = resolveCampaign(spec, describeEmbeddedModel('gmm'), dir).campaignId;
    const run = cliProcess(['campaign', 'run', file], home);
    await waitUntil('the campaign to show progress', async () => /searches finished/.test(run.output.stderr), 120_000, 100);
    run.child.kill('SIGINT');
    const interrupted = await within(run.done, 30_000, 'campaign run after SIGINT');
    assert.equal(interrupted.code, 130, interrupted.stderr);
    assert.equal(interrupted.stdout, '');
    assert.match(
      interrupted.stderr.trim().split('\n').at(-1)!,
      new RegExp(`^interrupted: stopped waiting; campaign ${campaignId} goes on in Temporal; "noisesearch campaign run SPEC" with the same spec attaches to it, "noisesearch campaign status ${campaignId}" shows it\\. It resumes when a worker polls`),
    );
    assertCalm(interrupted.stderr);
    const again = await within(cli(['campaign', 'run', file, '--json'], home), 240_000, 'the rerun');
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(
      (({ campaignId: id, status, total, done, failed }) => ({ id, status, total, done, failed }))(JSON.parse(again.stdout)),
      { id: campaignId, status: 'completed', total: 4, done: 4, failed: 0 },
    );
  });

  it('gives up past --wait with exit 3 on a Temporal that never answers; nothing is started', async () => {
    const dir = tempDir('campaign-no-temporal');
    const file = path.join(dir, 'spec.json');
    writeFileSync(file, JSON.stringify({ name: 'nowhere', dataset: { kind: 'gmm-classes', classes: [1] }, grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400] }, results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'nowhere') } }));
    const port = await freePort();
    const run = await within(cli(['campaign', 'run', file, '--temporal', `127.0.0.1:${port}`, '--wait', '2s'], home), 60_000, 'campaign run --wait 2s without Temporal');
    assert.equal(run.code, 3, run.stderr);
    assert.equal(run.stdout, '');
    assert.match(run.stderr.trim().split('\n').at(-1)!, new RegExp(`^noisesearch campaign: Temporal at 127\\.0\\.0\\.1:${port} unreachable for \\d+ s \\(--wait\\); nothing was started$`));
    assertCalm(run.stderr);
  });
});
