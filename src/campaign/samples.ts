// Where a campaign keeps its pictures, on the workers' machine: each search's final sample (an SVG of a
// latent, or the PNG an image model decoded) and, for an image model, the no-search baseline of each
// (item, seed) with its evaluation scores. Only activities and the report writer touch these files:
// picture bytes never travel through a workflow.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { SearchRecord } from '../store/types';

/** File systems take names of at most 255 bytes; a sample's name keeps its extension and a margin. */
const MAX_NAME_CHARS = 160;

/**
 * A file name made of an ID that holds user data (a dataset's category or item id): only letters, digits,
 * '.', '_' and '-', so no separator, NUL or ".." path can leave the samples folder. An ID that had to be
 * changed, or cut to a length a file system takes, ends in "~" and a hash of the whole ID ("~" is never
 * kept from an ID), so two IDs never share a file ("a b" and "a_b" would).
 */
function fileName(text: string): string {
  const safe = text.replace(/[^\w.-]+/g, '_');
  if (safe === text && safe.length <= MAX_NAME_CHARS) return safe;
  return `${safe.slice(0, MAX_NAME_CHARS - 17)}~${createHash('sha256').update(text).digest('hex').slice(0, 16)}`;
}

export function samplePath(folder: string, workflowId: string, extension: 'svg' | 'png'): string {
  return path.join(folder, 'samples', `${fileName(workflowId)}.${extension}`);
}

export function baselinePath(folder: string, itemId: string, seed: number, extension: 'png' | 'json'): string {
  return path.join(folder, 'samples', `baseline--${fileName(itemId)}--seed-${seed}.${extension}`);
}

/** Writes through a temporary file and a rename: a reader never sees half a picture, and two writers of one file agree. */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(temporary, data);
  renameSync(temporary, file);
}

/** The no-search sample of an (item, seed): one generation with the model's default sampler, outside every budget. */
export interface Baseline {
  itemId: string;
  seed: number;
  image: Uint8Array;
  evaluation: Record<string, number>;
  nfe: number;
}

export function baselineKey(itemId: string, seed: number): string {
  return JSON.stringify([itemId, seed]);
}

/** The decoded final samples a campaign's folder holds, by workflow ID, and the baselines beside them. */
export interface SampleImages {
  searches: Map<string, Uint8Array>;
  baselines: Map<string, Baseline>;
}

export function loadSampleImages(folder: string, searches: SearchRecord[]): SampleImages {
  const images: SampleImages = { searches: new Map(), baselines: new Map() };
  for (const r of searches) {
    if (r.status !== 'done') continue;
    const file = samplePath(folder, r.workflowId, 'png');
    if (!existsSync(file)) continue;
    images.searches.set(r.workflowId, readFileSync(file));
    const key = baselineKey(r.itemId, r.seed);
    const [png, json] = [baselinePath(folder, r.itemId, r.seed, 'png'), baselinePath(folder, r.itemId, r.seed, 'json')];
    if (images.baselines.has(key) || !existsSync(png) || !existsSync(json)) continue;
    const { evaluation, nfe } = JSON.parse(readFileSync(json, 'utf8')) as Pick<Baseline, 'evaluation' | 'nfe'>;
    images.baselines.set(key, { itemId: r.itemId, seed: r.seed, image: readFileSync(png), evaluation, nfe });
  }
  return images;
}
