// Property-based tests (fast-check) of everything the orchestrator reads from a user before it spends
// compute: search specs, campaign specs (as values and as YAML text) and command-line arguments. A refusal
// is always the project's own error (SpecError or UsageError) listing one-line problems, never another
// exception; a spec that is taken plans within its budget, checked by summing, independently of the
// planner, the NFEs of every candidate it proposed to a fake server.
// NOISESEARCH_FUZZ_RUNS sets the runs per property (default 60: the file runs in well under a minute).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import YAML from 'yaml';
import { readCampaignSpec, resolveCampaign } from '../src/campaign/spec';
import { campaignSize } from '../src/campaign/plan';
import { finiteNumber, oneOf, UsageError, wholeNumber } from '../src/cli/args';
import { CommandLineError } from '../src/cli/program';
import { main, parseArguments } from '../src/cli/main';
import { createRun } from '../src/search/run';
import { MAX_SEED } from '../src/search/seeds';
import { SpecError, type AlgorithmSpec, type SearchSpec } from '../src/search/spec';
import type { Op, WireCandidate } from '../src/search/types';
import { drive, type RoundLog } from './drive';
import { gmmModelInfo } from './fixtures';

const RUNS = Number(process.env.NOISESEARCH_FUZZ_RUNS ?? 60);
const SEED = process.env.NOISESEARCH_FUZZ_SEED === undefined ? undefined : Number(process.env.NOISESEARCH_FUZZ_SEED);
const params = { numRuns: RUNS, ...(SEED === undefined ? {} : { seed: SEED }) };
process.stderr.write(`properties: ${RUNS} runs per property${SEED === undefined ? '' : `, seed ${SEED}`} (NOISESEARCH_FUZZ_RUNS, NOISESEARCH_FUZZ_SEED)\n`);

/** The embedded model as its server describes it, with 10-step Heun generations (19 NFEs) to keep runs short. */
const MODEL = gmmModelInfo({ defaultSteps: 10 });
const VERIFIERS = MODEL.verifiers.map((v) => v.name);
/** A line a user reads: no line break, and short enough to read (long values are cut in the middle). */
const MAX_PROBLEM_CHARS = 1000;

function assertProblems(problems: unknown, what: string): void {
  assert.ok(Array.isArray(problems) && problems.length > 0, `${what}: a refusal lists its problems`);
  for (const problem of problems) {
    assert.equal(typeof problem, 'string', `${what}: a problem is text`);
    assert.ok(problem.length > 0 && !/[\r\n\u2028\u2029]/.test(problem), `${what}: a problem is one line: ${JSON.stringify(problem).slice(0, 300)}`);
    assert.ok(problem.length <= MAX_PROBLEM_CHARS, `${what}: a problem is at most ${MAX_PROBLEM_CHARS} characters, not ${problem.length}`);
  }
}

/** Runs `make`; a refusal must be a SpecError with one-line problems. Returns the value, or null when refused. */
function takenOrRefused<T>(make: () => T, what: string): T | null {
  try {
    return make();
  } catch (error) {
    assert.ok(error instanceof SpecError, `${what}: refused with ${(error as Error)?.name}: ${String((error as Error)?.message).slice(0, 300)}`);
    assertProblems(error.problems, what);
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Arbitraries

/** A value nested `depth` deep; fast-check prints it by name (its own printer would overflow the stack too). */
function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < depth; i++) value = i % 2 ? [value] : { a: value };
  Object.defineProperty(value, fc.toStringMethod, { value: () => `nested(${depth})`, enumerable: false });
  return value;
}

/** Values a hostile or careless user (or a JSON/YAML file) can put where a number, text or list belongs. */
const hostile: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(NaN, Infinity, -Infinity, -1, -0, 0, 0.5, 1e308, -1e308, 2 ** 53 + 2, Number.MIN_VALUE, 1e21),
  fc.integer({ min: -1e6, max: 1e9 }),
  fc.double(),
  fc.string({ maxLength: 20 }),
  fc.constantFrom('', ' ', '5', '0x10', '1e3', 'NaN', 'random', 'heun', 'a\nb', 'x'.repeat(100_000), '\u2028', '<script>'),
  fc.constantFrom(null, undefined, true, false, [], {}, [1, 2], ['gmm-classifier'], { name: 'random' }),
  fc.constantFrom(nested(10), nested(20_000)),
  fc.constantFrom(JSON.parse('{"__proto__": {"polluted": 1}}'), JSON.parse('{"constructor": {"prototype": {"polluted": 1}}}')),
  fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty'),
  fc.anything({ maxDepth: 3 }),
);

const whole = (min: number, max: number) => fc.integer({ min, max });
const level = fc.double({ min: 0, max: 1, noNaN: true });

/** Algorithms with parameters in their documented ranges (the budget may still be too small for them). */
const algorithm: fc.Arbitrary<AlgorithmSpec> = fc.oneof(
  fc.record({ name: fc.constant('random' as const), n: fc.option(whole(1, 40), { nil: undefined }), roundSize: fc.option(whole(1, 16), { nil: undefined }) }, { requiredKeys: ['name'] }),
  fc.record(
    { name: fc.constant('zero-order' as const), n: fc.option(whole(1, 8), { nil: undefined }), t: fc.option(fc.double({ min: 0.05, max: 0.95, noNaN: true }), { nil: undefined }), restart: fc.option(fc.boolean(), { nil: undefined }) },
    { requiredKeys: ['name'] },
  ),
  fc.record(
    { name: fc.constant('paths' as const), n: fc.option(whole(1, 4), { nil: undefined }), m: fc.option(whole(1, 4), { nil: undefined }), sigmaStart: fc.option(level, { nil: undefined }), deltaF: fc.option(level, { nil: undefined }), deltaB: fc.option(level, { nil: undefined }), backwardSteps: fc.option(whole(1, 4), { nil: undefined }) },
    { requiredKeys: ['name'] },
  ),
  fc.record(
    { name: fc.constant('fk' as const), k: fc.option(whole(1, 8), { nil: undefined }), lambda: fc.option(fc.double({ min: 0, max: 20, noNaN: true }), { nil: undefined }), potential: fc.option(fc.constantFrom('max', 'difference', 'sum' as const), { nil: undefined }), resampling: fc.option(fc.constantFrom('multinomial', 'adaptive' as const), { nil: undefined }), resampleEvery: fc.option(whole(1, 5), { nil: undefined }) },
    { requiredKeys: ['name'] },
  ),
);

/** Specs as the CLI or a campaign builds them: every field of the right type, values mostly in range. */
const searchSpec: fc.Arbitrary<SearchSpec> = fc.record({
  model: fc.constant('gmm'),
  condition: fc.record({ classLabel: whole(0, MODEL.numClasses - 1), guidanceScale: fc.option(fc.double({ min: 0, max: 8, noNaN: true }), { nil: undefined }) }, { requiredKeys: ['classLabel'] }),
  algorithm,
  verifiers: fc.uniqueArray(fc.constantFrom(...VERIFIERS), { minLength: 1, maxLength: 3 }),
  budgetNfe: whole(1, 1200),
  seed: fc.oneof(whole(0, 1000), fc.constant(MAX_SEED)),
  searchSampler: fc.option(fc.record({ solver: fc.constantFrom('heun', 'euler' as const), steps: whole(1, 12) }, { requiredKeys: [] }), { nil: undefined }),
  finalSampler: fc.option(fc.record({ solver: fc.constantFrom('heun', 'euler' as const), steps: whole(1, 12) }, { requiredKeys: [] }), { nil: undefined }),
}, { requiredKeys: ['model', 'condition', 'algorithm', 'verifiers', 'budgetNfe', 'seed'] });

/** Where in a spec a hostile value goes: a top-level field, a condition field, an algorithm parameter, a sampler field. */
const SPEC_PATHS: string[][] = [
  ['model'], ['condition'], ['algorithm'], ['verifiers'], ['budgetNfe'], ['seed'], ['searchSampler'], ['finalSampler'], ['unknownKey'], ['__proto__'],
  ['condition', 'classLabel'], ['condition', 'prompt'], ['condition', 'negativePrompt'], ['condition', 'guidanceScale'], ['condition', 'constructor'],
  ['algorithm', 'name'], ['algorithm', 'n'], ['algorithm', 't'], ['algorithm', 'restart'], ['algorithm', 'm'], ['algorithm', 'sigmaStart'],
  ['algorithm', 'deltaF'], ['algorithm', 'deltaB'], ['algorithm', 'backwardSteps'], ['algorithm', 'k'], ['algorithm', 'lambda'],
  ['algorithm', 'potential'], ['algorithm', 'resampling'], ['algorithm', 'resampleEvery'], ['algorithm', 'roundSize'], ['algorithm', 'typo'],
  ['searchSampler', 'solver'], ['searchSampler', 'steps'], ['finalSampler', 'steps'], ['verifiers', '0'],
];

/** A copy of `value` with `leaf` set at `at` (intermediate mappings made as needed, as a user could write them). */
function setAt(value: unknown, at: string[], leaf: unknown): unknown {
  if (at.length === 0) return leaf;
  const base = value !== null && typeof value === 'object' ? value : {};
  const copy: Record<string, unknown> = Array.isArray(base) ? ([...base] as unknown as Record<string, unknown>) : { ...(base as Record<string, unknown>) };
  // defineProperty: a "__proto__" key is data here, as JSON.parse makes it, not the prototype.
  Object.defineProperty(copy, at[0], { value: setAt(copy[at[0]], at.slice(1), leaf), enumerable: true, writable: true, configurable: true });
  return copy;
}

const hostileSpec = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(searchSpec, fc.array(fc.tuple(fc.constantFrom(...SPEC_PATHS), hostile), { minLength: 1, maxLength: 3 })).map(([spec, edits]) => edits.reduce<unknown>((s, [at, v]) => setAt(s, at, v), spec)) },
  { weight: 1, arbitrary: hostile },
);

// ---------------------------------------------------------------------------------------------------------
// An independent NFE count, as the paper counts: one per denoiser forward pass; Heun two per step except a
// last step that ends at sigma = 0; Euler and Euler-ancestral one. A candidate that continues a state pays
// only for its own ops; scoring a state above sigma = 0 through its clean x-prediction costs one more pass,
// which a solve that continues from that state reuses.

function opCost(op: Op): number {
  if (!('solve' in op)) return 0;
  const { solver, steps, sigmaTo } = op.solve;
  return solver === 'heun' ? 2 * steps - (sigmaTo === 0 ? 1 : 0) : steps;
}

function wireCost(candidate: WireCandidate, sigmaMax: number): number {
  const ops = candidate.lineage.ops;
  let cost = ops.reduce((sum, op) => sum + opCost(op), 0);
  const last = ops[ops.length - 1];
  const endsAt = last ? ('solve' in last ? last.solve.sigmaTo : last.renoise.sigmaTo) : candidate.base ? null : sigmaMax;
  if (candidate.scoreXpred && endsAt !== null && endsAt > 0) cost += 1;
  if (candidate.base?.xpred && ops[0] && 'solve' in ops[0]) cost -= 1;
  return cost;
}

/** Every NFE the search asked the server for: each candidate of each batch sent (resends of lost bases excluded). */
function nfeSent(log: RoundLog[], sigmaMax: number): number {
  return log.filter((r) => !r.resend).reduce((sum, r) => sum + r.batches.reduce((s, b) => s + b.candidates.reduce((c, w) => c + wireCost(w, sigmaMax), 0), 0), 0);
}

// ---------------------------------------------------------------------------------------------------------

describe('property: search specs', () => {
  it('a spec with every field of the right type is planned within its budget, or refused with one-line problems', () => {
    let taken = 0;
    let refused = 0;
    fc.assert(
      fc.property(searchSpec, (spec) => {
        const run = takenOrRefused(() => createRun(spec, MODEL), 'createRun');
        if (!run) return void refused++;
        taken++;
        const log: RoundLog[] = [];
        const done = drive(run, { log, maxIterations: 5_000 });
        const sent = nfeSent(log, MODEL.sigmaMax);
        assert.ok(sent <= spec.budgetNfe, `${JSON.stringify(spec)}: sent ${sent} NFEs over a budget of ${spec.budgetNfe}`);
        assert.equal(done.result!.nfe.total, sent, 'the search reports the NFEs it sent');
        assert.ok(sent > 0);
      }),
      params,
    );
    process.stderr.write(`properties: search specs: ${taken} taken and driven, ${refused} refused\n`);
    assert.ok(taken >= RUNS / 4, `most generated specs should be valid (${taken} of ${RUNS})`);
  });

  it('a spec with hostile values anywhere is refused with one-line problems, never another exception', () => {
    let refused = 0;
    fc.assert(
      fc.property(hostileSpec, (spec) => {
        if (takenOrRefused(() => createRun(spec as SearchSpec, MODEL), 'createRun') === null) refused++;
        assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched');
      }),
      params,
    );
    assert.ok(refused >= RUNS / 2, `most hostile specs are refused (${refused} of ${RUNS})`);
  });

  it('regressions: values that crashed the planner before it was hardened', () => {
    const base: SearchSpec = { model: 'gmm', condition: { classLabel: 1 }, algorithm: { name: 'random' }, verifiers: ['gmm-classifier'], budgetNfe: 200, seed: 0 };
    const cases: Array<[string, unknown, RegExp]> = [
      ['spec null', null, /^spec: /],
      ['algorithm "constructor" (an Object.prototype name)', setAt(base, ['algorithm', 'name'], 'constructor'), /^algorithm: "constructor" is unknown/],
      ['algorithm "__proto__"', setAt(base, ['algorithm'], JSON.parse('{"name": "__proto__"}')), /^algorithm: "__proto__" is unknown/],
      ['verifiers not a list', setAt(base, ['verifiers'], 'gmm-classifier'), /^verifiers: /],
      ['condition null', setAt(base, ['condition'], null), /^condition: /],
      ['t as text passed the range check', { ...base, algorithm: { name: 'zero-order', t: '0.5' } }, /^algorithm\.t: "0\.5" must be a number/],
      ['a typo in a parameter was ignored', { ...base, algorithm: { name: 'random', N: 4 } }, /^algorithm\.N: not a parameter of random/],
      ['a deeply nested value overflowed the stack while being described', setAt(base, ['algorithm', 'n'], nested(20_000)), /^algorithm\.n: /],
      ['a verifier name with a line break made a two-line problem', setAt(base, ['verifiers'], ['a\nb']), /^verifier: "a\\nb" is not hosted/],
    ];
    for (const [what, spec, pattern] of cases) {
      let error: unknown;
      try {
        createRun(spec as SearchSpec, MODEL);
      } catch (e) {
        error = e;
      }
      assert.ok(error instanceof SpecError, `${what}: refused with ${error}`);
      assertProblems(error.problems, what);
      assert.ok(error.problems.some((p) => pattern.test(p)), `${what}: no problem matches ${pattern}: ${JSON.stringify(error.problems).slice(0, 500)}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

const campaignsDir = mkdtempSync(path.join(os.tmpdir(), 'properties-'));
after(() => rmSync(campaignsDir, { recursive: true, force: true }));

const campaignSpec = fc.record({
  name: fc.stringMatching(/^[\w.-]{1,20}$/),
  dataset: fc.record({ kind: fc.constant('gmm-classes'), classes: fc.uniqueArray(whole(0, MODEL.numClasses - 1), { minLength: 1, maxLength: 4 }) }),
  grid: fc.record({
    algorithms: fc.array(fc.oneof(fc.constantFrom('random', 'zero-order', 'paths', 'fk'), algorithm), { minLength: 1, maxLength: 3 }),
    verifiers: fc.array(fc.oneof(fc.constantFrom(...VERIFIERS), fc.uniqueArray(fc.constantFrom(...VERIFIERS), { minLength: 1, maxLength: 2 })), { minLength: 1, maxLength: 2 }),
    budgets: fc.uniqueArray(whole(1, 2000), { minLength: 1, maxLength: 3 }),
  }),
  seeds: fc.option(fc.uniqueArray(whole(0, 100), { minLength: 1, maxLength: 3 }), { nil: undefined }),
  concurrency: fc.option(whole(1, 500), { nil: undefined }),
}, { requiredKeys: ['name', 'dataset', 'grid'] });

const CAMPAIGN_PATHS: string[][] = [
  ['name'], ['model'], ['dataset'], ['grid'], ['negativePrompt'], ['evaluation'], ['seeds'], ['concurrency'], ['results'], ['unknown'], ['__proto__'],
  ['dataset', 'kind'], ['dataset', 'classes'], ['dataset', 'path'], ['dataset', 'limit'], ['dataset', 'names'], ['dataset', 'constructor'],
  ['grid', 'algorithms'], ['grid', 'verifiers'], ['grid', 'budgets'], ['grid', 'algorithms', '0'], ['grid', 'algorithms', '0', 'n'], ['grid', 'algorithms', '0', 'name'],
  ['grid', 'verifiers', '0'], ['grid', 'budgets', '0'], ['evaluation', '0'], ['seeds', '0'],
  ['results', 'store'], ['results', 'path'], ['results', 'url'], ['results', 'folder'],
];

const hostileCampaign = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(campaignSpec, fc.array(fc.tuple(fc.constantFrom(...CAMPAIGN_PATHS), hostile), { minLength: 1, maxLength: 3 })).map(([spec, edits]) => edits.reduce<unknown>((s, [at, v]) => setAt(s, at, v), spec)) },
  { weight: 1, arbitrary: hostile },
);

describe('property: campaign specs', () => {
  it('a well-typed campaign is taken, every one of its searches planned within its budget, or refused with one-line problems', () => {
    let taken = 0;
    fc.assert(
      fc.property(campaignSpec, (spec) => {
        const input = takenOrRefused(() => resolveCampaign(spec, MODEL, campaignsDir), 'resolveCampaign');
        if (!input) return;
        taken++;
        assert.equal(campaignSize(input), (spec.seeds ?? [0]).length * spec.dataset.classes.length * spec.grid.algorithms.length * spec.grid.verifiers.length * spec.grid.budgets.length);
        assert.ok(path.resolve(input.folder).startsWith(campaignsDir + path.sep), `the campaign's folder ${input.folder} is inside ${campaignsDir}`);
        // Every cell of the grid, on the first item: taken by the planner, and within its budget.
        for (const algorithm of input.algorithms) {
          for (const verifiers of input.verifierSets) {
            for (const budgetNfe of input.budgets) {
              const spec: SearchSpec = { model: 'gmm', condition: input.items[0].condition, algorithm, verifiers, budgetNfe, seed: input.seeds[0] };
              const log: RoundLog[] = [];
              drive(createRun(spec, MODEL), { log, maxIterations: 5_000 });
              assert.ok(nfeSent(log, MODEL.sigmaMax) <= budgetNfe);
            }
          }
        }
      }),
      { ...params, numRuns: Math.max(1, Math.ceil(RUNS / 3)) },
    );
    process.stderr.write(`properties: campaign specs: ${taken} of ${Math.ceil(RUNS / 3)} taken\n`);
  });

  it('a campaign with hostile values anywhere is refused with one-line problems, never another exception', () => {
    fc.assert(
      fc.property(hostileCampaign, (spec) => {
        takenOrRefused(() => resolveCampaign(spec, MODEL, campaignsDir), 'resolveCampaign');
        assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched');
      }),
      params,
    );
  });

  it('YAML text, well-formed or not, is read and resolved or refused with one-line problems', () => {
    const file = path.join(campaignsDir, 'spec.yaml');
    const yamlText = fc.oneof(
      hostileCampaign.map((spec) => {
        try {
          return YAML.stringify(spec, { aliasDuplicateObjects: false }) ?? '';
        } catch {
          return 'name: [';
        }
      }),
      fc.string({ maxLength: 200 }),
      fc.constantFrom('', '---', '- a\n- b', 'name: x\n  bad indent', '{', '"\\u', '&a [*a]', '!!js/function "f(){}"', '__proto__: {polluted: 1}\nname: x', 'a: &x 1\nb: *y'),
    );
    fc.assert(
      fc.property(yamlText, (text) => {
        writeFileSync(file, text);
        const { spec, problems } = readCampaignSpec(file);
        if (problems.length > 0) return assertProblems(problems, 'readCampaignSpec');
        takenOrRefused(() => resolveCampaign(spec, MODEL, campaignsDir), 'resolveCampaign');
        assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched');
      }),
      params,
    );
  });

  it('regressions: values that crashed campaign resolution before it was hardened', () => {
    const base = { name: 'c', dataset: { kind: 'gmm-classes', classes: [1] }, grid: { algorithms: ['random'], verifiers: ['gmm-classifier'], budgets: [100] } };
    const cases: Array<[string, unknown, RegExp]> = [
      ['results.folder a number', setAt(base, ['results', 'folder'], 5), /^results\.folder: /],
      ['results.path a list', setAt(base, ['results', 'path'], ['a']), /^results\.path: /],
      ['results.folder with a NUL byte', setAt(base, ['results', 'folder'], 'a\0b'), /^results\.folder: /],
      ['an algorithm parameter nested 20,000 deep', setAt(base, ['grid', 'algorithms', '0'], { name: 'random', n: nested(20_000) }), /^grid\.algorithms\[0\]/],
      ['dataset.kind nested 20,000 deep', setAt(base, ['dataset', 'kind'], nested(20_000)), /^dataset\.kind: a list of 1 is not one of gmm-classes/],
      ['an algorithm parameter of the wrong type', setAt(base, ['grid', 'algorithms', '0'], { name: 'zero-order', t: '0.5' }), /^grid\.algorithms\[0\]\.t: "0\.5" must be a number/],
    ];
    for (const [what, spec, pattern] of cases) {
      let error: unknown;
      try {
        resolveCampaign(spec, MODEL, campaignsDir);
      } catch (e) {
        error = e;
      }
      assert.ok(error instanceof SpecError, `${what}: refused with ${error}`);
      assertProblems(error.problems, what);
      assert.ok(error.problems.some((p) => pattern.test(p)), `${what}: no problem matches ${pattern}: ${JSON.stringify(error.problems).slice(0, 500)}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------

const cliText = fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('', '-', '--', '-1', '1e3', '0x10', ' 5', '5 ', '1.5', 'Infinity', 'NaN', '9'.repeat(400), '--help', '-h', '=', '--budget=', 'x'.repeat(10_000), '\0', '__proto__', 'constructor'));

describe('property: command-line arguments', () => {
  it('the command line parses into flags of the declared types, or is refused in one line', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(cliText, fc.constantFrom('--model', '--verifier', '--json', '--json=1', '-x', '--no-such', '--log-level')), { maxLength: 8 }), async (argv) => {
        // --help among the words prints the help: not this property's business.
        const stdout = process.stdout.write;
        process.stdout.write = (() => true) as typeof process.stdout.write;
        let parsed;
        try {
          parsed = await parseArguments(['server', ...argv]);
        } catch (error) {
          assert.ok(error instanceof CommandLineError, `parseArguments: ${error}`);
          assert.ok(error.helpShown || !/[\r\n\u2028\u2029]/.test(error.oneLine()), error.message);
          return;
        } finally {
          process.stdout.write = stdout;
        }
        const v = parsed.values;
        assert.ok(v.model === undefined || typeof v.model === 'string');
        assert.ok(v.json === undefined || v.json === true);
        assert.ok(v.verifier === undefined || (Array.isArray(v.verifier) && v.verifier.every((x) => typeof x === 'string')));
        assert.deepEqual(Object.keys(v).filter((k) => !['model', 'verifier', 'json', 'log-level'].includes(k)), []);
      }),
      params,
    );
  });

  it('wholeNumber, finiteNumber and oneOf give a value that keeps their promise or a one-line UsageError naming the flag', () => {
    const refusal = (make: () => unknown): unknown => {
      try {
        return make();
      } catch (error) {
        assert.ok(error instanceof UsageError, String(error));
        assert.ok(error.message.startsWith('--flag: ') && !/[\r\n\u2028\u2029]/.test(error.message) && error.message.length <= MAX_PROBLEM_CHARS, JSON.stringify(error.message).slice(0, 300));
        return UsageError;
      }
    };
    fc.assert(
      fc.property(cliText, whole(0, 5), (text, min) => {
        const n = refusal(() => wholeNumber('flag', text, { min }));
        if (n !== UsageError) assert.ok(Number.isSafeInteger(n) && (n as number) >= min && String(n) === text.replace(/^0+(?=\d)/, ''), `wholeNumber(${JSON.stringify(text)}) = ${n}`);
        const x = refusal(() => finiteNumber('flag', text));
        if (x !== UsageError) assert.ok(Number.isFinite(x), `finiteNumber(${JSON.stringify(text)}) = ${x}`);
        const name = refusal(() => oneOf('flag', text, ['euler', 'heun'] as const));
        if (name !== UsageError) assert.ok(name === 'euler' || name === 'heun');
      }),
      params,
    );
    assert.equal(wholeNumber('flag', undefined), undefined);
    assert.equal(finiteNumber('flag', '0x10'), 16, 'Number() reads hexadecimal; finite, so taken');
  });

  /** `main` with its stderr caught: the exit code and what it wrote. */
  async function runMain(argv: string[]): Promise<{ code: unknown; stderr: string; stdout: string }> {
    const write = { err: process.stderr.write, out: process.stdout.write };
    let stderr = '';
    let stdout = '';
    process.stderr.write = ((chunk: string) => ((stderr += chunk), true)) as typeof process.stderr.write;
    process.stdout.write = ((chunk: string) => ((stdout += chunk), true)) as typeof process.stdout.write;
    try {
      return { code: await main(argv), stderr, stdout };
    } finally {
      process.stderr.write = write.err;
      process.stdout.write = write.out;
    }
  }

  // Each refused before any service is asked: a flag's value that cannot be right, or a flag that does not
  // exist. --temporal and --fleet name a port where nothing listens, so nothing could be reached anyway.
  const refusedFlag = fc.oneof(
    fc.tuple(fc.constantFrom('--budget', '--seed', '--class', '--steps', '--final-steps', '--n'), fc.constantFrom('', '-1', '1.5', 'x', '1e3', ' 5', '99999999999999999999', '0x10', 'NaN')).filter(([flag, v]) => !(flag === '--seed' && v === '-1') || true),
    fc.tuple(fc.constantFrom('--algorithm', '--solver', '--potential', '--preset'), fc.oneof(fc.constantFrom('constructor', '__proto__', 'toString', 'RANDOM', ''), fc.string({ maxLength: 10 }).filter((s) => !['random', 'zero-order', 'paths', 'fk', 'euler', 'heun', 'max', 'difference', 'sum'].includes(s) && !s.startsWith('-')))),
    fc.tuple(fc.constantFrom('--t', '--lambda', '--guidance'), fc.constantFrom('', 'Infinity', '-Infinity', 'NaN', 'x', '1/2')),
    fc.constantFrom<[string, string]>(['--no-such-flag', 'x'], ['-z', 'x'], ['--budget', '--local']),
  );
  const harmless = fc.array(fc.constantFrom(['--local'], ['--json'], ['--verifier', 'gmm-classifier'], ['--class', '3'], ['--budget', '200']), { maxLength: 3 }).map((l) => l.flat());
  const OFFLINE = ['--temporal', '127.0.0.1:1'];

  it('main refuses bad arguments with exit code 2 and one line per problem, before contacting any service', async () => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('search', 'campaign', 'worker', 'progress', 'export', 'report', 'dashboard', 'server'), harmless, refusedFlag, async (command, before, [flag, value]) => {
        runs++;
        // A bad flag of search only is still unknown to the other commands, so refused there too.
        const argv = [command, ...(command === 'search' ? before : []), ...OFFLINE, flag, value];
        const started = Date.now();
        const { code, stderr } = await runMain(argv);
        assert.equal(code, 2, `${JSON.stringify(argv)}: exit ${code}, stderr ${stderr}`);
        const lines = stderr.trimEnd().split('\n');
        assert.ok(lines.length >= 1 && lines.every((l) => l.startsWith(`noisesearch ${command}: `)), `${JSON.stringify(argv)}: ${stderr}`);
        assert.ok(!/\n\s+at /.test(stderr), 'no stack trace');
        assert.ok(Date.now() - started < 5_000, 'refused at once: no connection was tried');
      }),
      { ...params, numRuns: Math.max(1, Math.ceil(RUNS / 2)) },
    );
    process.stderr.write(`properties: main: ${runs} refused command lines\n`);
  });

  it('main refuses command names from Object.prototype as unknown commands', async () => {
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      const { code, stderr } = await runMain([name, ...OFFLINE]);
      assert.equal(code, 2, `${name}: exit ${String(code)}`);
      assert.match(stderr, new RegExp(`^noisesearch: unknown command '${name}'; see "noisesearch --help"\n$`));
    }
    const { code, stderr } = await runMain(['campaign', 'constructor', 'x', ...OFFLINE]);
    assert.equal(code, 2, `campaign constructor: exit ${String(code)}`);
    assert.match(stderr, /^noisesearch campaign: campaign: "constructor x" is not an action with its argument/);
  });
});
