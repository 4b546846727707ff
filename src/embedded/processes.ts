// Starting and stopping the services a run needs as child processes: the Temporal dev server and the
// Python model server. Tests use the same functions as the CLI.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { Connection } from '@temporalio/client';
import { unary } from '../fleet/client';
import { channelCredentials, type FleetTls } from '../fleet/tls';
import { services } from '../fleet/proto';
import { devServerSearchAttributeFlags } from '../temporal/search-attributes';
import { TEMPORAL_BIN, VENV_PYTHON } from './paths';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The last line a process logged: a server that refuses its configuration says why there, in one line. */
function lastLogLine(log: string): string {
  try {
    const lines = readFileSync(log, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
    return lines.length > 0 ? `: ${lines[lines.length - 1]}` : '';
  } catch {
    return '';
  }
}

async function waitFor(what: string, ready: () => Promise<boolean>, child: ChildProcess | null, timeoutMs: number, log: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode} while starting${lastLogLine(log)} (log: ${log})`);
    if (await ready()) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what} did not become ready within ${timeoutMs / 1000} s; see ${log}`);
}

export interface StartedProcess {
  pid: number;
  address: string;
  child: ChildProcess;
}

function spawnLogged(command: string, args: string[], logFile: string, detached: boolean): ChildProcess {
  const out = openSync(logFile, 'a');
  const child = spawn(command, args, { stdio: ['ignore', out, out], detached });
  closeSync(out);
  if (detached) child.unref();
  return child;
}

export async function temporalReady(address: string): Promise<boolean> {
  try {
    const connection = await Connection.connect({ address, connectTimeout: 500 });
    try {
      await connection.workflowService.getSystemInfo({});
      return true;
    } finally {
      await connection.close();
    }
  } catch {
    return false;
  }
}

export interface TemporalOptions {
  dbFile: string;
  logFile: string;
  port?: number;
  uiPort?: number;
  detached?: boolean;
}

export async function startTemporal(options: TemporalOptions): Promise<StartedProcess & { uiPort: number }> {
  const port = options.port ?? (await freePort());
  const uiPort = options.uiPort ?? (await freePort());
  const args = [
    'server', 'start-dev',
    '--ip', '127.0.0.1',
    '--port', String(port),
    '--ui-port', String(uiPort),
    '--db-filename', options.dbFile,
    // SQLite's write-ahead log, synced at checkpoints rather than at every commit: a history survives the
    // dev server's process dying (only an OS crash or power loss can drop its last commits), and one
    // campaign's searches run 2.5x as fast (193 to 486 a minute, 300 searches at 100 concurrent: every
    // child start and completion is a transaction, and the dev server has one SQLite writer).
    '--sqlite-pragma', 'journal_mode=wal',
    '--sqlite-pragma', 'synchronous=normal',
    '--log-level', 'warn',
    // A workflow whose workflow task failed twice in a row gets TemporalReportedProblems set, so that `server
    // status` finds stuck workflows with one visibility query (docs/cli.md, "Logs and stuck workflows").
    '--dynamic-config-value', 'system.numConsecutiveWorkflowTaskProblemsToTriggerSearchAttribute=2',
    ...devServerSearchAttributeFlags(),
  ];
  const child = spawnLogged(TEMPORAL_BIN, args, options.logFile, options.detached ?? false);
  const address = `127.0.0.1:${port}`;
  await waitFor('Temporal dev server', () => temporalReady(address), child, 60_000, options.logFile);
  return { pid: child.pid!, address, uiPort, child };
}

/** Whether the server at `address` answers Describe (hosting `model`, when one is named). */
export async function modelServerReady(address: string, model?: string, tls?: FleetTls): Promise<boolean> {
  const { Denoiser } = services();
  const client = new Denoiser(address, channelCredentials(tls));
  try {
    const described = await unary<object, { model: string }>(client, 'Describe', {}, 500);
    return model === undefined || described.model === model;
  } catch {
    return false;
  } finally {
    client.close();
  }
}

/** The simulated GPU server's pace (--model sim; benchmarks and scale tests only): each engine batch takes at
 * least batchMs + itemMs per candidate of wall time, with the embedded gmm's results. */
export interface SimulatedPace {
  batchMs: number;
  itemMs: number;
}

export interface ModelServerOptions {
  logFile: string;
  port?: number;
  /** The server's --model: a name (gmm), or NAME=DIR for a PyTorch model loaded from a folder. */
  model?: string;
  /** Serve the simulated GPU server (--model sim) at this pace; `model` is then sim or left out. */
  sim?: SimulatedPace;
  maxBatch?: number;
  maxConcurrency?: number;
  /** Serve Prometheus /metrics on this port (docs/metrics.md). */
  metricsPort?: number;
  extraArgs?: string[];
  detached?: boolean;
  /** How the readiness probe reaches a server started with --tls-* (the embedded one speaks plaintext). */
  tls?: FleetTls;
}

function modelOf(options: ModelServerOptions): string {
  if (options.sim && options.model !== undefined && options.model !== 'sim') {
    throw new Error(`startModelServer: sim is the simulated gmm; got model ${JSON.stringify(options.model)} as well`);
  }
  return options.sim ? 'sim' : (options.model ?? 'gmm');
}

/** The server's flags for `options`, after --host and --port; the server itself checks their values. */
export function modelServerFlags(options: ModelServerOptions): string[] {
  const args = ['--model', modelOf(options)];
  if (options.sim) args.push('--sim-batch-ms', String(options.sim.batchMs), '--sim-item-ms', String(options.sim.itemMs));
  if (options.maxBatch !== undefined) args.push('--max-batch', String(options.maxBatch));
  if (options.maxConcurrency !== undefined) args.push('--max-concurrency', String(options.maxConcurrency));
  if (options.metricsPort !== undefined) args.push('--metrics-port', String(options.metricsPort));
  return [...args, ...(options.extraArgs ?? [])];
}

export async function startModelServer(options: ModelServerOptions): Promise<StartedProcess> {
  const port = options.port ?? (await freePort());
  const model = modelOf(options);
  const args = ['-m', 'noisesearch_server', '--host', '127.0.0.1', '--port', String(port), ...modelServerFlags(options)];
  const child = spawnLogged(VENV_PYTHON, args, options.logFile, options.detached ?? false);
  const address = `127.0.0.1:${port}`;
  // A real model reads gigabytes of weights before it serves; the embedded one, simulated or not, is up in
  // seconds, and describes itself as gmm.
  const embedded = model === 'gmm' || model === 'sim';
  await waitFor('model server', () => modelServerReady(address, embedded ? 'gmm' : undefined, options.tls), child, embedded ? 60_000 : 1_800_000, options.logFile);
  return { pid: child.pid!, address, child };
}

/** Whether `pid` is still the process we started, not a later one that reused its number. */
export function runs(pid: number, commandFragment: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(commandFragment);
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if the process has not gone within `graceMs`. */
export async function stopProcess(pid: number, graceMs = 10_000): Promise<void> {
  if (!isAlive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
}
