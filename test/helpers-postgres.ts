// A throw-away PostgreSQL server for tests: its own data directory, socket directory and free port, run
// as the `postgres` OS user (PostgreSQL refuses to run as root), never the Debian cluster service.
// scripts/setup.mjs installs the server binaries (apt: postgresql).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { freePort, isAlive } from '../src/embedded/processes';

const PG_ROOT = '/usr/lib/postgresql';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;

/** The newest installed server's bin directory (the one with initdb). */
export function postgresBinDir(): string {
  const versions = existsSync(PG_ROOT) ? readdirSync(PG_ROOT).filter((v) => existsSync(path.join(PG_ROOT, v, 'bin', 'initdb'))) : [];
  versions.sort((a, b) => Number(b) - Number(a) || (a < b ? 1 : -1));
  if (versions.length === 0) throw new Error(`no PostgreSQL server under ${PG_ROOT}/<version>/bin; run \`npm run setup\` (apt: postgresql)`);
  return path.join(PG_ROOT, versions[0], 'bin');
}

const asRoot = process.getuid?.() === 0;

/** The command line that runs `command` as the postgres OS user when we are root, else as ourselves. */
function asPostgres(command: string, args: string[]): [string, string[]] {
  return asRoot ? ['runuser', ['-u', 'postgres', '--', command, ...args]] : [command, args];
}

async function accepting(url: string): Promise<boolean> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

export interface StartedPostgres {
  url: string;
  /** Milliseconds from initdb to accepting connections, the database created. */
  startMs: number;
  logFile: string;
  stop(): Promise<void>;
}

export async function withPostgres(): Promise<StartedPostgres> {
  const started = Date.now();
  const bin = postgresBinDir();
  const dir = mkdtempSync(path.join(tmpdir(), 'noisesearch-pg-'));
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  let child: ChildProcess | null = null;
  const cleanUp = async () => {
    if (child) await stopPostgres(child, dataDir);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (asRoot) {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
      chownSync(dir, uid, gid);
    }
    const [initdb, initdbArgs] = asPostgres(path.join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync']);
    try {
      execFileSync(initdb, initdbArgs, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
    } catch (error: any) {
      throw new Error(`initdb failed: ${String(error.stderr ?? '') || error.message}`);
    }
    const port = await freePort();
    // fsync off: a test server's data may be lost on a crash, and it starts and writes faster.
    const [postgres, postgresArgs] = asPostgres(path.join(bin, 'postgres'), [
      '-D', dataDir, '-k', dir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=50',
    ]);
    const out = openSync(logFile, 'a');
    child = spawn(postgres, postgresArgs, { stdio: ['ignore', out, out], cwd: dir });
    closeSync(out);
    const server = child;
    const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await accepting(adminUrl))) {
      if (server.exitCode !== null || server.signalCode !== null) {
        throw new Error(`PostgreSQL exited with ${server.exitCode ?? server.signalCode} while starting:\n${readFileSync(logFile, 'utf8')}`);
      }
      if (Date.now() > deadline) throw new Error(`PostgreSQL did not accept connections within ${START_TIMEOUT_MS / 1000} s:\n${readFileSync(logFile, 'utf8')}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const database = 'noisesearch_test';
    const admin = new Client({ connectionString: adminUrl });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${database}`);
    } finally {
      await admin.end();
    }
    let stopped = false;
    return {
      url: `postgres://postgres@127.0.0.1:${port}/${database}`,
      startMs: Date.now() - started,
      logFile,
      async stop() {
        if (stopped) return;
        stopped = true;
        await cleanUp();
      },
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}

/**
 * A fast shutdown: SIGINT to the postmaster itself (its pid is the first line of postmaster.pid; the
 * child we spawned may be runuser, which would turn SIGINT into SIGTERM, a smart shutdown that waits
 * for clients), then wait for both to exit; SIGKILL if it hangs.
 */
async function stopPostgres(child: ChildProcess, dataDir: string): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  let postmaster = child.pid ?? 0;
  try {
    postmaster = Number(readFileSync(pidFile, 'utf8').split('\n')[0]) || postmaster;
  } catch {
    // Not started far enough to write it: the child is the only process.
  }
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // Already gone.
    }
  };
  signal(postmaster, 'SIGINT');
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (isAlive(postmaster) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 25));
  if (isAlive(postmaster)) signal(postmaster, 'SIGKILL');
  if (child.exitCode === null && child.signalCode === null) {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited(child);
    clearTimeout(timer);
  }
}
