// `npm run bench`: every benchmark, one after another on a machine each has to itself, each printing its
// tables on stdout. Each program's tables replace its section of docs/benchmarks.md (between
// `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`) with the command, the machine and the date, so the
// page always holds numbers measured side by side in one run. BENCH_ONLY=name,name runs some sections;
// BENCH_WRITE=0 leaves the page alone. Non-zero when any program failed (the others still run).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const page = path.join(root, 'docs', 'benchmarks.md');
const python = path.join('.venv', 'bin', 'python');

const SECTIONS = [
  { name: 'orchestration', command: ['node', 'dist/src/bench/orchestration.js'] },
  { name: 'payloads', command: ['node', 'dist/src/bench/payloads.js'] },
  { name: 'fleet', command: ['node', 'dist/src/bench/fleet.js'] },
  { name: 'campaign', command: ['node', 'dist/src/bench/campaign.js'] },
  { name: 'model', command: [python, '-m', 'noisesearch_server.bench'] },
  { name: 'cost', command: ['node', 'dist/src/bench/cost.js'] },
];

function selected() {
  const only = (process.env.BENCH_ONLY ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = only.filter((name) => !SECTIONS.some((s) => s.name === name));
  if (unknown.length > 0) {
    console.error(`BENCH_ONLY: no section ${unknown.join(', ')}; the sections are ${SECTIONS.map((s) => s.name).join(', ')}`);
    process.exit(2);
  }
  return only.length > 0 ? SECTIONS.filter((s) => only.includes(s.name)) : SECTIONS;
}

function machine() {
  const cpus = os.cpus();
  const memory = (os.totalmem() / 2 ** 30).toFixed(0);
  return `${cpus.length} × ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${memory} GiB, Node ${process.versions.node}, ${os.type()} ${os.release()}`;
}

/** Runs one program with stdout both shown and kept; stderr (progress) goes straight to the terminal. */
function runSection(section) {
  return new Promise((resolve) => {
    const started = Date.now();
    const [executable, ...args] = section.command;
    const child = spawn(executable === 'node' ? process.execPath : path.join(root, executable), args, {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
      process.stdout.write(chunk);
    });
    child.on('close', (code, signal) => resolve({ output, code: code ?? 1, signal, seconds: (Date.now() - started) / 1000 }));
  });
}

function replaceSection(text, name, body) {
  const open = `<!-- bench:${name} -->`;
  const close = `<!-- /bench:${name} -->`;
  const start = text.indexOf(open);
  const end = text.indexOf(close);
  if (start < 0 || end < start) {
    console.error(`bench: docs/benchmarks.md has no ${open} ... ${close} block; section ${name} not written`);
    return text;
  }
  return `${text.slice(0, start + open.length)}\n${body}\n${text.slice(end)}`;
}

const failures = [];
for (const section of selected()) {
  console.log(`\n## ${section.name}: ${section.command.join(' ')}`);
  const { output, code, signal, seconds } = await runSection(section);
  const ok = code === 0 && !signal;
  if (!ok) failures.push(`${section.name} (${signal ?? `exit ${code}`})`);
  if (process.env.BENCH_WRITE === '0' || !existsSync(page)) continue;
  const date = new Date().toISOString().slice(0, 16).replace('T', ' ');
  const status = ok ? `${seconds.toFixed(0)} s` : `FAILED (${signal ?? `exit ${code}`}) after ${seconds.toFixed(0)} s`;
  const body = [`\`${section.command.join(' ')}\` (in \`npm run bench\`), ${date} UTC, ${status}; ${machine()}:`, '', '```', output.trimEnd(), '```'].join('\n');
  writeFileSync(page, replaceSection(readFileSync(page, 'utf8'), section.name, body));
}
if (failures.length > 0) {
  console.error(`\nbench: failed: ${failures.join(', ')}`);
  process.exit(1);
}
