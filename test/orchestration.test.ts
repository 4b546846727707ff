// The Temporal driver's fast path (docs/architecture.md, "Orchestration overhead"): batches and Describe run
// as local activities, chained inside workflow tasks; a batch that fails in a way worth waiting out goes
// to the durable activity, which an outage leaves pending and visible; a search whose batches take seconds
// goes durable; a stop still lands. Real Temporal dev server, real model servers (one clean, one that
// answers UNAVAILABLE while a file exists, one simulated GPU that takes 1.1 s a batch). The fast path is
// opt-in: a stalled worker and a stop signal leave a fast-path search stuck on SDK 1.24 (the last test).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { temporal as proto } from '@temporalio/proto';
import { createActivities } from '../src/activities';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { startModelServer, type StartedProcess } from '../src/embedded/processes';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import { startSearch } from '../src/temporal/client';
import { fleetWait } from '../src/temporal/waiting';
import { workflowSource } from '../src/temporal/bundle';
import { createSearchWorker, installQuietRuntime } from '../src/temporal/worker';
import { progressQuery, stopSignal } from '../workflows/search';
import { stopServer, tempDir, uniqueId, waitUntil, withFaultyServer, withModelServer, withTemporal } from './helpers';

const EventType = proto.api.enums.v1.EventType;

const ALGORITHMS: AlgorithmSpec[] = [
  { name: 'random', roundSize: 8 },
  { name: 'zero-order', n: 4 },
  { name: 'paths', n: 2, m: 3 },
  { name: 'fk', k: 8 },
];

function spec(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'gmm', condition: { classLabel: 3 }, algorithm, verifiers: ['gmm-classifier'], budgetNfe: 1000, seed: 17, ...overrides };
}

/** Everything but measured seconds and what a server's cache saved (executed NFEs), which differ between runs. */
function comparable(result: SearchResult): unknown {
  const { verifierSeconds, verifierCosts, seconds, nfe, ...rest } = result;
  const { executed, ...logical } = nfe;
  return { ...rest, nfe: logical, verifierCalls: Object.values(verifierCosts).map((cost) => cost.calls) };
}

describe('the Temporal driver runs batches as local activities', { timeout: 600_000 }, () => {
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let env: TestWorkflowEnvironment;
  let clean: Awaited<ReturnType<typeof withModelServer>>;
  let faulty: Awaited<ReturnType<typeof withModelServer>>;
  let slow: StartedProcess;
  let cleanFleet: Fleet;
  let faultyFleet: Fleet;
  let slowFleet: Fleet;
  const outageFile = path.join(tempDir('outage'), 'down');
  const workers: Array<{ worker: Worker; running: Promise<void> }> = [];
  const queues = { clean: uniqueId('orchestration-clean'), faulty: uniqueId('orchestration-faulty'), slow: uniqueId('orchestration-slow') };

  before(async () => {
    installQuietRuntime('ERROR');
    temporal = await withTemporal();
    env = temporal.env;
    [clean, faulty, slow] = await Promise.all([
      withModelServer(),
      withFaultyServer({ seed: 1, rules: [{ request_status: 'UNAVAILABLE', while_file: outageFile }] }),
      // A simulated GPU whose every batch call takes 1.1 s: past LONG_BATCH_SECONDS in workflows/search.ts.
      startModelServer({ sim: { batchMs: 1100, itemMs: 0 }, logFile: path.join(tempDir('slow'), 'server.log') }),
    ]);
    cleanFleet = new Fleet([clean.address]);
    faultyFleet = new Fleet([faulty.address]);
    slowFleet = new Fleet([slow.address]);
    for (const [fleet, taskQueue] of [
      [cleanFleet, queues.clean],
      [faultyFleet, queues.faulty],
      [slowFleet, queues.slow],
    ] as const) {
      const worker = await createSearchWorker({ connection: env.nativeConnection, fleet, taskQueue });
      workers.push({ worker, running: worker.run() });
    }
  });

  after(async () => {
    rmSync(outageFile, { force: true });
    for (const { worker } of workers) worker.shutdown();
    await Promise.all(workers.map((w) => w.running));
    cleanFleet?.close();
    faultyFleet?.close();
    slowFleet?.close();
    await Promise.all([stopServer(clean), stopServer(faulty), stopServer(slow)]);
    await temporal?.stop();
  });

  for (const algorithm of ALGORITHMS) {
    it(`${algorithm.name}: the same result as the in-process driver, with a local-activity marker for every call and no activity task`, async () => {
      const s = spec(algorithm);
      const handle = await startSearch(env.client, s, { taskQueue: queues.clean, workflowId: uniqueId(algorithm.name), localActivities: true });
      const durable = await handle.result();
      assert.deepEqual(comparable(durable), comparable(await runLocalSearch(s, cleanFleet)));
      const events = (await handle.fetchHistory()).events ?? [];
      const markers = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity');
      // One Describe, then one batch a round (each round of these sizes fits one batch; the final generation is a round).
      assert.equal(markers.length, 1 + durable.rounds);
      assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED).length, 0);
    });
  }

  it('sends a batch that meets an outage to the durable activity, which waits visibly, and ends with the same result', async () => {
    const s = spec({ name: 'zero-order', n: 4 }, { seed: 29 });
    writeFileSync(outageFile, '');
    const handle = await startSearch(env.client, s, { taskQueue: queues.faulty, workflowId: uniqueId('outage'), localActivities: true });
    const wait = await waitUntil('the search to say it waits for model servers', () => fleetWait(handle), 30_000, 200);
    assert.equal(wait.activity, 'evaluateBatch');
    assert.match(wait.lastFailure, /UNAVAILABLE/);
    // The durable activity is retried for as long as the outage lasts.
    const { raw } = await handle.describe();
    assert.equal(raw.pendingActivities?.[0]?.maximumAttempts ?? 0, 0);
    rmSync(outageFile);
    const result = await handle.result();
    assert.deepEqual(comparable(result), comparable(await runLocalSearch(s, cleanFleet)));
    const events = (await handle.fetchHistory()).events ?? [];
    const scheduled = events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED);
    // The first batch went durable; once the server answered again the rest went local.
    assert.equal(scheduled.length, 1);
    assert.equal(scheduled[0].activityTaskScheduledEventAttributes?.activityType?.name, 'evaluateBatch');
    // Still a marker for Describe and one for each round: the first round's records its failed local attempt.
    const markers = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity');
    assert.equal(markers.length, 1 + result.rounds);
    assert.equal(markers.filter((e) => e.markerRecordedEventAttributes?.failure).length, 1);
  });

  it('goes durable for the rest of a search once a batch takes a second or more', async () => {
    // Three rounds of 8 candidates and the final generation: four batch calls of 1.1 s each.
    const generation = 55;
    const s = spec({ name: 'random', roundSize: 8 }, { budgetNfe: 25 * generation, seed: 43 });
    const handle = await startSearch(env.client, s, { taskQueue: queues.slow, workflowId: uniqueId('slow'), localActivities: true });
    const result = await handle.result();
    assert.equal(result.rounds, 4);
    assert.deepEqual(comparable(result), comparable(await runLocalSearch(s, cleanFleet)));
    const events = (await handle.fetchHistory()).events ?? [];
    // Describe and the first batch as local activities; the three batches after it as activity tasks.
    assert.equal(events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').length, 2);
    assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED).length, 3);
  });

  it('lands a stop signal while batches chain inside one workflow task (opt-in fast path)', async () => {
    const long = spec({ name: 'random', roundSize: 8 }, { budgetNfe: 400_000, seed: 37 });
    const handle = await startSearch(env.client, long, { taskQueue: queues.clean, workflowId: uniqueId('stop'), localActivities: true });
    await waitUntil('round 2', async () => ((await handle.query(progressQuery))?.round ?? 0) >= 2, 30_000, 100);
    const signalled = Date.now();
    await handle.signal(stopSignal);
    const result = await handle.result();
    const landed = Date.now() - signalled;
    assert.equal(result.stopped, true);
    assert.ok(result.nfe.total < long.budgetNfe);
    // The workflow task ends at 80 % of its 2 s timeout while local activities chain, so a stop reaches the
    // workflow within about 1.6 s and the search ends after the round in flight. The bound only tells a
    // stop that lands from one that never does; the time is reported, not asserted.
    assert.ok(landed < 30_000, `the stop took ${landed} ms`);
    console.log(`# stop landed and the search ended ${landed} ms after the signal`);
  });

  it('by default, a search whose worker stalls for 4 s while a stop arrives stops and ends', async () => {
    // What a loaded machine does to a worker: its main thread (activities, and the SDK's handing of
    // activations to workflows) blocks for 4 s, right after the third batch returns, and meanwhile a user
    // runs `noisesearch stop`. On the local-activity fast path (SDK 1.24, 2 s workflow task timeout) the
    // task times out, the same worker then completes the next one with the markers of the timed-out one,
    // and every task after fails ("History is out of order. Last processed event: 6, event id: 8", then
    // "[TMPRL1100] Nondeterminism error: Missing associated machine for LocalActivity(2)"): the search is
    // stuck for ever. startSearch's default, the durable path, must stop the search and end it.
    const taskQueue = uniqueId('orchestration-stall');
    const workflowId = uniqueId('stall');
    const activities = createActivities({ fleet: cleanFleet });
    const stopSaid = path.join(tempDir('stall'), 'stop.out');
    let calls = 0;
    let stopCommand: ReturnType<typeof spawn> | undefined;
    const stallingWorker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      ...workflowSource(),
      activities: {
        ...activities,
        evaluateBatch: async (...args: Parameters<typeof activities.evaluateBatch>) => {
          const outcome = await activities.evaluateBatch(...args);
          if (++calls === 3) {
            setTimeout(() => {
              stopCommand = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'stop', workflowId, '--temporal', temporal.address], { stdio: ['ignore', 'ignore', openSync(stopSaid, 'w')] });
              // The stall: nothing on this thread runs for 4 s, and on until the stop command says Temporal
              // took the signal (at most 20 s), so that the signal always arrives during the stall.
              const started = Date.now();
              while (Date.now() - started < 4_000 || (readFileSync(stopSaid, 'utf8') === '' && Date.now() - started < 20_000));
            }, 1);
          }
          return outcome;
        },
      },
    });
    const running = stallingWorker.run();
    try {
      const long = spec({ name: 'random', roundSize: 8 }, { budgetNfe: 400_000, seed: 53 });
      const handle = await startSearch(env.client, long, { taskQueue, workflowId });
      // Unbounded on the fast path: it never ends. The bound tells a search that ends from one that is stuck.
      const result = await Promise.race([
        handle.result(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the search did not end within 60 s of a stall and a stop')), 60_000).unref()),
      ]);
      assert.equal(result.stopped, true);
      assert.match(readFileSync(stopSaid, 'utf8'), /asked .* to stop/, 'the stop arrived during the stall');
      assert.ok(result.nfe.total < long.budgetNfe);
      const events = (await handle.fetchHistory()).events ?? [];
      assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED).length, 0);
      assert.equal(events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED).length, 1);
    } finally {
      if (stopCommand && stopCommand.exitCode === null) await new Promise((resolve) => stopCommand!.once('exit', resolve));
      stallingWorker.shutdown();
      await running;
    }
  });
});
