// Noise schedules as maps between a normalised level and a model's sigma: values worked out by hand on the
// embedded model's Karras schedule and on a shifted (rectified-flow) one, and the TypeScript side checked
// bit for bit against the servers' own schedules (servers/noisesearch_server/schedules.py), which step the
// solves whose sigmas FK steering and validation predict here.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PROJECT_ROOT, VENV_PYTHON } from '../src/embedded/paths';
import { levelOfSigma, lowestStepSigma, sigmaAtLevel, solveSigmas, type ScheduleRange } from '../src/search/schedule';
import type { SolveOp } from '../src/search/types';

const GMM: ScheduleRange = { sigmaMin: 0.02, sigmaMax: 40, schedule: { kind: 'karras', rho: 7, shift: 1 } };
const FLOW: ScheduleRange = { sigmaMin: 0.001, sigmaMax: 1, schedule: { kind: 'shifted', rho: 7, shift: 3 } };

function close(actual: number, expected: number, relative: number): void {
  assert.ok(Math.abs(actual - expected) <= relative * Math.abs(expected), `${actual} is not ${expected} within ${relative}`);
}

const solve = (sigmaFrom: number, sigmaTo: number, steps: number): SolveOp => ({ sigmaFrom, sigmaTo, solver: 'euler', steps });

describe('noise levels', () => {
  it('map the embedded model (Karras, 0.02 to 40, rho 7) by hand', () => {
    // 0.02^(1/7) = e^(-3.912023 / 7) = e^(-0.558860) = 0.571860; 40^(1/7) = e^(3.688879 / 7) = e^(0.526983) = 1.693814.
    // Level 0.5: (0.571860 + 0.5 * 1.121954)^7 = 1.132837^7 = e^(7 * 0.124726) = e^(0.873082) = 2.39427.
    close(sigmaAtLevel(GMM, 0), 0.02, 1e-12);
    close(sigmaAtLevel(GMM, 1), 40, 1e-12);
    close(sigmaAtLevel(GMM, 0.5), 2.39427, 1e-5);
    // The paper's sigma_start as a level: (0.571860 + 0.11 * 1.121954)^7 = 0.695275^7 = e^(7 * -0.363573) = 0.078541.
    close(sigmaAtLevel(GMM, 0.11), 0.078541, 1e-4);
    close(levelOfSigma(GMM, 2.39427), 0.5, 1e-5);
    assert.ok(Math.abs(levelOfSigma(GMM, 0.02)) < 1e-15);
  });

  it('map a shifted schedule (shift 3, sigma_max 1) by hand, and its solves step uniformly in level', () => {
    // sigma = 3l / (1 + 2l): level 0.5 -> 1.5 / 2 = 0.75; level 0.25 -> 0.75 / 1.5 = 0.5; level 0 -> 0.
    assert.equal(sigmaAtLevel(FLOW, 0.5), 0.75);
    assert.equal(sigmaAtLevel(FLOW, 0.25), 0.5);
    assert.equal(sigmaAtLevel(FLOW, 0), 0);
    // level = u / (3 - 2u): 0.75 -> 0.75 / 1.5 = 0.5.
    assert.equal(levelOfSigma(FLOW, 0.75), 0.5);
    // A whole generation in 4 steps visits levels 1, 0.75, 0.5, 0.25, 0: sigmas 1, 2.25 / 2.5, 0.75, 0.5, 0.
    const full = solveSigmas(solve(1, 0, 4), FLOW);
    assert.equal(full.length, 5);
    [1, 0.9, 0.75, 0.5, 0].forEach((sigma, i) => close(full[i] + 1e-300, sigma + 1e-300, 1e-12));
    assert.equal(full[4], 0);
    close(lowestStepSigma(solve(1, 0, 4), FLOW), 0.5, 1e-12);
    // From 0.9 (level 0.9 / 1.2 = 0.75) to 0.5 (level 0.25) in 2 steps: the middle is level 0.5, sigma 0.75.
    const part = solveSigmas(solve(0.9, 0.5, 2), FLOW);
    assert.equal(part[0], 0.9);
    close(part[1], 0.75, 1e-12);
    assert.equal(part[2], 0.5);
  });

  // Shifted solves bit for bit (plain arithmetic); Karras ones to the last bits, since V8's and numpy's
  // powers may round differently (the Karras solve is today's, unchanged).
  it('mirrors the servers\' schedules.py', () => {
    const ranges: ScheduleRange[] = [
      GMM,
      { sigmaMin: 0.0292, sigmaMax: 14.61, schedule: { kind: 'karras', rho: 7, shift: 1 } },
      FLOW,
      { sigmaMin: 0.001, sigmaMax: 1, schedule: { kind: 'shifted', rho: 7, shift: 3.1622776601683795 } },
      { sigmaMin: 0.001, sigmaMax: 1, schedule: { kind: 'shifted', rho: 7, shift: 1 } },
    ];
    const solves = (r: ScheduleRange): SolveOp[] => [
      solve(r.sigmaMax, 0, 1),
      solve(r.sigmaMax, 0, 28),
      solve(r.sigmaMax, 0, 30),
      solve(r.sigmaMax, sigmaAtLevel(r, 0.11), 25),
      solve(sigmaAtLevel(r, 0.89), sigmaAtLevel(r, 0.08), 3),
      solve(sigmaAtLevel(r, 0.4), 0, 7),
    ];
    const levels = [0, 0.02, 0.11, 0.5, 0.89, 1];
    const cases = ranges.map((r) => ({
      range: r,
      solves: solves(r).map((op) => ({ from: op.sigmaFrom, to: op.sigmaTo, steps: op.steps })),
      levels,
    }));
    const script = `
import json, sys
from noisesearch_server.backend import ModelSpec
from noisesearch_server.schedules import level_of_sigma, sigma_at_level, solve_sigmas
out = []
for case in json.load(sys.stdin):
    r = case["range"]
    spec = ModelSpec(name="m", latent_shape=(4,), sigma_min=r["sigmaMin"], sigma_max=r["sigmaMax"], rho=r["schedule"]["rho"],
        num_classes=0, default_solver="euler", default_steps=1, default_guidance_scale=1.0, identity="m",
        schedule=r["schedule"]["kind"], schedule_shift=r["schedule"]["shift"])
    out.append({
        "solves": [[float(x) for x in solve_sigmas(spec, s["from"], s["to"], s["steps"])] for s in case["solves"]],
        "sigmas": [float(sigma_at_level(spec, l)) for l in case["levels"]],
        "levels": [float(level_of_sigma(spec, float(sigma_at_level(spec, l)))) for l in case["levels"]],
    })
print(json.dumps(out))
`;
    const run = spawnSync(VENV_PYTHON, ['-c', script], { input: JSON.stringify(cases), encoding: 'utf8', cwd: path.join(PROJECT_ROOT, 'servers') });
    assert.equal(run.status, 0, run.stderr);
    const python = JSON.parse(run.stdout) as Array<{ solves: number[][]; sigmas: number[]; levels: number[] }>;
    cases.forEach((c, i) => {
      const what = `${c.range.schedule.kind} ${c.range.sigmaMin}..${c.range.sigmaMax} shift ${c.range.schedule.shift}`;
      solves(c.range).forEach((op, j) => {
        const ours = solveSigmas(op, c.range);
        const theirs = python[i].solves[j];
        if (c.range.schedule.kind === 'shifted') assert.deepEqual(ours, theirs, `${what}: solve ${JSON.stringify(c.solves[j])}`);
        assert.equal(ours.length, theirs.length);
        ours.forEach((sigma, k) => assert.ok(Math.abs(sigma - theirs[k]) <= 4e-15 * theirs[k], `${what}: solve ${JSON.stringify(c.solves[j])}, sigma ${k}`));
      });
      levels.forEach((l, j) => {
        close(sigmaAtLevel(c.range, l) + 1e-300, python[i].sigmas[j] + 1e-300, 1e-14);
        const back = levelOfSigma(c.range, sigmaAtLevel(c.range, l));
        assert.ok(Math.abs(back - python[i].levels[j]) <= 1e-14, `${what}: level of sigma(${l})`);
        assert.ok(Math.abs(back - l) <= 1e-12, `${what}: level ${l} round trip`);
      });
    });
  });
});
