import { WorkflowFailedError } from '@temporalio/client';
import { describeEmbeddedModel, UnknownModelError } from '../embedded/describe';
import { readyEmbeddedModelServer } from '../embedded/services';
import { Fleet, parseFleet } from '../fleet/client';
import { FleetError } from '../fleet/errors';
import { FLEET_TLS_FLAGS, fleetTlsFromFlags, type FleetTls } from '../fleet/tls';
import { TEMPORAL_CONNECTION_FLAGS, temporalSecurityFromFlags } from '../temporal/connection';
import type { FleetWait } from '../fleet/wait';
import { runLocalSearch } from '../local';
import { reportWait, watchingWaits } from './waiting';
import { FK_DEFAULTS, FK_POTENTIALS, FK_RESAMPLINGS } from '../search/fk';
import { PATHS_DEFAULTS } from '../search/paths';
import { PRESET_NAMES, PRESETS, type Preset } from '../search/presets';
import { ALGORITHM_NAMES, createRun, type SearchResult } from '../search/run';
import type { AlgorithmName, AlgorithmSpec, SearchSpec } from '../search/spec';
import { ZERO_ORDER_DEFAULTS } from '../search/zero-order';
import type { ModelInfo } from '../search/types';
import { configHash, searchWorkflowId, startSearch } from '../temporal/client';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { finiteNumber, oneOf, positiveNumber, UsageError, wholeNumber } from './args';
import { grouped, temporalFlags, WAIT_FLAG, type Flag, type FlagValues } from './flags';
import { openDeployment } from './deployment';
import { EXIT_INTERRUPTED } from './errors';
import { Interrupted, interruption, Outage, parseWait } from './outage';
import * as metrics from '../metrics';
import { METRICS_FLAGS, metricsFlags, startCommandMetrics } from '../metrics/command';

type Values = FlagValues;

interface AlgorithmFlag {
  key: string;
  algorithms: AlgorithmName[];
  parse: (flag: string, value: string) => unknown;
}

const whole = (flag: string, value: string) => wholeNumber(flag, value, { min: 1 });
const ALGORITHM_FLAGS: Record<string, AlgorithmFlag> = {
  n: { key: 'n', algorithms: ['random', 'zero-order', 'paths'], parse: whole },
  'round-size': { key: 'roundSize', algorithms: ['random'], parse: whole },
  t: { key: 't', algorithms: ['zero-order'], parse: finiteNumber },
  m: { key: 'm', algorithms: ['paths'], parse: whole },
  'sigma-start': { key: 'sigmaStart', algorithms: ['paths'], parse: finiteNumber },
  'delta-f': { key: 'deltaF', algorithms: ['paths'], parse: finiteNumber },
  'delta-b': { key: 'deltaB', algorithms: ['paths'], parse: finiteNumber },
  'backward-steps': { key: 'backwardSteps', algorithms: ['paths'], parse: whole },
  k: { key: 'k', algorithms: ['fk'], parse: whole },
  lambda: { key: 'lambda', algorithms: ['fk'], parse: finiteNumber },
  potential: { key: 'potential', algorithms: ['fk'], parse: (flag, value) => oneOf(flag, value, FK_POTENTIALS) },
  resampling: { key: 'resampling', algorithms: ['fk'], parse: (flag, value) => oneOf(flag, value, FK_RESAMPLINGS) },
  'resample-every': { key: 'resampleEvery', algorithms: ['fk'], parse: whole },
};

const FLEET_HELP = 'model servers: comma-separated host:port or dns:///name:port, or a file (JSON {"endpoints": [...]} or one a line)';

export const SEARCH_FLAGS: readonly Flag[] = [
  { name: 'model', value: 'NAME', description: 'model to search with (default gmm, the embedded Gaussian mixture)' },
  { name: 'class', value: 'N', description: 'class label to condition on (a class-conditional model)' },
  { name: 'prompt', value: 'TEXT', description: 'prompt to condition on (a text-to-image model)' },
  { name: 'negative-prompt', value: 'TEXT', description: 'what classifier-free guidance steers away from (with --prompt; default: the empty prompt)' },
  { name: 'algorithm', value: 'NAME', choices: ALGORITHM_NAMES, description: `${ALGORITHM_NAMES.join(' | ')} (default random)` },
  { name: 'verifier', value: 'NAME,...', description: 'verifier, or an ensemble ranked by mean rank (default gmm-classifier)' },
  { name: 'budget', value: 'NFES', description: 'total denoiser evaluations: search plus final generation (default 2000)' },
  { name: 'budget-seconds', value: 'S', description: "also stop before a round predicted to take the fleet seconds (the servers' measured denoising and verifier time, not wall time) past S; the first round always runs" },
  { name: 'seed', value: 'N', description: 'seed every noise derives from (default 0)' },
  { name: 'preset', value: 'NAME', choices: PRESET_NAMES, description: `the paper's settings: ${PRESET_NAMES.join(', ')} (flags override)` },
  { name: 'solver', value: 'NAME', choices: ['euler', 'heun'], description: "sampler: euler | heun (default: the model's)" },
  { name: 'steps', value: 'N', description: "sampler steps while searching (default: the model's)" },
  { name: 'final-steps', value: 'N', description: "steps of the final generation (default: the model's)" },
  { name: 'guidance', value: 'W', description: "guidance scale (default: the model's; 0 samples unconditionally)" },
  ...grouped('random (and --n for zero-order, paths):', [
    { name: 'n', value: 'N', description: `candidates (default: what the budget pays for); zero-order: neighbours (default ${ZERO_ORDER_DEFAULTS.n}); paths: starting paths` },
    { name: 'round-size', value: 'N', description: 'candidates a round (progress granularity only)' },
  ]),
  ...grouped('zero-order:', [
    { name: 't', value: 'COSINE', description: `neighbours' cosine to the pivot, in (0, 1) (default ${ZERO_ORDER_DEFAULTS.t})` },
    { name: 'restart', description: 'restart from a fresh noise when no neighbour improves' },
  ]),
  ...grouped("paths (a LEVEL is a noise level in [0, 1], 1: sigma_max, on the model's schedule):", [
    { name: 'm', value: 'M', description: `paths kept from each round (default ${PATHS_DEFAULTS.m})` },
    { name: 'sigma-start', value: 'LEVEL', description: `where the paths start (default ${PATHS_DEFAULTS.sigmaStart})` },
    { name: 'delta-f', value: 'LEVEL', description: `forward step (default ${PATHS_DEFAULTS.deltaF})` },
    { name: 'delta-b', value: 'LEVEL', description: `backward step (default ${PATHS_DEFAULTS.deltaB})` },
    { name: 'backward-steps', value: 'N', description: `solver steps of each backward step (default ${PATHS_DEFAULTS.backwardSteps})` },
  ]),
  ...grouped('fk:', [
    { name: 'k', value: 'PARTICLES', description: 'particles (default: what the budget pays for)' },
    { name: 'lambda', value: 'L', description: `the potential's scale (default ${FK_DEFAULTS.lambda})` },
    { name: 'potential', value: 'NAME', choices: FK_POTENTIALS, description: `${FK_POTENTIALS.join(' | ')} (default ${FK_DEFAULTS.potential})` },
    { name: 'resampling', value: 'NAME', choices: FK_RESAMPLINGS, description: `${FK_RESAMPLINGS.join(' | ')} (default ${FK_DEFAULTS.resampling})` },
    { name: 'resample-every', value: 'STEPS', description: `steps between resamplings (default ${FK_DEFAULTS.resampleEvery})` },
  ]),
  ...grouped('Output and where it runs:', [
    { name: 'json', description: 'print one JSON object on stdout (per-verifier scores, calls and seconds included)' },
    { name: 'local', description: 'run in-process instead of through Temporal' },
    ...temporalFlags('the embedded dev server', DEFAULT_NAMESPACE),
    { name: 'fleet', value: 'LIST|FILE', file: true, description: `${FLEET_HELP} (default: the embedded model server)` },
    { name: 'workflow-id', value: 'ID', description: 'workflow ID (default: derived from the spec, so a repeat attaches)' },
    WAIT_FLAG,
  ]),
  ...FLEET_TLS_FLAGS,
  ...TEMPORAL_CONNECTION_FLAGS,
  ...METRICS_FLAGS,
];

function algorithmFromFlags(v: Values, preset: Preset | undefined): AlgorithmSpec {
  const name = oneOf('algorithm', (v.algorithm as string | undefined) ?? preset?.algorithm?.name ?? 'random', ALGORITHM_NAMES)!;
  const params: Record<string, unknown> = preset?.algorithm?.name === name ? { ...preset.algorithm } : { name };
  for (const [flag, spec] of Object.entries(ALGORITHM_FLAGS)) {
    const value = v[flag] as string | undefined;
    if (value === undefined) continue;
    if (!spec.algorithms.includes(name)) throw new UsageError(`--${flag} applies to ${spec.algorithms.join(', ')}, not to --algorithm ${name}`);
    params[spec.key] = spec.parse(flag, value);
  }
  if (v.restart) {
    if (name !== 'zero-order') throw new UsageError(`--restart applies to zero-order, not to --algorithm ${name}`);
    params.restart = true;
  }
  return params as unknown as AlgorithmSpec;
}

export function specFromFlags(v: Values): SearchSpec {
  const str = (name: string) => v[name] as string | undefined;
  const presetName = str('preset');
  // Own presets only: "constructor" would otherwise find Object.prototype's.
  const preset = presetName === undefined || !Object.hasOwn(PRESETS, presetName) ? undefined : PRESETS[presetName];
  if (presetName !== undefined && !preset) throw new UsageError(`--preset: "${presetName}" is not one of ${PRESET_NAMES.join(', ')}`);
  const solver = oneOf('solver', str('solver'), ['euler', 'heun'] as const);
  return {
    model: str('model') ?? preset?.model ?? 'gmm',
    condition: defined({
      classLabel: wholeNumber('class', str('class')),
      prompt: str('prompt'),
      negativePrompt: str('negative-prompt'),
      guidanceScale: finiteNumber('guidance', str('guidance')) ?? preset?.guidanceScale,
    }),
    algorithm: algorithmFromFlags(v, preset),
    verifiers: (str('verifier') ?? 'gmm-classifier').split(',').map((s) => s.trim()),
    budgetNfe: wholeNumber('budget', str('budget') ?? '2000', { min: 1 })!,
    ...defined({ budgetSeconds: positiveNumber('budget-seconds', str('budget-seconds'), 'seconds') }),
    seed: wholeNumber('seed', str('seed') ?? '0')!,
    searchSampler: { ...preset?.searchSampler, ...defined({ solver, steps: wholeNumber('steps', str('steps'), { min: 1 }) }) },
    finalSampler: { ...preset?.finalSampler, ...defined({ solver, steps: wholeNumber('final-steps', str('final-steps'), { min: 1 }) }) },
  };
}

function defined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The model as whoever will run the search describes it; null when only remote workers know. */
export async function describeForValidation(model: string, fleet: string | undefined, remoteWorkers: boolean, tls?: FleetTls, waitMs = Number.POSITIVE_INFINITY): Promise<ModelInfo | null> {
  // A running embedded model server is the one the search will use, whatever model it hosts
  // (`server start --model flux=DIR`): ask it rather than describing a model that needs weights.
  const embedded = fleet === undefined && !remoteWorkers ? await readyEmbeddedModelServer() : undefined;
  // TLS is for the fleet the user names; the embedded model server speaks plaintext.
  if (fleet === undefined) tls = undefined;
  fleet ??= embedded;
  if (fleet) {
    const f = new Fleet(parseFleet(fleet), { tls });
    try {
      return await describeWaiting(f, model, waitMs);
    } catch (error) {
      const restart = embedded ? `; the embedded model server hosts another model: noisesearch server start --model ${model === 'gmm' ? 'gmm' : `${model}=DIR`}` : '';
      if (error instanceof FleetError && !error.retryable) throw new UsageError(`--model: ${error.message}${restart}`);
      throw error;
    } finally {
      f.close();
    }
  }
  if (remoteWorkers) return null;
  try {
    return describeEmbeddedModel(model);
  } catch (error) {
    if (error instanceof UnknownModelError) throw new UsageError(error.message);
    throw error;
  }
}

/**
 * The fleet's description of `model`. A fleet of which no server answers is an outage to wait out (up to
 * --wait, with one status line), as a Temporal that is away is: servers started after the command are usual.
 */
async function describeWaiting(fleet: Fleet, model: string, waitMs: number): Promise<ModelInfo> {
  try {
    return await fleet.describe(model);
  } catch (error) {
    if (!(error instanceof FleetError && error.retryable)) throw error;
    const outage = new Outage({
      what: 'the fleet',
      address: fleet.describeTargets(),
      hint: 'start its model servers, or check --fleet',
      waitMs,
      reattach: 'nothing was started',
      probe: () => fleet.describe(model).then(() => true, () => false),
    });
    await outage.waitUntilBack();
    return fleet.describe(model);
  }
}

export function formatResult(result: SearchResult & { workflowId: string; driver: string }): string {
  const { classLabel, prompt, negativePrompt } = result.condition;
  const condition =
    prompt !== undefined
      ? `prompt ${JSON.stringify(prompt)}${negativePrompt !== undefined ? ` (not ${JSON.stringify(negativePrompt)})` : ''}`
      : `class ${classLabel ?? 'none'}`;
  return [
    `${result.workflowId} (${result.driver})`,
    `  model ${result.model} · ${condition} · ${result.algorithm} · verifier ${result.verifiers.join(',')} · seed ${result.seed}`,
    `  best score     ${result.best.score.toFixed(4)} (during search ${result.best.searchScore.toFixed(4)})${result.stopped ? ' (stopped early)' : ''}`,
    ...Object.entries(result.best.scores).map(([verifier, score]) => `    ${verifier.padEnd(16)} ${score.toFixed(4)}`),
    `  NFEs           search ${result.nfe.search} + final ${result.nfe.final} = ${result.nfe.total} of ${result.budget.nfe} (executed ${result.nfe.executed}${result.nfe.failed > 0 ? `; ${result.nfe.failed} on failed candidates` : ''})`,
    `  candidates     ${result.candidates} (${result.failedCandidates} failed)`,
    `  verifier time  ${result.verifierSeconds.toFixed(4)} s (${Object.entries(result.verifierCosts).map(([v, c]) => `${v}: ${c.calls} calls, ${c.seconds.toFixed(4)} s`).join('; ')})`,
    ...(result.seconds
      ? [`  fleet time     ${result.seconds.total.toFixed(4)} s (denoising ${result.seconds.denoise.toFixed(4)} s + verifiers ${result.verifierSeconds.toFixed(4)} s)${result.budget.seconds !== undefined ? ` of ${result.budget.seconds} s` : ''}`]
      : []),
    `  best noise     ${JSON.stringify(result.best.noise)}`,
  ].join('\n');
}

export async function searchCommand(values: FlagValues): Promise<number> {
  const spec = specFromFlags(values);
  const waitMs = parseWait(values.wait as string | undefined);
  metricsFlags(values);
  const fleetTls = fleetTlsFromFlags(values);
  const temporalSecurity = temporalSecurityFromFlags(values);
  const presetModel = values.preset ? PRESETS[values.preset as string]?.model : undefined;
  const temporalAddress = (values.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS;
  const local = Boolean(values.local);
  const fleet = values.fleet as string | undefined;
  const remoteWorkers = !local && Boolean(temporalAddress) && !fleet;
  const model = await describeForValidation(spec.model, fleet, remoteWorkers, fleetTls, waitMs).catch((error) => {
    if (error instanceof UsageError && presetModel === spec.model) {
      throw new UsageError(`--preset ${values.preset} needs model ${spec.model}, which is not hosted here (${error.message})`);
    }
    throw error;
  });
  if (model) createRun(spec, model);

  const log = (line: string) => process.stderr.write(`${line}\n`);
  const served = await startCommandMetrics(values);
  const algorithm = spec.algorithm.name;
  // Ctrl-C stops the waiting, not the search: it goes on in Temporal, and the command says how to reattach.
  const interrupt = local ? null : interruption();
  const workflowId = (values['workflow-id'] as string | undefined) ?? searchWorkflowId(spec);
  const reattach = `the search goes on in Temporal; rerun the same "noisesearch search" command to attach to workflow ${workflowId}, or "noisesearch progress ${workflowId}"`;
  const deployment = await openDeployment({ temporal: !local, temporalAddress, namespace: values.namespace as string | undefined, fleet, fleetTls, temporalSecurity, waitMs, signal: interrupt?.signal, log }).catch((error) => {
    interrupt?.dispose();
    if (error instanceof Interrupted) {
      log('interrupted; nothing was started');
      return null;
    }
    throw error;
  });
  if (!deployment) {
    await served.close();
    return EXIT_INTERRUPTED;
  }
  metrics.searches.inc({ algorithm, state: 'started' });
  try {
    let output: SearchResult & { workflowId: string; driver: string };
    if (local) {
      let waiting: FleetWait | null = null;
      const result = await runLocalSearch(spec, deployment.fleet!, { onWaiting: (wait) => (waiting = reportWait(waiting, wait, log)) });
      output = { workflowId: `local-${spec.model}-${spec.algorithm.name}-${configHash(spec)}`, driver: 'local', ...result };
    } else {
      const outage = deployment.outage(reattach);
      const handle = await Promise.race([outage.retrying(() => startSearch(deployment.client!, spec, { workflowId })), outage.failure, interrupt!.promise]);
      const url = deployment.workflowUrl(handle.workflowId);
      if (url && !values.json) log(`Temporal UI: ${url}`);
      // The result is asked again after an outage: the workflow ran on (or waited) in Temporal meanwhile.
      const work = watchingWaits(deployment.client!, handle, log, outage.retrying(() => deployment.call(() => handle.result())), { waitMs, reattach, outage });
      const result = await deployment.run(Promise.race([work, outage.failure, interrupt!.promise]), outage);
      output = { workflowId: handle.workflowId, driver: 'temporal', ...result };
    }
    metrics.searches.inc({ algorithm, state: 'completed' });
    process.stdout.write(values.json ? `${JSON.stringify(output)}\n` : `${formatResult(output)}\n`);
    return 0;
  } catch (error) {
    if (error instanceof Interrupted || interrupt?.signal.aborted) {
      log(`interrupted: stopped waiting; ${reattach}. It resumes when a worker polls: the rerun runs one, as does "noisesearch worker"`);
      return EXIT_INTERRUPTED;
    }
    const cancelled = error instanceof WorkflowFailedError && error.cause?.name === 'CancelledFailure';
    metrics.searches.inc({ algorithm, state: cancelled ? 'cancelled' : 'failed' });
    if (error instanceof WorkflowFailedError) {
      log(`search failed: ${error.cause?.message ?? error.message}`);
      return 1;
    }
    throw error;
  } finally {
    interrupt?.dispose();
    await deployment.close();
    await served.close();
  }
}
