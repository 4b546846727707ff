// Workflow code must stay deterministic: no Node built-ins, network, database or plotting code may be
// value-imported into it, directly or through src/. Type-only imports are erased and allowed.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { it } from 'node:test';
import { PROJECT_ROOT } from '../src/embedded/paths';

const BANNED = [/^node:/, /^(fs|path|os|child_process|crypto|net|http|https)$/, /^@grpc\//, /^p-limit$/, /^prom-client$/, /^better-sqlite3$/, /^pg$/, /^vega/, /^playwright/, /^@temporalio\/(client|worker|activity)$/];

function valueImports(file: string): string[] {
  const source = readFileSync(file, 'utf8');
  const specifiers: string[] = [];
  for (const match of source.matchAll(/^\s*(import|export)\s+(type\s+)?[^'"]*?from\s+'([^']+)'/gm)) {
    if (!match[2]) specifiers.push(match[3]);
  }
  return specifiers;
}

function resolveTs(from: string, specifier: string): string | null {
  const base = path.resolve(path.dirname(from), specifier);
  for (const candidate of [`${base}.ts`, path.join(base, 'index.ts')]) if (existsSync(candidate)) return candidate;
  return null;
}

it('workflow code imports nothing non-deterministic, directly or transitively', () => {
  const seen = new Set<string>();
  const offences: string[] = [];
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const specifier of valueImports(file)) {
      if (specifier.startsWith('.')) {
        const target = resolveTs(file, specifier);
        if (target) visit(target);
      } else if (BANNED.some((pattern) => pattern.test(specifier))) {
        offences.push(`${path.relative(PROJECT_ROOT, file)} imports ${specifier}`);
      }
    }
  };
  visit(path.join(PROJECT_ROOT, 'workflows', 'index.ts'));
  assert.ok(seen.size > 5, `followed ${seen.size} files`);
  assert.deepEqual(offences, []);
});
