// What the fleet and campaign benchmarks (and the scale test) run against: a Temporal dev server with a
// database file, simulated GPU servers (--model sim) with /metrics, one worker in a process of its own (so its
// CPU seconds and RSS are read from /proc), and campaigns started by the real CLI, as a user starts them.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { PROJECT_ROOT } from '../embedded/paths';
import { freePort, startModelServer, startTemporal, stopProcess, type SimulatedPace, type StartedProcess } from '../embedded/processes';

export interface SimServer {
  address: string;
  metricsPort: number;
  pid: number;
}

export interface SimFleetOptions {
  dir: string;
  servers: number;
  /** Leave out for the embedded gmm at its own pace (the reference a scale test compares with). */
  pace?: SimulatedPace;
  maxBatch?: number;
  maxConcurrency?: number;
}

export interface SimFleet {
  dir: string;
  temporal: StartedProcess;
  servers: SimServer[];
  stop(): Promise<void>;
}

export function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Temporal and `servers` model servers, started side by side. */
export async function startSimFleet(options: SimFleetOptions): Promise<SimFleet> {
  mkdirSync(options.dir, { recursive: true });
  const [temporalStart, serversStart] = await Promise.allSettled([
    startTemporal({ dbFile: path.join(options.dir, 'temporal.db'), logFile: path.join(options.dir, 'temporal.log') }),
    startServers(options),
  ]);
  // Whichever started is stopped when the other did not: nothing is left running.
  if (temporalStart.status === 'rejected' || serversStart.status === 'rejected') {
    if (temporalStart.status === 'fulfilled') await stopProcess(temporalStart.value.pid);
    if (serversStart.status === 'fulfilled') await Promise.all(serversStart.value.map((s) => stopProcess(s.pid)));
    throw temporalStart.status === 'rejected' ? temporalStart.reason : (serversStart as PromiseRejectedResult).reason;
  }
  const temporal = temporalStart.value;
  const servers = serversStart.value;
  return {
    dir: options.dir,
    temporal,
    servers,
    stop: async () => {
      await Promise.all(servers.map((s) => stopProcess(s.pid)));
      await stopProcess(temporal.pid);
    },
  };
}

export async function startServers(options: SimFleetOptions): Promise<SimServer[]> {
  const started: SimServer[] = [];
  try {
    // A few at a time: sixteen Python start-ups at once on two cores take longer than one after another.
    for (let first = 0; first < options.servers; first += 4) {
      const batch = await Promise.allSettled(
        Array.from({ length: Math.min(4, options.servers - first) }, async (_, i) => {
          // A free port can be taken by a neighbour starting at the same moment: try again on new ports.
          for (let attempt = 1; ; attempt++) {
            const metricsPort = await freePort();
            try {
              const server = await startModelServer({
                logFile: path.join(options.dir, `server-${first + i}.log`),
                ...(options.pace ? { sim: options.pace } : {}),
                maxBatch: options.maxBatch,
                maxConcurrency: options.maxConcurrency,
                metricsPort,
              });
              return { address: server.address, metricsPort, pid: server.pid };
            } catch (error) {
              if (attempt >= 3 || !/already in use/i.test(String((error as Error).message))) throw error;
            }
          }
        }),
      );
      for (const outcome of batch) if (outcome.status === 'fulfilled') started.push(outcome.value);
      const failed = batch.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected');
      if (failed) throw failed.reason;
    }
    return started;
  } catch (error) {
    await Promise.all(started.map((s) => stopProcess(s.pid)));
    throw error;
  }
}

const NOISESEARCH = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

/** `noisesearch worker` in a process of its own, polling the default task queue, once it says it polls. */
export async function startWorker(dir: string, temporal: string, fleet: string[], name = 'worker'): Promise<ChildProcess> {
  const logFile = path.join(dir, `${name}.log`);
  const out = openSync(logFile, 'a');
  // BENCH_WORKER_PROFILE=DIR writes the worker's CPU profile there, to see where its time goes.
  const profile = process.env.BENCH_WORKER_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_WORKER_PROFILE}`] : [];
  const child = spawn(process.execPath, [...profile, NOISESEARCH, 'worker', '--temporal', temporal, '--fleet', fleet.join(',')], {
    stdio: ['ignore', out, out],
    env: { ...process.env, NOISESEARCH_HOME: dir, NOISESEARCH_LOG_LEVEL: 'ERROR' },
  });
  closeSync(out);
  const deadline = Date.now() + 60_000;
  while (!/worker polling/.test(readFileSync(logFile, 'utf8'))) {
    if (child.exitCode !== null) throw new Error(`worker exited with code ${child.exitCode} while starting; see ${logFile}`);
    if (Date.now() > deadline) throw new Error(`worker did not start polling within 60 s; see ${logFile}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return child;
}

export async function stopWorker(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

export interface CliOutcome {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** One `noisesearch` command as a user runs it, with its wall time; it fails after `timeoutMs`. */
export function cli(args: string[], home: string, timeoutMs = 600_000): Promise<CliOutcome> {
  const started = process.hrtime.bigint();
  const child = spawn(process.execPath, [NOISESEARCH, ...args], {
    env: { ...process.env, NOISESEARCH_HOME: home, NOISESEARCH_LOG_LEVEL: 'ERROR' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, seconds: Number(process.hrtime.bigint() - started) / 1e9 });
    }),
  );
}

/** A campaign spec file in `dir`, with its results store and folder there too. */
export function writeSpec(dir: string, spec: Record<string, unknown>): string {
  const file = path.join(dir, `${spec.name as string}.json`);
  const results = { path: path.join(dir, `${spec.name as string}.sqlite`), folder: path.join(dir, spec.name as string) };
  writeFileSync(file, JSON.stringify({ results, ...spec }));
  return file;
}

/** CPU seconds (user + system) and resident bytes of a process, from /proc. */
export function processUsage(pid: number): { cpuSeconds: number; rssBytes: number } {
  // Fields after the command's closing parenthesis: state is field 3, utime 14 and stime 15.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticksPerSecond = 100;
  const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { cpuSeconds, rssBytes: rss ? Number(rss[1]) * 1024 : 0 };
}

export interface ServerScrape {
  busySeconds: number;
  batches: number;
  batchCandidates: number;
}

/** The counters a fleet benchmark reads from one server's /metrics. */
export async function scrapeServer(metricsPort: number): Promise<ServerScrape> {
  const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(5_000) });
  const text = await response.text();
  const value = (name: string): number => {
    const match = new RegExp(`^${name}(?:\\{\\})? ([0-9.e+-]+)$`, 'm').exec(text);
    return match ? Number(match[1]) : NaN;
  };
  return {
    busySeconds: value('noisesearch_server_busy_seconds_total'),
    batches: value('noisesearch_server_batch_candidates_count'),
    batchCandidates: value('noisesearch_server_batch_candidates_sum'),
  };
}

export interface Sample {
  /** Seconds since the Unix epoch. */
  at: number;
  worker: { cpuSeconds: number; rssBytes: number };
  temporalCpuSeconds: number;
  servers: ServerScrape[];
}

/** Samples the worker's /proc and every server's /metrics every `everyMs` until stopped. */
export function sampler(workerPid: number, temporalPid: number, servers: SimServer[], everyMs = 1_000): { samples: Sample[]; stop: () => Promise<void> } {
  const samples: Sample[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const at = Date.now() / 1000;
      try {
        const [scrapes, worker] = [await Promise.all(servers.map((s) => scrapeServer(s.metricsPort))), processUsage(workerPid)];
        samples.push({ at, worker, temporalCpuSeconds: processUsage(temporalPid).cpuSeconds, servers: scrapes });
      } catch {
        // A scrape that failed (a process going away at the end) leaves a gap, not a wrong number.
      }
      await new Promise((resolve) => setTimeout(resolve, everyMs));
    }
  })();
  return {
    samples,
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

/** Least-squares slope of y against x: a counter's rate from many scrapes, not from the two at the ends. */
export function slope(points: Array<[number, number]>): number {
  const n = points.length;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  const sxy = points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0);
  const sxx = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  return sxy / sxx;
}

export const fmt = (value: number, digits = 0): string => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
