// The long fuzzing run (docs/fuzzing.md): the model server's RPCs (servers/tests/test_fuzz.py, hypothesis) and
// the orchestrator's property tests (test/properties.test.ts, fast-check), each with a far larger budget than
// `npm test` gives them. Prints the inputs tried per RPC and kind; non-zero if any property fails.
//
// NOISESEARCH_FUZZ_EXAMPLES: inputs per RPC and kind for the server (default below);
// NOISESEARCH_FUZZ_RUNS: runs per property for the orchestrator (default below);
// NOISESEARCH_FUZZ_SEED: a seed for both (default: a fixed one, so a run can be repeated).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_EXAMPLES = 1000;
const DEFAULT_RUNS = 1000;
const DEFAULT_SEED = 11;

function count(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`fuzz: ${name}=${raw}: want a whole number of at least 1`);
    process.exit(2);
  }
  return value;
}

const examples = count('NOISESEARCH_FUZZ_EXAMPLES', DEFAULT_EXAMPLES);
const runs = count('NOISESEARCH_FUZZ_RUNS', DEFAULT_RUNS);
const seed = count('NOISESEARCH_FUZZ_SEED', DEFAULT_SEED);
const scratch = mkdtempSync(path.join(os.tmpdir(), 'noisesearch-fuzz-'));
const report = path.join(scratch, 'model-server.json');
const env = {
  ...process.env,
  NOISESEARCH_FUZZ_EXAMPLES: String(examples),
  NOISESEARCH_FUZZ_RUNS: String(runs),
  NOISESEARCH_FUZZ_SEED: String(seed),
  NOISESEARCH_FUZZ_REPORT: report,
};
const failed = [];

function seconds(started) {
  return ((Date.now() - started) / 1000).toFixed(0);
}

console.log(`fuzz: model server: ${examples} inputs per RPC and kind, seed ${seed}`);
let started = Date.now();
const python = path.join(root, '.venv', 'bin', 'python');
const server = spawnSync(python, ['-m', 'pytest', '-q', 'servers/tests/test_fuzz.py'], { cwd: root, env, stdio: 'inherit' });
if (server.status !== 0) failed.push('model server');
if (existsSync(report)) {
  const { tried, outcomes, rss_growth_in_calls_mib: growth } = JSON.parse(readFileSync(report, 'utf8'));
  for (const [rpcAndKind, inputs] of Object.entries(tried)) {
    const statuses = Object.entries(outcomes)
      .filter(([key]) => key.startsWith(`${rpcAndKind} `))
      .map(([key, n]) => `${key.slice(rpcAndKind.length + 1)} ${n}`);
    console.log(`fuzz: ${rpcAndKind}: ${inputs} inputs (${statuses.join(', ')})`);
  }
  const total = Object.values(tried).reduce((sum, n) => sum + n, 0);
  console.log(`fuzz: model server: ${total} inputs in ${seconds(started)} s, RSS grew ${growth} MiB during calls`);
}

const properties = path.join(root, 'dist', 'test', 'properties.test.js');
if (existsSync(properties)) {
  console.log(`fuzz: orchestrator: ${runs} runs per property, seed ${seed}`);
  started = Date.now();
  const node = spawnSync(process.execPath, ['--test', properties], { cwd: root, env, stdio: 'inherit' });
  if (node.status !== 0) failed.push('orchestrator');
  console.log(`fuzz: orchestrator: ${seconds(started)} s`);
}
rmSync(scratch, { recursive: true, force: true });
if (failed.length > 0) {
  console.error(`fuzz: properties failed: ${failed.join(', ')}`);
  process.exit(1);
}
