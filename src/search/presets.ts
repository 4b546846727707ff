// The paper's settings as presets. A model preset fixes the model, its sampler and guidance; an
// algorithm preset fixes an algorithm's parameters and runs on any model. Flags given beside a preset
// override it. Sources: Ma et al. 2025 (arXiv 2501.09732), Sec. 4 and 5 and Appendix; see docs/algorithms.md.
import type { AlgorithmSpec, SamplerSpec } from './spec';

export interface Preset {
  description: string;
  source: string;
  model?: string;
  searchSampler?: SamplerSpec;
  finalSampler?: SamplerSpec;
  guidanceScale?: number;
  algorithm?: AlgorithmSpec;
}

export const PRESETS: Record<string, Preset> = {
  'sit-imagenet': {
    description: 'SiT-XL on ImageNet 256: Heun, a 250-NFE final generation, 50 NFEs per search candidate',
    source: 'Ma et al. 2025, Sec. 4 (class-conditional ImageNet, SiT-XL, Heun sampler)',
    model: 'sit-xl',
    // Heun ending at sigma = 0 costs 2 * steps - 1: 125 steps give 249 NFEs, 25 give 49.
    finalSampler: { solver: 'heun', steps: 125 },
    searchSampler: { solver: 'heun', steps: 25 },
  },
  flux: {
    description: 'FLUX.1-dev text-to-image: Euler, 30 steps, guidance 3.5',
    source: 'Ma et al. 2025, Sec. 5 (text-to-image, FLUX.1-dev)',
    model: 'flux-dev',
    searchSampler: { solver: 'euler', steps: 30 },
    finalSampler: { solver: 'euler', steps: 30 },
    guidanceScale: 3.5,
  },
  'pixart-sigma': {
    description: 'PixArt-Sigma text-to-image: DDIM, 30 steps, guidance 4.5 (deterministic DDIM is the Euler step of the probability-flow ODE in sigma)',
    source: 'Ma et al. 2025, Sec. 5 and Appendix (PixArt-Sigma)',
    model: 'pixart-sigma',
    searchSampler: { solver: 'euler', steps: 30 },
    finalSampler: { solver: 'euler', steps: 30 },
    guidanceScale: 4.5,
  },
  'paths-paper': {
    description: 'Search over paths with N = 4, M = 8, sigma_start = 0.11, delta_f = 0.78, delta_b = 0.81 (normalised noise levels in [0, 1], each mapped onto the model\'s sigma by its schedule)',
    source: 'Ma et al. 2025, Sec. 4 (search over paths on ImageNet)',
    algorithm: { name: 'paths', n: 4, m: 8, sigmaStart: 0.11, deltaF: 0.78, deltaB: 0.81 },
  },
};

export const PRESET_NAMES = Object.keys(PRESETS);
