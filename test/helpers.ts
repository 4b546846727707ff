// Real services for tests: each suite starts what it needs on free ports and stops it afterwards.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { PROJECT_ROOT } from '../src/embedded/paths';
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
