// One campaign run under a fault schedule: a Temporal dev server, two gmm model servers behind fault
// proxies, worker processes and the `campaign run --no-worker` command, all real processes on fixed ports
// (a restarted component keeps its address), while the schedule kills, restarts, partitions, slows and
// breaks them one after another. Afterwards it reads what the run left: the store's rows and any
// workflow still running.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { campaignSize, type CampaignInput } from '../campaign/plan';
import { resolveCampaign } from '../campaign/spec';
import { PROJECT_ROOT } from '../embedded/paths';
import { freePort, startModelServer, startTemporal, stopProcess, type StartedProcess } from '../embedded/processes';
import { Fleet } from '../fleet/client';
import { openStore } from '../store';
import type { SearchRecord } from '../store/types';
import { campaignProgressQuery, type CampaignProgress } from '../../workflows/campaign';
import { FaultProxy } from './proxy';
import type { FaultEvent, FaultKind } from './schedule';

export interface RunOptions {
  /** The campaign spec (results are put in `dir`). */
  spec: Record<string, unknown>;
  dir: string;
  schedule: FaultEvent[];
  workers: number;
  /** The whole run fails (with everything stopped) after this long: a hang is a finding, not a wait. */
  timeoutMs: number;
  log: (line: string) => void;
}

export interface InjectedFault {
  event: FaultEvent;
  /** Milliseconds since the campaign started. */
  startedMs: number;
  endedMs: number;
  /** From the end of the fault until the next search finished (or the campaign ended); null if neither came. */
  recoveryMs: number | null;
}

export interface RunOutcome {
  input: CampaignInput;
  records: SearchRecord[];
  injected: InjectedFault[];
  /** Workflows still running in the run's Temporal once the command ended. */
  running: string[];
  /** Processes that exited on their own while the run went on (each restarted, as a supervisor would). */
  unexpectedExits: string[];
  /** The campaign command's last exit: 0 when it reported the campaign finished. */
  cliExit: number | null;
  cliStderr: string;
  wallMs: number;
  timedOut: boolean;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const NOISESEARCH = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

async function kill(child: ChildProcess | null): Promise<void> {
  if (!child) return;
  const gone = exited(child);
  child.kill('SIGKILL');
  await gone;
}

/** A child that a fault may kill; one that dies on its own is noted and started again. */
class Supervised {
  child: ChildProcess | null = null;
  private intended = false;
  private stopped = false;

  constructor(private readonly name: string, private readonly start: () => ChildProcess, private readonly onUnexpected: (what: string) => void, private readonly onExit?: (code: number | null) => boolean) {}

  run(): void {
    if (this.stopped) return;
    const child = this.start();
    this.child = child;
    this.intended = false;
    child.once('exit', (code, signal) => {
      if (this.child !== child || this.stopped) return;
      // onExit says whether this exit was the end of the child's work (the command reporting the campaign done).
      if (this.onExit?.(code)) return;
      if (this.intended) return;
      this.onUnexpected(`${this.name} exited with ${signal ?? `code ${code}`}`);
      setTimeout(() => this.run(), 1_000);
    });
  }

  async kill(): Promise<void> {
    this.intended = true;
    await kill(this.child);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await kill(this.child);
  }
}

/** The per-run processes and proxies, started on fixed ports so restarts keep their addresses. */
class Cluster {
  temporal: (StartedProcess & { uiPort: number }) | null = null;
  temporalPort = 0;
  servers: (StartedProcess | null)[] = [null, null];
  serverPorts: number[] = [];
  proxies: FaultProxy[] = [];
  errorSwitches: string[] = [];
  workers: Supervised[] = [];
  cli: Supervised | null = null;

  constructor(readonly dir: string) {}

  async startTemporal(): Promise<void> {
    this.temporalPort ||= await freePort();
    this.temporal = await startTemporal({
      dbFile: path.join(this.dir, 'temporal.db'),
      logFile: path.join(this.dir, 'temporal.log'),
      port: this.temporalPort,
      uiPort: this.temporal?.uiPort,
    });
  }

  async startServer(index: number): Promise<void> {
    this.serverPorts[index] ||= await freePort();
    this.errorSwitches[index] = path.join(this.dir, `server-${index}-errors-on`);
    // Only the UNAVAILABLE the campaign retries, and only while the harness holds the switch file.
    const faults = { rules: [{ request_status: 'UNAVAILABLE', while_file: this.errorSwitches[index] }] };
    this.servers[index] = await startModelServer({
      logFile: path.join(this.dir, `server-${index}.log`),
      port: this.serverPorts[index],
      extraArgs: ['--allow-fault-injection', '--faults', JSON.stringify(faults)],
    });
  }

  get fleet(): string {
    return this.proxies.map((p) => p.address).join(',');
  }

  async stop(): Promise<void> {
    await this.cli?.stop();
    await Promise.all(this.workers.map((w) => w.stop()));
    for (const server of this.servers) if (server) await stopProcess(server.pid, 5_000);
    for (const proxy of this.proxies) await proxy.close();
    if (this.temporal) await stopProcess(this.temporal.pid, 5_000);
  }
}

function logFile(dir: string, name: string): number {
  return openSync(path.join(dir, `${name}.log`), 'a');
}

/** Runs the campaign in `spec` once, injecting `schedule` while it runs; stops everything it started. */
export async function runUnderFaults(options: RunOptions): Promise<RunOutcome> {
  const { dir, log } = options;
  mkdirSync(dir, { recursive: true });
  const spec = { ...options.spec, results: { path: path.join(dir, 'results.sqlite'), folder: path.join(dir, 'campaign') } };
  const specFile = path.join(dir, 'campaign.json');
  writeFileSync(specFile, JSON.stringify(spec));
  const cluster = new Cluster(dir);
  const unexpectedExits: string[] = [];
  const injected: InjectedFault[] = [];
  let client: Client | null = null;
  let cliExit: number | null = null;
  let cliStderr = '';
  let finished = false;
  const began = Date.now();
  try {
    await Promise.all([cluster.startTemporal(), cluster.startServer(0), cluster.startServer(1)]);
    cluster.proxies = await Promise.all(cluster.servers.map((s) => FaultProxy.start(s!.address)));
    const fleet = new Fleet([cluster.servers[0]!.address]);
    const model = await fleet.describe('gmm').finally(() => fleet.close());
    const input = resolveCampaign(spec, model, path.join(dir, 'campaigns'));
    const temporalAddress = cluster.temporal!.address;
    const env = { ...process.env, NOISESEARCH_HOME: path.join(dir, 'home'), NOISESEARCH_LOG_LEVEL: 'WARN' };
    const noteExit = (what: string) => {
      unexpectedExits.push(`${what} at ${((Date.now() - began) / 1000).toFixed(1)} s`);
      log(`unexpected: ${what}`);
    };
    for (let i = 0; i < options.workers; i++) {
      const worker = new Supervised(`worker ${i}`, () => {
        const out = logFile(dir, `worker-${i}`);
        const child = spawn(process.execPath, [NOISESEARCH, 'worker', '--temporal', temporalAddress, '--fleet', cluster.fleet], { stdio: ['ignore', out, out], env });
        closeSync(out);
        return child;
      }, noteExit);
      cluster.workers.push(worker);
      worker.run();
    }
    cluster.cli = new Supervised('campaign run', () => {
      const child = spawn(process.execPath, [NOISESEARCH, 'campaign', 'run', specFile, '--temporal', temporalAddress, '--fleet', cluster.fleet, '--no-worker'], { stdio: ['ignore', 'ignore', 'pipe'], env });
      let stderr = '';
      child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-4_000)));
      child.once('exit', () => (cliStderr = stderr));
      return child;
    }, noteExit, (code) => {
      cliExit = code;
      if (code === 0) finished = true;
      return code === 0;
    });
    cluster.cli.run();

    const connection = await Connection.connect({ address: temporalAddress });
    client = new Client({ connection });
    // The campaign's progress as this harness last saw it, and when `done` last moved.
    let progress: CampaignProgress | null = null;
    let doneMovedAt = 0;
    const polling = (async () => {
      while (!finished) {
        const seen = await client!.workflow.getHandle(input.campaignId).query(campaignProgressQuery).catch(() => null);
        if (seen && (!progress || seen.done > progress.done)) doneMovedAt = Date.now();
        if (seen) progress = seen;
        await sleep(250);
      }
    })();

    const timedOut = () => Date.now() - began > options.timeoutMs;
    // A fault starts once the campaign has begun, so that every fault meets running searches.
    while (!finished && !timedOut() && (progress === null || (progress as CampaignProgress).done === 0)) await sleep(200);
    for (const event of options.schedule) {
      if (finished || timedOut()) break;
      await sleep(event.gapMs);
      if (finished) break;
      const startedAt = Date.now();
      await inject(cluster, event);
      const endedAt = Date.now();
      const fault: InjectedFault = { event, startedMs: startedAt - began, endedMs: endedAt - began, recoveryMs: null };
      injected.push(fault);
      // Recovered: a search finished after the fault ended (or the campaign did).
      while (!finished && !timedOut() && doneMovedAt <= endedAt) await sleep(100);
      if (finished || doneMovedAt > endedAt) fault.recoveryMs = Math.max(0, (finished && doneMovedAt <= endedAt ? Date.now() : doneMovedAt) - endedAt);
      log(`${event.kind} (target ${event.target}, ${event.durationMs} ms) at ${(fault.startedMs / 1000).toFixed(1)} s: recovered in ${fault.recoveryMs === null ? '-' : `${fault.recoveryMs} ms`}`);
    }
    while (!finished && !timedOut()) await sleep(200);
    finished = true;
    await polling;

    const running: string[] = [];
    for await (const execution of client.workflow.list({ query: 'ExecutionStatus="Running"' })) running.push(execution.workflowId);
    const store = await openStore(input.store);
    const records = await store.searches(input.campaignId).finally(() => store.close());
    return { input, records, injected, running, unexpectedExits, cliExit, cliStderr, wallMs: Date.now() - began, timedOut: timedOut() };
  } finally {
    finished = true;
    await client?.connection.close().catch(() => undefined);
    await cluster.stop();
  }
}

/** Puts the cluster through one fault and back; returns once the faulty part is restored (or left dead). */
async function inject(cluster: Cluster, event: FaultEvent): Promise<void> {
  const { target, durationMs } = event;
  const actions: Record<FaultKind, () => Promise<void>> = {
    'kill-worker': async () => {
      await cluster.workers[target].kill();
      await sleep(durationMs);
      cluster.workers[target].run();
    },
    'kill-server': async () => {
      await kill(cluster.servers[target]!.child);
      await sleep(durationMs);
      await cluster.startServer(target);
    },
    'lose-server': async () => {
      await kill(cluster.servers[target]!.child);
      cluster.servers[target] = null;
    },
    'restart-temporal': async () => {
      await kill(cluster.temporal!.child);
      await sleep(durationMs);
      await cluster.startTemporal();
    },
    partition: async () => {
      cluster.proxies[target].setMode({ kind: 'blackhole' });
      await sleep(durationMs);
      cluster.proxies[target].setMode({ kind: 'pass' });
    },
    reset: async () => {
      cluster.proxies[target].setMode({ kind: 'reset' });
      await sleep(durationMs);
      cluster.proxies[target].setMode({ kind: 'pass' });
    },
    'slow-server': async () => {
      cluster.proxies[target].setMode({ kind: 'latency', ms: event.latencyMs ?? 500 });
      await sleep(durationMs);
      cluster.proxies[target].setMode({ kind: 'pass' });
    },
    'server-errors': async () => {
      writeFileSync(cluster.errorSwitches[target], '');
      await sleep(durationMs);
      rmSync(cluster.errorSwitches[target], { force: true });
    },
    'kill-cli': async () => {
      await cluster.cli!.kill();
      await sleep(durationMs);
      cluster.cli!.run();
    },
  };
  await actions[event.kind]();
}

/** Keyed by what a search is (item, grid cell, seed): the same search in two runs has the same key. */
export function searchKey(record: SearchRecord): string {
  return `${record.itemId}|${record.cell}|${record.seed}`;
}

/** What must be bit-identical between a search run with faults and without: no timings, no executed NFEs. */
function deterministicPart(record: SearchRecord): unknown {
  const r = record.result;
  return {
    workflowId: record.workflowId,
    status: record.status,
    error: record.error,
    best: r && { noise: r.best.noise, lineage: r.best.lineage, key: r.best.key, candidateId: r.best.candidateId, score: r.best.score, scores: r.best.scores, searchScore: r.best.searchScore },
    nfe: r && { search: r.nfe.search, final: r.nfe.final, total: r.nfe.total, failed: r.nfe.failed },
    candidates: r?.candidates,
    failedCandidates: r?.failedCandidates,
    rounds: r?.rounds,
    stopped: r?.stopped,
    evaluation: record.evaluation,
    sample: record.sample,
    nfe2: [record.nfeSearch, record.nfeFinal, record.nfeTotal],
  };
}

export interface Comparison {
  expected: number;
  lost: string[];
  duplicated: string[];
  differing: string[];
  failed: string[];
  extraExecutedNfe: number;
  executedNfe: { reference: number; faulted: number };
}

/**
 * The faulted run against the reference: every search present once, done, and equal to the reference's
 * in every deterministic field (doubles compared with Object.is through isDeepStrictEqual: bit for bit).
 */
export function compareRuns(reference: RunOutcome, faulted: RunOutcome): Comparison {
  const expected = campaignSize(faulted.input);
  const byKey = new Map<string, SearchRecord[]>();
  for (const record of faulted.records) byKey.set(searchKey(record), [...(byKey.get(searchKey(record)) ?? []), record]);
  const referenceByKey = new Map(reference.records.map((r) => [searchKey(r), r]));
  const lost = [...referenceByKey.keys()].filter((key) => !byKey.has(key));
  if (reference.records.length !== expected) lost.push(`the reference itself has ${reference.records.length} of ${expected} searches`);
  const duplicated = [...byKey].filter(([, records]) => records.length > 1).map(([key]) => key);
  const failed = faulted.records.filter((r) => r.status !== 'done').map((r) => `${searchKey(r)}: ${r.error}`);
  const differing = [...byKey]
    .filter(([key, records]) => referenceByKey.has(key) && !records.every((r) => isDeepStrictEqual(deterministicPart(r), deterministicPart(referenceByKey.get(key)!))))
    .map(([key]) => key);
  // Searches the faulted run has that the reference lacks differ from it too.
  differing.push(...[...byKey.keys()].filter((key) => !referenceByKey.has(key)));
  const executed = (records: SearchRecord[]) => records.reduce((sum, r) => sum + r.nfeExecuted, 0);
  const executedNfe = { reference: executed(reference.records), faulted: executed(faulted.records) };
  return { expected, lost, duplicated, differing, failed, extraExecutedNfe: executedNfe.faulted - executedNfe.reference, executedNfe };
}
