// Secrets and hostile text, end to end. A real campaign runs through the CLI with every secret the project
// takes configured: mutual TLS to the model server (key files), an API key to Temporal (through a TLS front
// that checks it, test/temporal-proxy.ts), a dashboard token, and a PostgreSQL store whose user has a
// password. Then every output is searched for each secret and for the PEM bodies of the keys: the CLI's and
// the worker's stdout and stderr, the model server's and Temporal's logs, every workflow's history, every
// row of every table, the CSV and JSONL exports, the HTML report, the campaign folder, the campaign record
// in the state folder, both /metrics endpoints, the dashboard's page and state. And every SQL statement of
// the stores is fed hostile text, through SQLite and PostgreSQL, which must come back exactly.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { temporal as proto } from '@temporalio/proto';
import { Client } from 'pg';
import { PROJECT_ROOT, VENV_PYTHON } from '../src/embedded/paths';
import { freePort, startModelServer } from '../src/embedded/processes';
import { fleetTlsFromFlags } from '../src/fleet/tls';
import { openStore } from '../src/store';
import { connectionUrl, redactUrl, shareableStore } from '../src/store/credentials';
import type { CampaignRecord, CellMetricsRecord, ResultsStore, SearchRecord, StoreConfig } from '../src/store/types';
import { makeCertificates, type TestCertificates } from './certificates';
import { stopChild, stopServer, tempDir, uniqueId, waitUntil, withTemporal } from './helpers';
import { withPostgres, type StartedPostgres } from './helpers-postgres';
import { startTemporalProxy, type TemporalProxy } from './temporal-proxy';

const BIN = path.join(PROJECT_ROOT, 'bin', 'noisesearch.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string>, home: string): Promise<Run> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
}

/** A long-running `noisesearch` process whose output is kept. */
function background(args: string[], env: Record<string, string>, home: string): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NOISESEARCH_HOME: home, TEMPORAL_ADDRESS: '', NOISESEARCH_DEBUG: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  return { child, output: () => output };
}

/** Every file under `dir`, as bytes. */
function filesUnder(dir: string): Array<[string, Buffer]> {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((name) => path.join(dir, name))
    .filter((file) => statSync(file).isFile())
    .map((file) => [file, readFileSync(file)]);
}

/** Every (label, value) of every sample of a Prometheus text exposition. */
function metricLabels(text: string): Array<[string, string, string]> {
  const labels: Array<[string, string, string]> = [];
  for (const line of text.split('\n')) {
    const sample = /^(\w+)\{(.*)\} /.exec(line);
    if (!sample) continue;
    for (const [, name, value] of sample[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels.push([sample[1], name, value]);
  }
  return labels;
}

/** Labels the metrics may carry (docs/metrics.md), besides those of the client libraries' process metrics. */
const WORKER_LABELS = new Set(['model', 'algorithm', 'phase', 'outcome', 'verifier', 'endpoint', 'method', 'code', 'retryable', 'state', 'campaign', 'le']);
const SERVER_LABELS = new Set(['method', 'code', 'status', 'op', 'model', 'verifier', 'device', 'kind', 'le']);
const RUNTIME_LABELS = new Set(['version', 'major', 'minor', 'patch', 'patchlevel', 'implementation', 'generation', 'space', 'kind', 'type']);

/** The base64 lines of a PEM key: any of them in an output means the key leaked. */
function pemBody(file: string): string[] {
  return readFileSync(file, 'utf8').split('\n').filter((line) => line && !line.startsWith('-----'));
}

/**
 * A PostgreSQL user that logs in with a password over TCP (the helper's server trusts everyone): the
 * server's superuser keeps trust from 127.0.0.1, for the test's own queries.
 */
async function passwordUser(postgres: StartedPostgres, user: string, password: string, database: string): Promise<string> {
  const admin = new Client({ connectionString: postgres.url });
  await admin.connect();
  try {
    // CREATE ROLE takes no parameters; the password is hex, so it needs no quoting.
    await admin.query(`CREATE ROLE ${user} LOGIN PASSWORD '${password}'`);
    await admin.query(`CREATE DATABASE ${database} OWNER ${user}`);
    const hbaFile = (await admin.query('SHOW hba_file')).rows[0].hba_file as string;
    writeFileSync(hbaFile, ['local all all trust', 'host all postgres 127.0.0.1/32 trust', 'host all all 127.0.0.1/32 scram-sha-256', 'host all all ::1/128 scram-sha-256', ''].join('\n'));
    await admin.query('SELECT pg_reload_conf()');
  } finally {
    await admin.end();
  }
  const url = new URL(postgres.url);
  return `postgres://${user}:${password}@${url.host}/${database}`;
}

describe('no secret reaches any output', { timeout: 900_000 }, () => {
  let certs: TestCertificates;
  let postgres: StartedPostgres;
  let temporal: Awaited<ReturnType<typeof withTemporal>>;
  let server: Awaited<ReturnType<typeof startModelServer>> & { logFile: string; metricsPort: number };
  let proxy: TemporalProxy;
  let worker: ReturnType<typeof background> | undefined;
  const API_KEY = `tk-${randomBytes(12).toString('hex')}`;
  const PG_PASSWORD = `pw${randomBytes(12).toString('hex')}`;
  const ACTION_TOKEN = `dt-${randomBytes(12).toString('hex')}`;
  let storeUrl: string;
  const home = tempDir('security-home');

  before(async () => {
    certs = makeCertificates();
    postgres = await withPostgres();
    storeUrl = await passwordUser(postgres, 'noisesearch_app', PG_PASSWORD, 'leak_test');
    const logFile = path.join(tempDir('security-server'), 'server.log');
    const metricsPort = await freePort();
    const tls = fleetTlsFromFlags({ 'tls-ca': certs.ca, 'tls-cert': certs.clientCert, 'tls-key': certs.clientKey });
    [temporal, server] = await Promise.all([
      withTemporal(),
      startModelServer({ logFile, tls, extraArgs: ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-ca', certs.ca, '--metrics-port', String(metricsPort)] }).then((s) => ({ ...s, logFile, metricsPort })),
    ]);
    proxy = await startTemporalProxy({ upstream: temporal.address, cert: readFileSync(certs.serverCert), key: readFileSync(certs.serverKey), apiKey: API_KEY });
  });
  after(async () => {
    await stopChild(worker?.child);
    await proxy?.stop();
    await Promise.all([stopServer(server), temporal?.stop(), postgres?.stop()]);
  });

  it('runs a campaign with every secret configured, then finds none of them anywhere', async () => {
    const outputs: Array<[string, string | Buffer]> = [];
    const temporalFlags = ['--temporal', proxy.address, '--temporal-tls-ca', certs.ca];
    const fleetFlags = ['--fleet', server.address, '--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey];
    // Kubernetes hands secrets to workers as files and environment variables: so does this test.
    const secretEnv = { TEMPORAL_API_KEY: API_KEY, NOISESEARCH_LOG_LEVEL: 'INFO' };

    const metricsAt = `127.0.0.1:${await freePort()}`;
    worker = background(['worker', ...temporalFlags, '--fleet', server.address, '--metrics', metricsAt], {
      ...secretEnv,
      NOISESEARCH_TLS_CA: certs.ca,
      NOISESEARCH_TLS_CERT: certs.clientCert,
      NOISESEARCH_TLS_KEY: certs.clientKey,
      NOISESEARCH_STORE_URL: storeUrl,
    }, home);
    await waitUntil('the worker to poll', async () => worker!.output().includes('worker polling'), 60_000);

    const folder = path.join(tempDir('security-campaign'), 'out');
    // The user's own spec holds the password: it is input, kept apart from the outputs searched.
    const specFile = path.join(tempDir('security-spec'), 'campaign.json');
    // Class names that are hostile to SQL and look like secrets: they must reach the store exactly, and /metrics never.
    const HOSTILE_NAMES = { 2: "'); DROP TABLE searches; --", 5: 'sk_live_51Hx0SECRETlooking\\"quoted\'' };
    const namesFile = path.join(path.dirname(specFile), 'names.txt');
    writeFileSync(namesFile, Array.from({ length: 1000 }, (_, i) => HOSTILE_NAMES[i as 2 | 5] ?? `class name ${i}`).join('\n'));
    writeFileSync(specFile, JSON.stringify({
      name: 'leak-check',
      dataset: { kind: 'imagenet', classes: [2, 5], names: namesFile },
      grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [400] },
      evaluation: ['gmm-oracle'],
      seeds: [0],
      concurrency: 2,
      results: { store: 'postgres', url: storeUrl, folder },
    }));

    // The worker's metrics, scraped while it works (the last scrape is kept).
    let workerMetrics = '';
    const scraping = setInterval(() => {
      fetch(`http://${metricsAt}/metrics`).then((r) => r.text()).then((text) => (workerMetrics = text), () => undefined);
    }, 300);
    const run = await cli(['campaign', 'run', specFile, '--no-worker', ...temporalFlags, ...fleetFlags], secretEnv, home);
    clearInterval(scraping);
    assert.equal(run.code, 0, `${run.stderr}\n${worker.output()}`);
    const campaignId = /campaign (campaign-leak-check-\w+) finished/.exec(run.stdout)?.[1];
    assert.ok(campaignId, run.stdout);
    outputs.push(['campaign run stdout', run.stdout], ['campaign run stderr', run.stderr]);
    workerMetrics = await (await fetch(`http://${metricsAt}/metrics`)).text();
    assert.match(workerMetrics, /noisesearch_/);
    outputs.push(['worker /metrics', workerMetrics]);
    const serverMetrics = await (await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`)).text();
    assert.match(serverMetrics, /noisesearch_/);
    outputs.push(['model server /metrics', serverMetrics]);

    // The record, the workflow input and the store's campaign row hold the store's URL without its password.
    const record = JSON.parse(readFileSync(path.join(home, 'campaigns', `${campaignId}.json`), 'utf8'));
    assert.equal(record.store.url, storeUrl.replace(`:${PG_PASSWORD}`, ''));

    // Exports, the report and the campaign's status, on a machine that has the password in its environment.
    const storeEnv = { ...secretEnv, NOISESEARCH_STORE_URL: storeUrl };
    // Exports to stdout and to files: both are searched for the password below.
    for (const args of [['export', campaignId!, '--format', 'csv'], ['export', campaignId!, '--format', 'csv', '--out', path.join(folder, `${campaignId}.csv`)], ['export', campaignId!, '--format', 'jsonl', '--out', path.join(folder, `${campaignId}.jsonl`)], ['report', campaignId!], ['campaign', 'status', campaignId!, ...temporalFlags]]) {
      const done = await cli(args, storeEnv, home);
      assert.equal(done.code, 0, `${args.join(' ')}: ${done.stderr}`);
      outputs.push([`${args.slice(0, 2).join(' ')} stdout`, done.stdout], [`${args.slice(0, 2).join(' ')} stderr`, done.stderr]);
    }
    // A wrong password: one line, which does not repeat it.
    const wrongPassword = `wrong${randomBytes(6).toString('hex')}`;
    const refused = await cli(['export', campaignId!, '--format', 'csv', '--store', storeUrl.replace(PG_PASSWORD, wrongPassword)], {}, home);
    assert.equal(refused.code, 1);
    assert.deepEqual(refused.stderr.trim().split('\n'), ['noisesearch export: results store: password authentication failed for user "noisesearch_app"']);
    assert.ok(!refused.stderr.includes(wrongPassword) && !refused.stdout.includes(wrongPassword));
    // No password anywhere (the record has none, and neither the environment): one line that says where to give it.
    const noPassword = await cli(['export', campaignId!, '--format', 'csv'], { NOISESEARCH_STORE_URL: '' }, home);
    assert.equal(noPassword.code, 1);
    assert.deepEqual(noPassword.stderr.trim().split('\n'), ['noisesearch export: results store: SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string; the URL carries no password: give it as NOISESEARCH_STORE_URL (the URL with its password) or PGPASSWORD (docs/security.md)']);

    // The dashboard, with actions and a token from a file.
    const tokenFile = path.join(tempDir('security-token'), 'token');
    writeFileSync(tokenFile, ACTION_TOKEN);
    const dashboard = background(['dashboard', '--address', '127.0.0.1:0', '--allow-actions', '--action-token-file', tokenFile, ...temporalFlags, ...fleetFlags], secretEnv, home);
    try {
      const url = await waitUntil('the dashboard URL', async () => /dashboard (http:\/\/\S+)/.exec(dashboard.output())?.[1], 30_000);
      outputs.push(['dashboard page', await (await fetch(url)).text()]);
      const state = await waitUntil('the dashboard to list the campaign', async () => {
        const text = await (await fetch(new URL('api/state', url))).text();
        return text.includes(campaignId!) && text.includes('SERVING') ? text : null;
      }, 30_000);
      outputs.push(['dashboard /api/state', state]);
    } finally {
      await stopChild(dashboard.child);
    }
    outputs.push(['dashboard output', dashboard.output()]);

    await stopChild(worker.child);
    outputs.push(['worker output', worker.output()], ['model server log', readFileSync(server.logFile)]);
    // The state folder: the campaign record, and whatever else a command kept there.
    outputs.push(...filesUnder(home).map(([file, bytes]): [string, Buffer] => [`state folder ${path.relative(home, file)}`, bytes]));
    outputs.push(...filesUnder(folder).map(([file, bytes]): [string, Buffer] => [`campaign folder ${path.relative(folder, file)}`, bytes]));
    const exported = readdirSync(folder).filter((name) => /\.(csv|jsonl|html)$/.test(name));
    assert.deepEqual(exported.sort(), [`${campaignId}.csv`, `${campaignId}.jsonl`, 'report.html']);

    // Every workflow's history, as Temporal stores it, read from the dev server directly.
    const connection = await Connection.connect({ address: temporal.address });
    try {
      const client = new TemporalClient({ connection });
      let histories = 0;
      const workflowIds: string[] = [];
      for await (const execution of client.workflow.list()) {
        workflowIds.push(execution.workflowId);
        const history = await client.workflow.getHandle(execution.workflowId, execution.runId).fetchHistory();
        outputs.push([`history of ${execution.workflowId}`, Buffer.from(proto.api.history.v1.History.encode(history).finish())]);
        histories++;
      }
      assert.equal(histories, 3, 'the campaign and its two searches');
      // Metrics carry bounded labels only: the campaign's name, never its ID or a search's; the one endpoint.
      for (const [where, text, allowed] of [['worker', workerMetrics, WORKER_LABELS], ['model server', serverMetrics, SERVER_LABELS]] as const) {
        const labels = metricLabels(text);
        assert.ok(labels.length > 10, `${where} /metrics has labelled samples`);
        for (const [metric, name, value] of labels) {
          const ownMetric = metric.startsWith('noisesearch_');
          assert.ok(ownMetric ? allowed.has(name) : RUNTIME_LABELS.has(name) || allowed.has(name), `${where}: ${metric} has label ${name}`);
          if (name === 'campaign') assert.equal(value, 'leak-check');
          if (name === 'endpoint') assert.equal(value, server.address);
          for (const id of workflowIds) assert.ok(!value.includes(id), `${where}: ${metric}{${name}} holds workflow ID ${id}`);
          assert.ok(!/campaign-leak-check-|--imagenet-/.test(value), `${where}: ${metric}{${name}="${value}"} holds an ID`);
        }
        for (const hostile of Object.values(HOSTILE_NAMES)) assert.ok(!text.includes(hostile.slice(0, 12)), `${where} /metrics holds a dataset label`);
      }
    } finally {
      await connection.close();
    }

    // Every row of every table of the store.
    const admin = new Client({ connectionString: postgres.url.replace(/\/[^/]+$/, '/leak_test') });
    await admin.connect();
    try {
      const tables = (await admin.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`)).rows.map((r) => r.table_name as string);
      assert.deepEqual(tables.sort(), ['campaigns', 'cell_metrics', 'searches']);
      const labels = (await admin.query('SELECT item_label FROM searches ORDER BY item_label')).rows.map((r) => r.item_label as string);
      assert.deepEqual(labels, [`${HOSTILE_NAMES[2]} (ImageNet class 2)`, `${HOSTILE_NAMES[5]} (ImageNet class 5)`]);
      for (const table of tables) {
        const rows = (await admin.query(`SELECT row_to_json(t)::text AS row FROM "${table}" t`)).rows.map((r) => r.row as string);
        if (table !== 'cell_metrics') assert.ok(rows.length > 0, `${table} has rows`);
        outputs.push([`store table ${table}`, rows.join('\n')]);
      }
    } finally {
      await admin.end();
    }

    const secrets: Array<[string, string]> = [
      ['the Temporal API key', API_KEY],
      ['the PostgreSQL password', PG_PASSWORD],
      ['the dashboard token', ACTION_TOKEN],
      ['a private key\'s PEM header', 'PRIVATE KEY'],
      ...[certs.clientKey, certs.serverKey].flatMap((file) => pemBody(file).map((line, i): [string, string] => [`line ${i + 1} of ${path.basename(file)}`, line])),
    ];
    assert.ok(outputs.length > 20, `searched ${outputs.length} outputs`);
    for (const [where, content] of outputs) {
      const text = Buffer.isBuffer(content) ? content.toString('latin1') : content;
      for (const [what, secret] of secrets) assert.ok(!text.includes(secret), `${what} appears in ${where}`);
    }
    // The key reached the front door on every call, and the worker and CLIs were let in with it.
    assert.ok(proxy.counts.forwarded > 0);
    assert.equal(proxy.counts.refused, 0);
  });
});

/** Text that breaks statements built by concatenation, or encodings that are careless with bytes. */
const HOSTILE = [
  "'); DROP TABLE searches; --",
  "x' OR '1'='1",
  'Robert"); DELETE FROM campaigns WHERE ("1"="1',
  'back\\slash \\\' \\" \\\\',
  '$1 $$ $tag$ ? ?? :name @p',
  '%s %d %n {0} ${x}',
  '\u2028line\u2029separators ünïcödé 猫 🐈 \uFEFF',
  '-- comment /* open',
  "';\nSELECT pg_sleep(10);--",
];

function hostileSearch(campaignId: string, workflowId: string, text: string): SearchRecord {
  return {
    workflowId,
    campaignId,
    itemId: text,
    itemLabel: text,
    itemCategory: text,
    cell: `random|${text}|400`,
    algorithm: text,
    searchVerifiers: [text, 'gmm-classifier'],
    budgetNfe: 400,
    seed: 1,
    status: 'failed',
    error: text,
    spec: { model: 'gmm', condition: { prompt: text, negativePrompt: text }, algorithm: { name: 'random' }, verifiers: [text], budgetNfe: 400, seed: 1 },
    result: null,
    evaluation: { [text]: 0.5 },
    sample: [],
    nfeSearch: 0,
    nfeFinal: 0,
    nfeTotal: 0,
    nfeExecuted: 0,
    verifierSeconds: 0,
    wallSeconds: 0.25,
    finishedAt: '2026-01-02T03:04:05.000Z',
  };
}

describe('every statement of the stores is parameterised', { timeout: 300_000 }, () => {
  let postgres: StartedPostgres;
  before(async () => {
    postgres = await withPostgres();
  });
  after(async () => {
    await postgres?.stop();
  });

  for (const backend of ['sqlite', 'postgres'] as const) {
    it(`round-trips hostile campaign IDs, names, labels, prompts and errors exactly (${backend})`, async () => {
      const config: StoreConfig = backend === 'sqlite' ? { kind: 'sqlite', path: path.join(tempDir('hostile-sqlite'), 'results.sqlite') } : { kind: 'postgres', url: postgres.url };
      const store: ResultsStore = await openStore(config);
      try {
        for (const [i, text] of HOSTILE.entries()) {
          const campaignId = `${text}-${i}`;
          const campaign: CampaignRecord = { campaignId, name: text, spec: { name: text, items: [{ prompt: text }] }, createdAt: '2026-01-01T00:00:00.000Z' };
          await store.upsertCampaign(campaign);
          assert.deepEqual(await store.getCampaign(campaignId), campaign);
          const records = [hostileSearch(campaignId, `${text}#a`, text), { ...hostileSearch(campaignId, `${text}#b`, text), status: 'done' as const }];
          for (const record of records) await store.upsertSearch(record);
          const back = await store.searches(campaignId);
          assert.deepEqual(back.sort((a, b) => (a.workflowId < b.workflowId ? -1 : 1)), records);
          assert.deepEqual(await store.doneAmong(campaignId, [`${text}#a`, `${text}#b`, text, "' OR 1=1 --"]), [`${text}#b`]);
          const metrics: CellMetricsRecord = { campaignId, cell: text, samples: 2, frechetDistance: 1.5, inceptionScore: 2.5, computedAt: '2026-01-03T00:00:00.000Z' };
          await store.upsertCellMetrics(metrics);
          assert.deepEqual(await store.cellMetrics(campaignId), [metrics]);
        }
        // Nothing was dropped or deleted, and no other campaign's rows were touched.
        assert.equal((await store.searches(`${HOSTILE[0]}-0`)).length, 2);
        assert.equal(await store.getCampaign("x' OR '1'='1"), null);
        assert.deepEqual(await store.searches("x' OR '1'='1"), []);
      } finally {
        await store.close();
      }
    });

    it(`refuses a NUL character in one clear line, the same on both backends (${backend})`, async () => {
      const config: StoreConfig = backend === 'sqlite' ? { kind: 'sqlite', path: path.join(tempDir('nul-sqlite'), 'results.sqlite') } : { kind: 'postgres', url: postgres.url };
      const store = await openStore(config);
      try {
        const campaignId = uniqueId('nul');
        await assert.rejects(store.upsertSearch(hostileSearch(campaignId, 'wf-nul', 'before\0after')), /^Error: searches\.item_id: holds a NUL character \(\\0\), which the results store cannot keep$/);
        await assert.rejects(store.upsertCampaign({ campaignId, name: 'ok', spec: { prompt: 'a\0b' }, createdAt: 'now' }), /^Error: campaigns\.spec: holds a NUL character \(\\0\), which the results store cannot keep$/);
        assert.deepEqual(await store.searches(campaignId), []);
      } finally {
        await store.close();
      }
    });
  }
});

describe('store credentials', () => {
  it('keeps the password out of the shared config and puts it back only to connect', () => {
    const shared = shareableStore({ kind: 'postgres', url: 'postgres://alice:s%40cret%20pw@db.example:5432/results?sslmode=require' });
    assert.deepEqual(shared, { kind: 'postgres', url: 'postgres://alice@db.example:5432/results?sslmode=require' });
    assert.equal(connectionUrl(shared.kind === 'postgres' ? shared.url : '', {}), 'postgres://alice:s%40cret%20pw@db.example:5432/results?sslmode=require');
    assert.equal(redactUrl('postgres://bob:hunter2@h:1/d'), 'postgres://bob:***@h:1/d');
    // From the environment, only for the same user, host, port and database.
    const env = { NOISESEARCH_STORE_URL: 'postgres://carol:pw1@h:5432/d' };
    assert.equal(connectionUrl('postgres://carol@h:5432/d', env), 'postgres://carol:pw1@h:5432/d');
    for (const other of ['postgres://carol@h:5433/d', 'postgres://dave@h:5432/d', 'postgres://carol@h:5432/e', 'postgres://carol@g:5432/d']) assert.equal(connectionUrl(other, env), other);
    assert.deepEqual(shareableStore({ kind: 'sqlite', path: '/x/results.sqlite' }), { kind: 'sqlite', path: '/x/results.sqlite' });
  });
});

/** The addresses a port is listened on, from the kernel's socket tables (IPv4 and IPv6), as IPs. */
function listeners(port: number): string[] {
  const found: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (state !== '0A' || !local) continue;
      const [hex, portHex] = local.split(':');
      if (parseInt(portHex, 16) !== port) continue;
      // IPv4 is one little-endian word; IPv6 four of them.
      const words = hex.match(/.{8}/g)!.map((w) => w.match(/../g)!.reverse().join(''));
      const ip = words.join('');
      const dotted = (hex8: string) => hex8.match(/../g)!.map((b) => parseInt(b, 16)).join('.');
      // An IPv6 socket bound to a v4-mapped address (::ffff:a.b.c.d) listens on that IPv4 address only.
      found.push(ip.length === 8 ? dotted(ip) : ip.startsWith('00000000000000000000FFFF') ? dotted(ip.slice(24)) : ip);
    }
  }
  return found;
}

describe('HTTP endpoints bind 127.0.0.1 unless told otherwise', { timeout: 300_000 }, () => {
  it('the model server\'s gRPC and /metrics ports, with no --host', async () => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    const child = spawn(VENV_PYTHON, ['-m', 'noisesearch_server', '--port', String(port), '--metrics-port', String(metricsPort)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    try {
      await waitUntil('the server to listen', async () => out.includes('listening on'), 60_000);
      assert.deepEqual(listeners(port), ['127.0.0.1']);
      assert.deepEqual(listeners(metricsPort), ['127.0.0.1']);
      assert.match(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(), /noisesearch_server_/);
    } finally {
      await stopChild(child);
    }
  });

  it('the dashboard, with no --address (127.0.0.1:8080), and a worker\'s --metrics only where asked', async (t) => {
    if (listeners(8080).length > 0) {
      t.skip('port 8080 is taken on this machine: the default address cannot be tried');
      return;
    }
    const temporal = await withTemporal();
    const home = tempDir('default-bind');
    const dashboard = background(['dashboard', '--temporal', temporal.address], {}, home);
    try {
      await waitUntil('the dashboard URL', async () => dashboard.output().includes('dashboard http://127.0.0.1:8080/'), 30_000);
      assert.deepEqual(listeners(8080), ['127.0.0.1']);
    } finally {
      await stopChild(dashboard.child);
      await temporal.stop();
    }
  });
});
