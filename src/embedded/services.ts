// The embedded deployment: a Temporal dev server persisted to a file and one model server with the
// Gaussian-mixture model, both recorded in the state folder so later commands reuse them.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { stateDir } from './paths';
import { modelServerReady, runs, startModelServer, startTemporal, stopProcess, temporalReady } from './processes';

export type ServiceName = 'temporal' | 'modelServer';

interface ServiceRecord {
  pid: number;
  address: string;
  uiPort?: number;
  /** The model server's model and verifiers (`--model flux=DIR --verifier ...`); absent for the embedded gmm. */
  args?: string[];
}

type ServicesRecord = Partial<Record<ServiceName, ServiceRecord>>;

export const EMBEDDED_MODEL = 'gmm';

const COMMAND_OF: Record<ServiceName, string> = { temporal: 'start-dev', modelServer: 'noisesearch_server' };

async function stopRecorded(name: ServiceName, record: ServiceRecord): Promise<void> {
  if (runs(record.pid, COMMAND_OF[name])) await stopProcess(record.pid);
}

/** Whether nothing listens on these local ports now. */
async function portsFree(ports: number[]): Promise<boolean> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
  return (await Promise.all(ports.map(free))).every(Boolean);
}

function recordFile(): string {
  return path.join(stateDir(), 'services.json');
}

function readRecord(): ServicesRecord {
  return existsSync(recordFile()) ? JSON.parse(readFileSync(recordFile(), 'utf8')) : {};
}

function writeRecord(record: ServicesRecord): void {
  mkdirSync(stateDir(), { recursive: true });
  writeFileSync(recordFile(), JSON.stringify(record, null, 2));
}

export interface ServiceStatus {
  name: ServiceName;
  pid: number;
  address: string;
  alive: boolean;
  ready: boolean;
  uiUrl?: string;
}

async function isReady(name: ServiceName, record: ServiceRecord): Promise<boolean> {
  if (!runs(record.pid, COMMAND_OF[name])) return false;
  return name === 'temporal' ? temporalReady(record.address) : modelServerReady(record.address, record.args ? undefined : EMBEDDED_MODEL);
}

export async function serviceStatus(): Promise<ServiceStatus[]> {
  const record = readRecord();
  const names = Object.keys(record) as ServiceName[];
  return Promise.all(
    names.map(async (name) => {
      const r = record[name]!;
      return {
        name,
        pid: r.pid,
        address: r.address,
        alive: runs(r.pid, COMMAND_OF[name]),
        ready: await isReady(name, r),
        uiUrl: r.uiPort ? `http://127.0.0.1:${r.uiPort}` : undefined,
      };
    }),
  );
}

export interface Embedded {
  temporalAddress?: string;
  uiUrl?: string;
  fleet: string[];
  /** What this call started (and so what its caller should stop). */
  started: ServiceName[];
}

function sameArgs(a: string[] | undefined, b: string[] | undefined): boolean {
  return JSON.stringify(a ?? []) === JSON.stringify(b ?? []);
}

async function ensure(name: ServiceName, record: ServicesRecord, log: (line: string) => void, modelArgs?: string[]): Promise<boolean> {
  const existing = record[name];
  // A model server is reused unless another model was asked for (`server start --model ...`).
  const wantedModel = name !== 'modelServer' || modelArgs === undefined || sameArgs(existing?.args, modelArgs);
  if (existing && wantedModel && (await isReady(name, existing))) return false;
  if (existing) await stopRecorded(name, existing);
  const dir = stateDir();
  mkdirSync(dir, { recursive: true });
  if (name === 'temporal') {
    log('starting Temporal dev server');
    // Back on its recorded ports when they are free: a command waiting out the outage at that address
    // (and any worker) sees it return, with the same database file.
    const [port, uiPort] = existing && existing.uiPort && (await portsFree([Number(existing.address.split(':').pop()), existing.uiPort])) ? [Number(existing.address.split(':').pop()), existing.uiPort] : [];
    const t = await startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(dir, 'temporal.log'), detached: true, port, uiPort });
    record.temporal = { pid: t.pid, address: t.address, uiPort: t.uiPort };
  } else {
    const args = modelArgs ?? existing?.args;
    const [, model = EMBEDDED_MODEL, ...extraArgs] = args ?? [];
    log(`starting model server (${model})`);
    const m = await startModelServer({ logFile: path.join(dir, 'model-server.log'), model, extraArgs, detached: true });
    record.modelServer = { pid: m.pid, address: m.address, ...(args ? { args } : {}) };
  }
  writeRecord(record);
  return true;
}

/** Starts (or reuses) the embedded services. */
/** Starts (or reuses) the embedded Temporal dev server and model server, whichever are asked for. */
export async function ensureEmbedded(options: { temporal: boolean; modelServer?: boolean; modelArgs?: string[]; log?: (line: string) => void }): Promise<Embedded> {
  const log = options.log ?? (() => {});
  const record = readRecord();
  const started: ServiceName[] = [];
  const wanted = ([options.temporal && 'temporal', (options.modelServer ?? true) && 'modelServer'] as const).filter((name): name is ServiceName => Boolean(name));
  await Promise.all(wanted.map(async (name) => (await ensure(name, record, log, options.modelArgs)) && started.push(name)));
  return {
    temporalAddress: record.temporal?.address,
    uiUrl: record.temporal?.uiPort ? `http://127.0.0.1:${record.temporal.uiPort}` : undefined,
    fleet: record.modelServer ? [record.modelServer.address] : [],
    started,
  };
}

/** The embedded model server's address while it is up: commands validate specs against what it hosts. */
export async function readyEmbeddedModelServer(): Promise<string | undefined> {
  const record = readRecord().modelServer;
  return record && (await isReady('modelServer', record)) ? record.address : undefined;
}

export async function stopEmbedded(names: ServiceName[] = ['temporal', 'modelServer']): Promise<ServiceName[]> {
  const record = readRecord();
  const stopped: ServiceName[] = [];
  for (const name of names) {
    const r = record[name];
    if (!r) continue;
    await stopRecorded(name, r);
    delete record[name];
    stopped.push(name);
  }
  if (Object.keys(record).length === 0) rmSync(recordFile(), { force: true });
  else writeRecord(record);
  return stopped;
}
