// `noisesearch doctor` as a user runs it: on healthy embedded services, with Temporal gone, and with a fleet
// address where nothing listens; every problem named with what to do, within a few seconds.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { runs } from '../src/embedded/processes';
import { Fleet } from '../src/fleet/client';
import { tempDir, waitUntil } from './helpers';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** A command, killed (and so failed) if it has not exited within `timeoutMs`. */
async function cli(args: string[], home: string, timeoutMs = 60_000): Promise<Run> {
  const started = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', CI: 'true' } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  clearTimeout(timer);
  return { code, ...output, seconds: (Date.now() - started) / 1000 };
}

/** A port nothing listens on: taken from the system, then given back. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The lines of doctor's report as [status, name, detail], fix lines left out. */
function checks(stdout: string): Array<[string, string, string]> {
  return stdout
    .split('\n')
    .filter((line) => /^(ok|warn|problem)\s/.test(line))
    .map((line) => {
      const [, status, name, detail] = /^(\S+)\s+(\S+)\s+(.*)$/.exec(line)!;
      return [status, name, detail];
    });
}

/** The line after a problem line: what to do. */
function fixOf(stdout: string, name: string): string {
  const lines = stdout.split('\n');
  const at = lines.findIndex((line) => new RegExp(`^problem\\s+${name}\\s`).test(line));
  assert.ok(at >= 0, `a problem line for ${name}: ${stdout}`);
  return lines[at + 1].trim();
}

describe('noisesearch doctor', { timeout: 240_000 }, () => {
  const home = tempDir('doctor');
  let fleetAddress = '';
  let expectedVerifiers: string[] = [];

  before(async () => {
    const start = await cli(['server', 'start', '--json'], home, 120_000);
    assert.equal(start.code, 0, start.stderr);
    [fleetAddress] = JSON.parse(start.stdout).fleet;
    // What the model server hosts, asked by the fleet client rather than by doctor.
    const fleet = new Fleet([fleetAddress]);
    try {
      expectedVerifiers = (await fleet.describe('gmm')).verifiers.map((v) => v.name);
    } finally {
      fleet.close();
    }
    assert.ok(expectedVerifiers.length >= 2);
  });

  after(async () => {
    await cli(['server', 'stop'], home);
  });

  it('finds nothing wrong with the embedded services running, and lists the model and its verifiers', async () => {
    const run = await cli(['doctor'], home);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.equal(run.stderr, '');
    const found = checks(run.stdout);
    assert.deepEqual(found.map(([, name]) => name), ['node', 'python', 'temporal-cli', 'temporal', 'namespace', 'fleet', 'disk']);
    for (const [status, name, detail] of found) assert.equal(status, 'ok', `${name}: ${detail}`);
    const fleetLine = found.find(([, name]) => name === 'fleet')![2];
    assert.match(fleetLine, new RegExp(`^${fleetAddress} \\(the embedded model server\\) hosts gmm with verifiers `));
    assert.deepEqual(fleetLine.replace(/^.* with verifiers /, '').split(', '), expectedVerifiers);
    const engines = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')).engines.node;
    assert.equal(found[0][2], `Node ${process.versions.node} (package.json wants ${engines})`);

    const json = await cli(['doctor', '--json'], home);
    assert.equal(json.code, 0);
    const report = JSON.parse(json.stdout);
    assert.equal(report.ok, true);
    const fleet = report.checks.find((c: { name: string }) => c.name === 'fleet');
    assert.deepEqual({ address: fleet.address, model: fleet.model, verifiers: fleet.verifiers }, { address: fleetAddress, model: 'gmm', verifiers: expectedVerifiers });
    assert.ok(report.checks.find((c: { name: string }) => c.name === 'disk').freeBytes > 0);
  });

  it('names a fleet address where nothing listens, says what to do, and exits 1 within seconds', async () => {
    const dead = `127.0.0.1:${await deadPort()}`;
    const run = await cli(['doctor', '--fleet', `${fleetAddress},${dead}`], home, 30_000);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.ok(run.seconds < 15, `bounded: ${run.seconds} s`);
    const fleet = checks(run.stdout).filter(([, name]) => name === 'fleet');
    assert.deepEqual(fleet.map(([status]) => status), ['ok', 'problem']);
    assert.match(fleet[1][2], new RegExp(`^${dead} \\(--fleet\\) unreachable: connect ECONNREFUSED`));
    assert.match(fixOf(run.stdout, 'fleet'), /^fix: start the model server there .*or fix --fleet/);

    // --wait retries for as long as it is told, then reports the same problem.
    const waited = await cli(['doctor', '--json', '--fleet', dead, '--wait', '3s'], home, 30_000);
    assert.equal(waited.code, 1);
    assert.ok(waited.seconds >= 3 && waited.seconds < 20, `waited about 3 s: ${waited.seconds} s`);
    const report = JSON.parse(waited.stdout);
    assert.equal(report.ok, false);
    const problems = report.checks.filter((c: { status: string }) => c.status === 'problem');
    assert.deepEqual(problems.map((c: { name: string }) => c.name), ['fleet']);
    assert.ok(problems[0].detail.startsWith(dead) && problems[0].fix, JSON.stringify(problems[0]));
  });

  it('names a Temporal address where nothing listens, and refuses a bad --wait', async () => {
    const dead = `127.0.0.1:${await deadPort()}`;
    const run = await cli(['doctor', '--temporal', dead], home, 30_000);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.ok(run.seconds < 15, `bounded: ${run.seconds} s`);
    const temporal = checks(run.stdout).find(([, name]) => name === 'temporal')!;
    assert.equal(temporal[0], 'problem');
    assert.match(temporal[2], new RegExp(`^${dead} \\(--temporal\\) unreachable`));
    assert.match(fixOf(run.stdout, 'temporal'), new RegExp(`^fix: start Temporal's frontend at ${dead}`));

    const bad = await cli(['doctor', '--wait', 'soon'], home);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--wait: "soon" is not a duration/);
    assert.equal(bad.stdout, '');
  });

  it('with the embedded Temporal stopped: a problem that says to start it, the fleet still ok', async () => {
    const services = JSON.parse(readFileSync(path.join(home, 'services.json'), 'utf8'));
    process.kill(services.temporal.pid, 'SIGKILL');
    await waitUntil('Temporal to exit', async () => !runs(services.temporal.pid, 'start-dev'), 10_000);
    const run = await cli(['doctor'], home, 30_000);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    assert.ok(run.seconds < 15, `bounded: ${run.seconds} s`);
    const found = checks(run.stdout);
    assert.deepEqual(found.filter(([status]) => status === 'problem').map(([, name]) => name), ['temporal']);
    assert.match(found.find(([, name]) => name === 'temporal')![2], /^not running/);
    assert.match(fixOf(run.stdout, 'temporal'), /^fix: noisesearch server start/);
    assert.equal(found.find(([, name]) => name === 'fleet')![0], 'ok');

    const json = await cli(['doctor', '--json'], home, 30_000);
    assert.equal(json.code, 1);
    const report = JSON.parse(json.stdout);
    assert.equal(report.ok, false);
    assert.equal(report.checks.find((c: { name: string }) => c.name === 'temporal').status, 'problem');
  });
});
