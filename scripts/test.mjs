// Every test, TypeScript then Python; non-zero if any fails.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testDir = path.join(root, 'dist', 'test');
const files = readdirSync(testDir).filter((f) => f.endsWith('.test.js')).sort().map((f) => path.join(testDir, f));

const node = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { cwd: root, stdio: 'inherit' });
const python = spawnSync(path.join(root, '.venv', 'bin', 'python'), ['-m', 'pytest', '-q', 'servers/tests'], { cwd: root, stdio: 'inherit' });
const failed = [node.status !== 0 && 'TypeScript', python.status !== 0 && 'Python'].filter(Boolean);
if (failed.length > 0) {
  console.error(`tests failed: ${failed.join(', ')}`);
  process.exit(1);
}
