// TLS and mutual TLS for real: certificates made with the openssl CLI, a real model server requiring client
// certificates, the Fleet and the `noisesearch` CLI (search and worker) through it; and TLS, mutual TLS and
// an API key to Temporal through a TLS front for the dev server (test/temporal-proxy.ts).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';
import { startModelServer } from '../src/embedded/processes';
import { Fleet } from '../src/fleet/client';
import { FleetError } from '../src/fleet/errors';
import { fleetTlsFromFlags, type FleetTls } from '../src/fleet/tls';
import { TASK_QUEUE } from '../src/temporal/constants';
import { makeCertificates, type TestCertificates } from './certificates';
import { gmmModelInfo } from './fixtures';
import { stopChild, stopServer, tempDir, waitUntil, withModelServer, withTemporal } from './helpers';
import { startTemporalProxy, type TemporalProxy } from './temporal-proxy';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string> = {}, home = tempDir('tls-home')): Promise<Run> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', NOISESEARCH_LOG_LEVEL: 'ERROR', ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
}

/** stderr's lines: Node's warning about TLS server names that are IP addresses must not be among them. */
function ownLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line);
}

const SEARCH = ['search', '--class', '3', '--budget', '330', '--seed', '7', '--json'];

describe('TLS between workers and model servers', { timeout: 600_000 }, () => {
  let certs: TestCertificates;
  let mtls: Awaited<ReturnType<typeof withModelServer>>;
  let plain: Awaited<ReturnType<typeof withModelServer>>;
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  const read = (file: string) => readFileSync(file);
  let good: FleetTls;

  before(async () => {
    certs = makeCertificates();
    good = { ca: read(certs.ca), cert: read(certs.clientCert), key: read(certs.clientKey) };
    const logFile = path.join(tempDir('mtls-server'), 'server.log');
    [mtls, plain, temporal] = await Promise.all([
      // Its readiness is probed over mutual TLS too.
      startModelServer({ logFile, extraArgs: ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-ca', certs.ca], tls: good }).then((s) => ({ ...s, logFile })),
      withModelServer(),
      withTemporal(),
    ]);
  });
  after(async () => {
    await Promise.all([stopServer(mtls), stopServer(plain), temporal?.stop()]);
  });

  it('a fleet with a client certificate of the server\'s CA evaluates a batch as over plaintext', async () => {
    const batch = {
      model: 'gmm',
      condition: { classLabel: 3 },
      verifiers: ['gmm-classifier'],
      candidates: [{ id: 'a', lineage: { noise: { seed: 11, perturbations: [] }, ops: [{ solve: { sigmaFrom: gmmModelInfo().sigmaMax, sigmaTo: 0, solver: 'heun' as const, steps: 10 } }] }, scoreXpred: false }],
    };
    const secure = new Fleet([mtls.address], { tls: good });
    const insecure = new Fleet([plain.address]);
    try {
      const [a, b] = await Promise.all([secure.evaluate(batch as never), insecure.evaluate(batch as never)]);
      assert.deepEqual(a.outcomes[0].scores, b.outcomes[0].scores);
      assert.ok(Number.isFinite(a.outcomes[0].scores['gmm-classifier']));
    } finally {
      secure.close();
      insecure.close();
    }
  });

  it('refuses, as one non-retryable configuration error, every client the server does not take', async () => {
    const cases: Array<[string, FleetTls | undefined, string]> = [
      ['no client certificate', { ca: read(certs.ca) }, 'TLS handshake failed: the server requires a client certificate (mutual TLS); give --tls-cert and --tls-key (docs/security.md)'],
      ['a certificate of another CA', { ca: read(certs.ca), cert: read(certs.strangerCert), key: read(certs.strangerKey) }, 'TLS handshake failed: the server refused this client\'s certificate (--tls-cert): it is not signed by a CA the server trusts (docs/security.md)'],
      ['plaintext', undefined, 'TLS handshake failed: the server speaks TLS and this client plaintext; give --tls-ca (and --tls-cert/--tls-key where it requires mutual TLS) (docs/security.md)'],
    ];
    for (const [what, tls, message] of cases) {
      const fleet = new Fleet([mtls.address], { tls });
      try {
        await assert.rejects(fleet.describe('gmm'), (error: FleetError) => {
          assert.equal(error.code, 'FAILED_PRECONDITION', what);
          assert.equal(error.retryable, false, what);
          assert.equal(error.message, `${mtls.address}: ${message}`, what);
          return true;
        });
      } finally {
        fleet.close();
      }
    }
    // The server's certificate checked against a CA that did not sign it.
    const wrongCa = new Fleet([mtls.address], { tls: { ...good, ca: read(certs.otherCa) } });
    try {
      await assert.rejects(wrongCa.describe('gmm'), (error: FleetError) => {
        assert.equal(error.retryable, false);
        assert.match(error.message, /TLS handshake failed: the server's certificate was not accepted \(.+\); check that --tls-ca signed it and that it names 127\.0\.0\.1/);
        return true;
      });
    } finally {
      wrongCa.close();
    }
    // TLS spoken to a plaintext server.
    const toPlain = new Fleet([plain.address], { tls: good });
    try {
      await assert.rejects(toPlain.describe('gmm'), (error: FleetError) => error.retryable === false && /the server speaks plaintext and this client TLS; start it with TLS, or give this client no --tls-\*/.test(error.message));
    } finally {
      toPlain.close();
    }
    // A server that is down is not a TLS problem: still a retryable wait.
    const down = new Fleet(['127.0.0.1:1'], { tls: good });
    try {
      await assert.rejects(down.describe('gmm'), (error: FleetError) => error.code === 'UNAVAILABLE' && error.retryable);
    } finally {
      down.close();
    }
  });

  it('refuses unreadable or mismatched TLS files in one line, exit 2, before connecting to anything', async () => {
    const cases: Array<[string[], Record<string, string>, string]> = [
      [['--tls-ca', '/nonexistent/ca.pem'], {}, 'noisesearch search: --tls-ca /nonexistent/ca.pem: cannot read it (ENOENT); want a readable PEM file'],
      [['--tls-cert', certs.clientCert], {}, 'noisesearch search: --tls-cert: a client certificate needs its key and the key its certificate; give both --tls-cert and --tls-key'],
      [['--tls-cert', certs.clientCert, '--tls-key', certs.strangerKey], {}, `noisesearch search: --tls-cert ${certs.clientCert} / --tls-key ${certs.strangerKey}: not a PEM certificate and its matching private key`],
      [[], { NOISESEARCH_TLS_CA: '/nonexistent/env-ca.pem' }, 'noisesearch search: --tls-ca /nonexistent/env-ca.pem: cannot read it (ENOENT); want a readable PEM file'],
    ];
    for (const [flags, env, line] of cases) {
      const run = await cli([...SEARCH, '--fleet', mtls.address, '--temporal', temporal.address, ...flags], env);
      assert.equal(run.code, 2, run.stderr);
      assert.deepEqual(ownLines(run.stderr), [line]);
      assert.equal(run.stdout, '');
    }
    const run = await cli([...SEARCH, '--fleet', mtls.address, '--temporal', temporal.address, '--tls-ca', certs.ca]);
    assert.equal(run.code, 2, run.stderr);
    assert.deepEqual(ownLines(run.stderr), [`noisesearch search: --model: ${mtls.address}: TLS handshake failed: the server requires a client certificate (mutual TLS); give --tls-cert and --tls-key (docs/security.md)`]);
  });

  it('a search through Temporal and an mTLS fleet gives the result it gives over plaintext; a worker takes its TLS from the environment', async () => {
    const tlsFlags = ['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey];
    const secure = await cli([...SEARCH, '--temporal', temporal.address, '--fleet', mtls.address, '--workflow-id', 'tls-search-mtls', ...tlsFlags]);
    assert.equal(secure.code, 0, secure.stderr);
    const insecure = await cli([...SEARCH, '--temporal', temporal.address, '--fleet', plain.address, '--workflow-id', 'tls-search-plain']);
    assert.equal(insecure.code, 0, insecure.stderr);
    const a = JSON.parse(secure.stdout);
    const b = JSON.parse(insecure.stdout);
    assert.deepEqual(a.best, b.best);
    assert.deepEqual(a.nfe, b.nfe);

    // A worker elsewhere with NOISESEARCH_TLS_* (as Kubernetes mounts secrets), and a search that only starts it.
    const worker = spawn(process.execPath, [BIN, 'worker', '--temporal', temporal.address, '--fleet', mtls.address], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, NOISESEARCH_LOG_LEVEL: 'ERROR', NOISESEARCH_TLS_CA: certs.ca, NOISESEARCH_TLS_CERT: certs.clientCert, NOISESEARCH_TLS_KEY: certs.clientKey },
    });
    let workerLog = '';
    worker.stderr!.on('data', (d) => (workerLog += d));
    try {
      await waitUntil('the worker to start polling', async () => workerLog.includes(`worker polling ${TASK_QUEUE}`), 60_000);
      const remote = await cli([...SEARCH, '--temporal', temporal.address, '--workflow-id', 'tls-search-remote']);
      assert.equal(remote.code, 0, `${remote.stderr}\n${workerLog}`);
      assert.deepEqual(JSON.parse(remote.stdout).best, b.best);
    } finally {
      await stopChild(worker);
    }
  });

  it('reads the same files from NOISESEARCH_TLS_* as from the flags', () => {
    const fromEnv = fleetTlsFromFlags({}, { NOISESEARCH_TLS_CA: certs.ca, NOISESEARCH_TLS_CERT: certs.clientCert, NOISESEARCH_TLS_KEY: certs.clientKey });
    assert.deepEqual(fromEnv, good);
    // A flag wins over the environment.
    assert.deepEqual(fleetTlsFromFlags({ 'tls-ca': certs.otherCa }, { NOISESEARCH_TLS_CA: certs.ca })?.ca, read(certs.otherCa));
    assert.equal(fleetTlsFromFlags({}, {}), undefined);
  });
});

describe('TLS and API keys to Temporal', { timeout: 600_000 }, () => {
  let certs: TestCertificates;
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let model: Awaited<ReturnType<typeof withModelServer>>;
  let mtlsProxy: TemporalProxy;
  let keyProxy: TemporalProxy;
  const API_KEY = 'ns-test-key-3f9c1e0d2b';

  before(async () => {
    certs = makeCertificates();
    [temporal, model] = await Promise.all([withTemporal(), withModelServer()]);
    const cert = readFileSync(certs.serverCert);
    const key = readFileSync(certs.serverKey);
    mtlsProxy = await startTemporalProxy({ upstream: temporal.address, cert, key, ca: readFileSync(certs.ca) });
    keyProxy = await startTemporalProxy({ upstream: temporal.address, cert, key, apiKey: API_KEY });
  });
  after(async () => {
    await Promise.all([mtlsProxy?.stop(), keyProxy?.stop()]);
    await Promise.all([stopServer(model), temporal?.stop()]);
  });

  it('runs a search (client and in-process worker) over mutual TLS to Temporal', async () => {
    const run = await cli([...SEARCH, '--temporal', mtlsProxy.address, '--fleet', model.address, '--workflow-id', 'temporal-mtls',
      '--temporal-tls-ca', certs.ca, '--temporal-tls-cert', certs.clientCert, '--temporal-tls-key', certs.clientKey]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(JSON.parse(run.stdout).workflowId, 'temporal-mtls');
    assert.ok(mtlsProxy.counts.forwarded > 0);
  });

  it('refuses in one line, exit 2, a CA that did not sign Temporal\'s certificate, a missing or untrusted client certificate', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--temporal-tls-ca', certs.otherCa, '--temporal-tls-cert', certs.clientCert, '--temporal-tls-key', certs.clientKey], /TLS handshake failed: the server's certificate was not accepted \(self-signed certificate in certificate chain\); check that --temporal-tls-ca signed it and that it names 127\.0\.0\.1 \(docs\/security\.md\)$/],
      [['--temporal-tls-ca', certs.ca], /TLS handshake failed: the server requires a client certificate \(mutual TLS\); give --temporal-tls-cert and --temporal-tls-key \(docs\/security\.md\)$/],
      [['--temporal-tls-ca', certs.ca, '--temporal-tls-cert', certs.strangerCert, '--temporal-tls-key', certs.strangerKey], /TLS handshake failed: the server refused this client's certificate \(--temporal-tls-cert\): it is not signed by a CA the server trusts \(docs\/security\.md\)$/],
      [[], /TLS handshake failed: the server speaks TLS and this client plaintext; give --temporal-tls-ca \(and --temporal-tls-cert\/--temporal-tls-key where it requires mutual TLS\) \(docs\/security\.md\)$/],
    ];
    for (const [flags, reason] of cases) {
      const run = await cli([...SEARCH, '--temporal', mtlsProxy.address, '--fleet', model.address, '--workflow-id', 'temporal-refused', ...flags]);
      assert.equal(run.code, 2, run.stderr);
      const lines = ownLines(run.stderr);
      assert.equal(lines.length, 1, run.stderr);
      assert.ok(lines[0].startsWith(`noisesearch search: Temporal ${mtlsProxy.address}: `), lines[0]);
      assert.match(lines[0], reason);
    }
  });

  it('sends the API key (from TEMPORAL_API_KEY) as a bearer token on every call, over TLS; a wrong key is refused', async () => {
    const run = await cli([...SEARCH, '--temporal', keyProxy.address, '--fleet', model.address, '--workflow-id', 'temporal-api-key', '--temporal-tls-ca', certs.ca], { TEMPORAL_API_KEY: API_KEY });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(keyProxy.counts.forwarded > 0);
    assert.equal(keyProxy.counts.refused, 0);
    assert.deepEqual([...keyProxy.authorizations], [`Bearer ${API_KEY}`]);
    assert.ok(!run.stderr.includes(API_KEY) && !run.stdout.includes(API_KEY));

    const wrong = await cli([...SEARCH, '--temporal', keyProxy.address, '--fleet', model.address, '--workflow-id', 'temporal-wrong-key', '--temporal-tls-ca', certs.ca, '--temporal-api-key', 'not-the-key']);
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.ok(keyProxy.counts.refused > 0);
    assert.deepEqual(ownLines(wrong.stderr), [`noisesearch search: Temporal ${keyProxy.address} refused this client (missing or wrong API key); check --temporal-api-key ($TEMPORAL_API_KEY) or the client certificate`]);
    assert.ok(!wrong.stderr.includes('not-the-key'));
  });
});
