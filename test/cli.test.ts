// The CLI as a user runs it: a real process, the embedded services in a throw-away state folder.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { stopServer, tempDir, waitUntil, withFaultyServer, withModelServer } from './helpers';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** A running `noisesearch`: what it printed so far, and its exit. */
function cliProcess(args: string[], home: string) {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '' } });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (output.stdout += d));
  child.stderr.on('data', (d) => (output.stderr += d));
  const done = new Promise<Run>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, ...output })));
  return { child, output, done };
}

function cli(args: string[], home: string): Promise<Run> {
  return cliProcess(args, home).done;
}

describe('noisesearch CLI', { timeout: 600_000 }, () => {
  const home = tempDir('cli');
  after(async () => {
    await cli(['server', 'stop'], home);
  });

  it('prints help for every command', async () => {
    for (const args of [['--help'], ['search', '--help'], ['worker', '--help'], ['server', '--help'], ['demo', '--help'], ['progress', '--help'], ['stop', '--help'], ['budget', '--help']]) {
      const run = await cli(args, home);
      assert.equal(run.code, 0, args.join(' '));
      assert.match(run.stdout, /[Uu]sage|Commands/);
    }
  });

  it('refuses bad input with one line on stderr, exit code 2, and nothing started', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['search', '--class', '3', '--bogus'], /^noisesearch search: unknown option '--bogus'; see "noisesearch search --help"$/m],
      [['search', '--class', '3', '--budget', 'lots'], /--budget: "lots" is not a whole number/],
      [['search', '--class', '3', '--model', 'sdxl'], /--model: unknown model 'sdxl'; want (one of )?gmm/],
      [['search', '--class', '3', '--verifier', 'clip'], /verifier: "clip" is not hosted with model gmm; use one of gmm-oracle, gmm-classifier, gmm-selfsup/],
      [['search', '--class', '3', '--budget', '20'], /budget: 20 NFEs cannot pay for one candidate \(55 NFEs\) plus the final generation \(55 NFEs\), which costs 110 NFEs; use --budget 110 or more/],
      [['search', '--class', '3', '--algorithm', 'annealing'], /--algorithm: "annealing" is not one of random/],
      [['frobnicate'], /^noisesearch: unknown command 'frobnicate'; see "noisesearch --help"$/m],
      [['server', 'restart'], /"restart" is not an action/],
      [['worker'], /--fleet is required/],
      [['search', '--class', '3', '--preset', 'flux'], /--preset flux needs model flux-dev, which is not hosted here/],
      [['search', '--class', '3', '--preset', 'sdxl-turbo'], /--preset: "sdxl-turbo" is not one of sit-imagenet, flux, pixart-sigma, paths-paper/],
      [['search', '--class', '3', '--m', '3'], /--m applies to paths, not to --algorithm random/],
      [['search', '--class', '3', '--algorithm', 'zero-order', '--t', '1.5'], /t: 1.5 must lie in \(0, 1\)/],
      [['search', '--class', '3', '--verifier', 'gmm-oracle,clip'], /verifier: "clip" is not hosted/],
      [['search', '--prompt', 'a red car'], /prompt: model gmm is class-conditional \(10 classes\) and takes no text prompt; give a class from 0 to 9/],
      [['search', '--class', '3', '--negative-prompt', 'blurry'], /negativePrompt: model gmm is class-conditional/],
      [['budget', 'some-search', 'lots'], /--budget: "lots" is not a whole number/],
      // An ID names the campaign's record file: one shaped like a path is refused before any file is read.
      [['campaign', 'status', '../../etc/passwd'], /campaign ID "..\/..\/etc\/passwd": want the ID "campaign run" printed, campaign-NAME-HASH/],
      [['report', '/tmp/campaign-x-0123456789ab'], /campaign ID "\/tmp\/campaign-x-0123456789ab": want the ID/],
    ];
    for (const [args, pattern] of cases) {
      const run = await cli(args, home);
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
      assert.match(run.stderr, pattern);
      assert.equal(run.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${run.stderr}`);
      assert.equal(run.stdout, '');
    }
    const many = await cli(['search', '--class', '3', '--algorithm', 'paths', '--delta-b', '0.5', '--sigma-start', '100', '--n', '2'], home);
    assert.equal(many.code, 2);
    assert.deepEqual(
      many.stderr.trim().split('\n').map((line) => line.replace(/^noisesearch search: /, '').split(':')[0]),
      ['sigmaStart', 'deltaB'],
    );
    assert.ok(!existsSync(path.join(home, 'services.json')), 'nothing was started');
  });

  it('runs a search through Temporal and in-process, prints JSON, and gives the same result', async () => {
    const args = ['search', '--class', '3', '--budget', '400', '--seed', '7', '--json'];
    const temporal = await cli(args, home);
    assert.equal(temporal.code, 0, temporal.stderr);
    const viaTemporal = JSON.parse(temporal.stdout);
    for (const key of ['workflowId', 'algorithm', 'verifiers', 'candidates', 'verifierSeconds']) assert.ok(key in viaTemporal, key);
    assert.equal(viaTemporal.budget.nfe, 400);
    assert.equal(viaTemporal.nfe.total, viaTemporal.nfe.search + viaTemporal.nfe.final);
    assert.ok(viaTemporal.nfe.executed >= 0);
    assert.equal(typeof viaTemporal.best.score, 'number');
    assert.equal(typeof viaTemporal.best.noise.seed, 'number');
    assert.ok(!existsSync(path.join(home, 'services.json')), 'what the search started was stopped');

    const local = await cli([...args, '--local'], home);
    assert.equal(local.code, 0, local.stderr);
    const inProcess = JSON.parse(local.stdout);
    assert.deepEqual(inProcess.best, viaTemporal.best);
    assert.equal(inProcess.driver, 'local');
  });

  it('starts, reports and stops the embedded services, and searches reuse them', async () => {
    const start = await cli(['server', 'start'], home);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, /Temporal 127\.0\.0\.1:\d+ \(UI http:\/\/127\.0\.0\.1:\d+\)/);
    const status = await cli(['server', 'status'], home);
    assert.equal(status.code, 0, status.stdout);
    assert.match(status.stdout, /temporal\s+ready/);
    assert.match(status.stdout, /modelServer\s+ready/);
    const search = await cli(['search', '--class', '1', '--budget', '200'], home);
    assert.equal(search.code, 0, search.stderr);
    assert.match(search.stdout, /best score/);
    assert.doesNotMatch(search.stderr, /starting/, 'reused the running services');
    assert.ok(existsSync(path.join(home, 'services.json')), 'left running what it did not start');
    const stop = await cli(['server', 'stop'], home);
    assert.match(stop.stderr, /stopped temporal, modelServer/);
    assert.equal((await cli(['server', 'status'], home)).code, 3);
  });

  it('takes --guidance 0 as unconditional sampling, not the model default', async () => {
    const args = ['search', '--class', '3', '--budget', '400', '--seed', '2', '--verifier', 'gmm-oracle', '--json', '--local'];
    const unconditional = JSON.parse((await cli([...args, '--guidance', '0'], home)).stdout);
    const plain = JSON.parse((await cli(args, home)).stdout);
    const explicitDefault = JSON.parse((await cli([...args, '--guidance', '1'], home)).stdout);
    assert.deepEqual(plain.best, explicitDefault.best, 'the default guidance is 1');
    assert.notEqual(unconditional.best.score, plain.best.score, 'guidance 0 samples another distribution');
  });

  it('links the Temporal UI in the namespace in use', async () => {
    const run = await cli(['search', '--class', '3', '--budget', '400', '--namespace', 'noisesearch-cli-test'], home);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /Temporal UI: http:\/\/127\.0\.0\.1:\d+\/namespaces\/noisesearch-cli-test\/workflows\/search-gmm-random-/);
  });
});

describe('noisesearch CLI under failure', { timeout: 600_000 }, () => {
  const home = tempDir('cli-failure');
  let failing: Awaited<ReturnType<typeof withModelServer>>;
  before(async () => {
    failing = await withFaultyServer({ seed: 1, rules: [{ fail: { code: 'INTERNAL', message: 'injected', stage: 'score' } }] });
  });
  after(async () => {
    await stopServer(failing);
    await cli(['server', 'stop'], home);
  });

  it('ends a search whose every candidate fails with one line on stderr and exit code 1, through either driver', async () => {
    for (const driver of [['--local'], []]) {
      const run = await cli(['search', '--class', '3', '--budget', '400', '--fleet', failing.address, ...driver], home);
      assert.equal(run.code, 1, run.stderr);
      // Besides what the embedded services say as they start, one line: why the search failed.
      const lines = run.stderr.trim().split('\n').filter((line) => !/^(Temporal UI|starting |stopping |stopped )/.test(line));
      assert.equal(lines.length, 1, run.stderr);
      assert.match(lines[0], /every one of the \d+ candidates failed, so there is no best noise \(first failure: INTERNAL: .*injected/);
      assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
      assert.equal(run.stdout, '');
    }
  });

  it('says it waits for model servers that went down, and finishes when they are back', async () => {
    for (const driver of [['--local'], []]) {
      // Slow rounds (50 segments of 300 ms), so that the server dies mid-search, after the spec was validated.
      const server = await withModelServer(['--faults', JSON.stringify({ seed: 1, rules: [{ latency_ms: 300 }] }), '--allow-fault-injection']);
      const port = Number(server.address.split(':')[1]);
      const search = cliProcess(['search', '--class', '3', '--algorithm', 'fk', '--k', '8', '--steps', '100', '--budget', '2000', '--fleet', server.address, ...driver], home);
      let restarted: Awaited<ReturnType<typeof withModelServer>> | undefined;
      try {
        if (driver.length === 0) await waitUntil('the search to start', async () => search.output.stderr.includes('Temporal UI'), 60_000, 100);
        await new Promise((resolve) => setTimeout(resolve, 4_000));
        assert.equal(search.child.exitCode, null, `the search ended before the server was killed: ${search.output.stderr}`);
        await stopServer(server, 'SIGKILL');
        await waitUntil('the waiting line', async () => /waiting for model servers .*UNAVAILABLE/.test(search.output.stderr), 30_000, 100);
        restarted = await withModelServer([], port);
        const run = await search.done;
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stderr, /model servers answer again; the search goes on/);
        assert.match(run.stdout, /best score/);
      } finally {
        search.child.kill('SIGKILL');
        await stopServer(restarted);
      }
    }
  });

  it('prints no MaxListenersExceededWarning over a campaign of many progress polls', async () => {
    const slow = await withFaultyServer({ seed: 1, rules: [{ latency_ms: 400 }] });
    try {
      const spec = path.join(home, 'slow.json');
      writeFileSync(spec, JSON.stringify({
        name: 'slow',
        dataset: { kind: 'gmm-classes', classes: [1, 2] },
        grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400] },
        seeds: [0, 1, 2],
        concurrency: 1,
        results: { folder: path.join(home, 'slow') },
      }));
      const run = await cli(['campaign', 'run', spec, '--fleet', slow.address], home);
      assert.equal(run.code, 0, run.stderr);
      assert.doesNotMatch(run.stderr, /MaxListenersExceededWarning/);
    } finally {
      await stopServer(slow);
    }
  });
});
