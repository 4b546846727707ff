// Real services for tests: each suite starts what it needs on free ports and stops it afterwards.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { PROJECT_ROOT, VENV_PYTHON } from '../src/embedded/paths';
import { startModelServer, startTemporal, stopProcess, type StartedProcess } from '../src/embedded/processes';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `noisesearch-${prefix}-`));
}

/** A model server: the embedded gmm, or `model` = NAME=DIR for a PyTorch model from a folder. */
export async function withModelServer(extraArgs: string[] = [], port?: number, model?: string): Promise<StartedProcess & { logFile: string }> {
  const logFile = path.join(tempDir('model-server'), 'server.log');
  return { ...(await startModelServer({ logFile, extraArgs, port, model })), logFile };
}

export async function stopServer(server: StartedProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!server) return;
  if (signal === 'SIGKILL') {
    server.child.kill('SIGKILL');
    await new Promise((resolve) => (server.child.exitCode !== null || server.child.signalCode !== null ? resolve(null) : server.child.once('exit', resolve)));
    return;
  }
  await stopProcess(server.pid);
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${process.pid}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}

/** A Temporal dev server of our own (logs to a file), reached through the SDK's test environment. */
export async function withTemporal(): Promise<{ env: TestWorkflowEnvironment; address: string; stop: () => Promise<void> }> {
  const dir = tempDir('temporal');
  const server = await startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log') });
  const env = await TestWorkflowEnvironment.createFromExistingServer({ address: server.address });
  return {
    env,
    address: server.address,
    async stop() {
      await env.teardown();
      await stopProcess(server.pid);
    },
  };
}

/** A `noisesearch worker` process: a second worker must be another process (one per task queue each). */
export function spawnWorker(temporalAddress: string, fleet: string, taskQueue: string): ChildProcess {
  const log = openSync(path.join(tempDir('worker'), 'worker.log'), 'a');
  return spawn(process.execPath, [path.join(PROJECT_ROOT, 'bin', 'noisesearch.js'), 'worker', '--temporal', temporalAddress, '--fleet', fleet, '--task-queue', taskQueue], {
    stdio: ['ignore', log, log],
    env: { ...process.env, NOISESEARCH_LOG_LEVEL: 'ERROR' },
  });
}

export async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/** Polls `probe` until it returns a value (not null/undefined/false), failing after `timeoutMs`: no wait in a test is unbounded. */
/**
 * Waits for every start, even when one fails, and then throws the first failure: what did start has been
 * assigned by its own `.then` by then, so the suite's `after` stops it rather than the test process
 * hanging on a child nobody holds.
 */
export async function startAll(starts: Array<Promise<unknown>>): Promise<void> {
  const failed = (await Promise.allSettled(starts)).find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
}

export async function waitUntil<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null && value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** A model server that injects the faults given (servers/README.md, "Fault injection"). */
export function withFaultyServer(faults: object, extraArgs: string[] = [], port?: number) {
  return withModelServer(['--allow-fault-injection', '--faults', JSON.stringify(faults), ...extraArgs], port);
}

export interface StartedTriton {
  /** The launch CLI: the leader of a process group of its own, with tritonserver and its Python-backend stubs. */
  child: ChildProcess;
  grpcAddress: string;
  grpcPort: number;
  metricsUrl: string;
  logFile: string;
}

/**
 * A real tritonserver serving `repository` (e.g. deploy/triton/gmm), started by
 * `python -m noisesearch_server.triton.launch`, ready once the launcher prints its ready line. `grpcPort`
 * fixed restarts Triton where its clients already point; 0 takes a free one.
 */
export async function withTriton(repository: string, grpcPort = 0, timeoutMs = 120_000): Promise<StartedTriton> {
  const logFile = path.join(tempDir('triton'), 'tritonserver.log');
  const args = ['-m', 'noisesearch_server.triton.launch', '--repository', repository, '--grpc-port', String(grpcPort), '--log', logFile];
  // Detached: a group of its own, so that killing the group kills tritonserver and its stubs as a crash would.
  const child = spawn(VENV_PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  try {
    const ready = await waitUntil('the Triton launcher\'s ready line', async () => {
      if (child.exitCode !== null) throw new Error(`the Triton launcher exited with code ${child.exitCode} before it was ready: ${stderr.trim()} (log: ${logFile})`);
      return /^triton ready grpc=(\S+):(\d+) http=\S+ metrics=(\S+)$/m.exec(stdout);
    }, timeoutMs, 100);
    return { child, grpcAddress: `${ready[1]}:${ready[2]}`, grpcPort: Number(ready[2]), metricsUrl: ready[3], logFile };
  } catch (error) {
    await killTriton({ child, grpcAddress: '', grpcPort: 0, metricsUrl: '', logFile });
    throw error;
  }
}

/** The shared-memory regions Triton's Python backend made for the stubs of process group `group` (named in their argv). */
function shmRegionsOf(group: number): string[] {
  const regions: string[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      // The group is the fifth field of /proc/PID/stat; the command name before it may hold spaces, hence after ')'.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) !== group) continue;
      regions.push(...readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((arg) => /^triton_python_backend_shm_region_[\w-]+$/.test(arg)));
    } catch {
      // The process ended while being read: it holds nothing any more.
    }
  }
  return regions;
}

/**
 * Triton dies as in a crash: SIGKILL to the launcher's whole group, stubs included. A killed tritonserver
 * cannot remove its stubs' shared-memory regions, so they are removed here.
 */
export async function killTriton(triton: StartedTriton): Promise<void> {
  const { child } = triton;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const regions = shmRegionsOf(child.pid!);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(-child.pid!, 'SIGKILL');
  await exited;
  for (const region of regions) rmSync(path.join('/dev/shm', region), { force: true });
}

/** SIGTERM to the launcher, which stops tritonserver gracefully; a crash-stop if that overstays `graceMs`. */
export async function stopTriton(triton: StartedTriton | undefined, graceMs = 30_000): Promise<void> {
  if (!triton || triton.child.exitCode !== null || triton.child.signalCode !== null) return;
  const exited = new Promise((resolve) => triton.child.once('exit', resolve));
  triton.child.kill('SIGTERM');
  const timer = new Promise((resolve) => setTimeout(resolve, graceMs).unref());
  if ((await Promise.race([exited.then(() => true), timer.then(() => false)])) === false) await killTriton(triton);
}
