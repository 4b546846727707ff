import { WorkflowFailedError } from '@temporalio/client';
import { describeEmbeddedModel, UnknownModelError } from '../embedded/describe';
import { Fleet, parseFleet } from '../fleet/client';
import { FleetError } from '../fleet/errors';
import { runLocalSearch } from '../local';
import { ALGORITHM_NAMES, createRun, type SearchResult } from '../search/run';
import type { SearchSpec } from '../search/spec';
import type { ModelInfo } from '../search/types';
import { configHash, startSearch } from '../temporal/client';
import { finiteNumber, oneOf, parseFlags, UsageError, wholeNumber } from './args';
import { openDeployment } from './deployment';

export const SEARCH_USAGE =
  'noisesearch search [--model gmm] --class N [--algorithm random] [--verifier gmm-classifier] [--budget 2000] [--seed 0] [--n N] [--round-size 32] [--solver heun|euler] [--steps N] [--final-steps N] [--guidance W] [--json] [--local] [--temporal host:port] [--namespace NS] [--fleet host:port,...|FILE]';

export const SEARCH_HELP = `Runs one search and prints its result.

Usage: ${SEARCH_USAGE}

  --model NAME         model to search with (default gmm, the embedded Gaussian mixture)
  --class N            class label to condition on
  --algorithm NAME     ${ALGORITHM_NAMES.join(' | ')} (default random)
  --verifier NAME      verifier that scores candidates (default gmm-classifier)
  --budget NFES        total denoiser evaluations: search plus final generation (default 2000)
  --seed N             seed every noise derives from (default 0)
  --n N                random search: number of noises (default: what the budget pays for)
  --round-size N       candidates per round (progress granularity; never changes the result)
  --solver, --steps    sampler used while searching (default: the model's)
  --final-steps N      steps of the final generation (default: the model's)
  --guidance W         guidance scale (default: the model's)
  --json               print one JSON object on stdout
  --local              run in-process instead of through Temporal
  --temporal ADDR      a Temporal frontend (default $TEMPORAL_ADDRESS, else the embedded dev server)
  --namespace NS       Temporal namespace (default "default")
  --fleet LIST|FILE    model servers (default: the embedded model server)
  --workflow-id ID     workflow ID (default: derived from the spec, so a repeat attaches)
`;

const FLAGS = {
  model: { type: 'string' },
  class: { type: 'string' },
  algorithm: { type: 'string' },
  verifier: { type: 'string' },
  budget: { type: 'string' },
  seed: { type: 'string' },
  n: { type: 'string' },
  'round-size': { type: 'string' },
  solver: { type: 'string' },
  steps: { type: 'string' },
  'final-steps': { type: 'string' },
  guidance: { type: 'string' },
  json: { type: 'boolean' },
  local: { type: 'boolean' },
  temporal: { type: 'string' },
  namespace: { type: 'string' },
  fleet: { type: 'string' },
  'workflow-id': { type: 'string' },
} as const;

function specFromFlags(v: Record<string, string | boolean | undefined>): SearchSpec {
  const str = (name: string) => v[name] as string | undefined;
  const algorithm = oneOf('algorithm', str('algorithm') ?? 'random', ALGORITHM_NAMES) as 'random';
  return {
    model: str('model') ?? 'gmm',
    condition: {
      classLabel: wholeNumber('class', str('class')),
      guidanceScale: finiteNumber('guidance', str('guidance')),
    },
    algorithm: { name: algorithm, n: wholeNumber('n', str('n'), { min: 1 }), roundSize: wholeNumber('round-size', str('round-size'), { min: 1 }) },
    verifiers: (str('verifier') ?? 'gmm-classifier').split(',').map((s) => s.trim()),
    budgetNfe: wholeNumber('budget', str('budget') ?? '2000', { min: 1 })!,
    seed: wholeNumber('seed', str('seed') ?? '0')!,
    searchSampler: { solver: oneOf('solver', str('solver'), ['euler', 'heun'] as const), steps: wholeNumber('steps', str('steps'), { min: 1 }) },
    finalSampler: { solver: oneOf('solver', str('solver'), ['euler', 'heun'] as const), steps: wholeNumber('final-steps', str('final-steps'), { min: 1 }) },
  };
}

/** The model as whoever will run the search describes it; null when only remote workers know. */
export async function describeForValidation(model: string, fleet: string | undefined, remoteWorkers: boolean): Promise<ModelInfo | null> {
  if (fleet) {
    const f = new Fleet(parseFleet(fleet));
    try {
      return await f.describe(model);
    } catch (error) {
      if (error instanceof FleetError && !error.retryable) throw new UsageError(`--model: ${error.message}`);
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

export function formatResult(result: SearchResult & { workflowId: string; driver: string }): string {
  const className = result.condition.classLabel ?? 'none';
  return [
    `${result.workflowId} (${result.driver})`,
    `  model ${result.model} · class ${className} · ${result.algorithm} · verifier ${result.verifiers.join(',')} · seed ${result.seed}`,
    `  best score     ${result.best.score.toFixed(4)} (during search ${result.best.searchScore.toFixed(4)})`,
    `  NFEs           search ${result.nfe.search} + final ${result.nfe.final} = ${result.nfe.total} of ${result.budget.nfe} (executed ${result.nfe.executed})`,
    `  candidates     ${result.candidates} (${result.failedCandidates} failed)`,
    `  verifier time  ${result.verifierSeconds.toFixed(4)} s`,
    `  best noise     ${JSON.stringify(result.best.noise)}`,
  ].join('\n');
}

export async function searchCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, FLAGS, SEARCH_USAGE);
  if (values.help) {
    process.stdout.write(SEARCH_HELP);
    return 0;
  }
  const spec = specFromFlags(values);
  const temporalAddress = (values.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS;
  const local = Boolean(values.local);
  const fleet = values.fleet as string | undefined;
  const remoteWorkers = !local && Boolean(temporalAddress) && !fleet;
  const model = await describeForValidation(spec.model, fleet, remoteWorkers);
  if (model) createRun(spec, model);

  const log = (line: string) => process.stderr.write(`${line}\n`);
  const deployment = await openDeployment({ temporal: !local, temporalAddress, namespace: values.namespace as string | undefined, fleet, log });
  try {
    let output: SearchResult & { workflowId: string; driver: string };
    if (local) {
      const result = await runLocalSearch(spec, deployment.fleet!);
      output = { workflowId: `local-${spec.model}-${spec.algorithm.name}-${configHash(spec)}`, driver: 'local', ...result };
    } else {
      const handle = await startSearch(deployment.client!, spec, { workflowId: values['workflow-id'] as string | undefined });
      if (deployment.uiUrl && !values.json) log(`Temporal UI: ${deployment.uiUrl}/namespaces/default/workflows/${handle.workflowId}`);
      const result = await deployment.run(handle.result());
      output = { workflowId: handle.workflowId, driver: 'temporal', ...result };
    }
    process.stdout.write(values.json ? `${JSON.stringify(output)}\n` : `${formatResult(output)}\n`);
    return 0;
  } catch (error) {
    if (error instanceof WorkflowFailedError) {
      log(`search failed: ${error.cause?.message ?? error.message}`);
      return 1;
    }
    throw error;
  } finally {
    await deployment.close();
  }
}
