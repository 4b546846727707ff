// A model's description without starting a server: the model server's own code answers, so the CLI can
// refuse a bad spec before anything starts and the model's facts live in one place.
import { spawnSync } from 'node:child_process';
import { toModelInfo } from '../fleet/client';
import type { ModelInfo } from '../search/types';
import { VENV_PYTHON } from './paths';

export class UnknownModelError extends Error {}

export function describeEmbeddedModel(model: string): ModelInfo {
  const run = spawnSync(VENV_PYTHON, ['-m', 'noisesearch_server', '--describe', '--model', model], { encoding: 'utf8' });
  if (run.status === 2) throw new UnknownModelError(run.stderr.trim().replace(/^noisesearch-server: /, ''));
  if (run.status !== 0) throw new Error(`could not describe model ${model}: ${run.stderr.trim() || run.error?.message}`);
  return toModelInfo(JSON.parse(run.stdout));
}
