// Seeds for noises, perturbations and renoising are derived, never drawn: the same spec seed gives the
// same candidates in any driver, batch size or retry. SplitMix64 mixes (base, ...path) into one value,
// truncated to 53 bits so it survives JSON and proto-loader's `longs: Number`.

const MASK64 = (1n << 64n) - 1n;

function splitMix64(state: bigint): bigint {
  let z = (state + 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

export const MAX_SEED = Number.MAX_SAFE_INTEGER;

export function deriveSeed(base: number, ...path: number[]): number {
  let state = splitMix64(BigInt(base));
  for (const part of path) state = splitMix64(state ^ BigInt(part));
  return Number(state >> 11n);
}

/** Streams keep the seeds of different uses apart even when their indices coincide. */
export const SeedStream = {
  randomNoise: 1,
  zeroOrderPivot: 2,
  zeroOrderNeighbour: 3,
  pathsNoise: 4,
  pathsRenoise: 5,
  fkNoise: 6,
  fkStep: 7,
  fkResample: 8,
} as const;

/**
 * mulberry32: a small uniform stream in [0, 1) for what only has to repeat from a seed (a fault schedule,
 * synthetic test data), never for noises, whose seeds are derived above.
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
