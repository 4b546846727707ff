// Real services for tests: each suite starts what it needs on free ports and stops it afterwards.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { startModelServer, startTemporal, stopProcess, type StartedProcess } from '../src/embedded/processes';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `noisesearch-${prefix}-`));
}

export async function withModelServer(extraArgs: string[] = [], port?: number): Promise<StartedProcess & { logFile: string }> {
  const logFile = path.join(tempDir('model-server'), 'server.log');
  return { ...(await startModelServer({ logFile, extraArgs, port })), logFile };
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
export async function withTemporal(): Promise<{ env: TestWorkflowEnvironment; stop: () => Promise<void> }> {
  const dir = tempDir('temporal');
  const server = await startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log') });
  const env = await TestWorkflowEnvironment.createFromExistingServer({ address: server.address });
  return {
    env,
    async stop() {
      await env.teardown();
      await stopProcess(server.pid);
    },
  };
}
