import { serviceStatus, stopEmbedded, ensureEmbedded } from '../embedded/services';
import { stateDir } from '../embedded/paths';
import { Fleet, parseFleet } from '../fleet/client';
import { FleetError } from '../fleet/errors';
import { FLEET_TLS_FLAGS, FLEET_TLS_HELP, fleetTlsFromFlags } from '../fleet/tls';
import { METRICS_FLAGS, METRICS_HELP, startCommandMetrics } from '../metrics/command';
import { MetricsAddressError } from '../metrics/server';
import { SpecError } from '../search/spec';
import { connectTemporalWorker, TEMPORAL_CONNECTION_FLAGS, TEMPORAL_CONNECTION_HELP, temporalSecurityFromFlags, TemporalOptionsError } from '../temporal/connection';
import { DEFAULT_NAMESPACE, TASK_QUEUE } from '../temporal/constants';
import { createSearchWorker, installQuietRuntime } from '../temporal/worker';
import { parseFlags, UsageError } from './args';
import { campaignCommand, exportCommand, reportCommand } from './campaign';
import { controlCommand } from './control';
import { dashboardCommand } from '../dashboard/command';
import { demoCommand } from './demo';
import { EXIT_UNREACHABLE, ServiceUnreachableError } from './errors';
import { searchCommand } from './search';

const HELP = `noisesearch: inference-time search over diffusion noises, durable on Temporal.

Commands:
  search    run one search and print its result (noisesearch search --help)
  worker    run a worker for a Temporal cluster and a fleet of model servers
  server    start | stop | status of the embedded Temporal dev server and model server
  demo      random searches at a few budgets on a few classes, as a table
  progress  a running search's progress;  stop: end it with the best so far;  budget: change its budget
  campaign  run | status | retry | cancel a benchmark campaign (dataset x algorithms x verifiers x budgets)
  export    a campaign's results as CSV or JSONL
  report    a campaign's self-contained HTML report
  dashboard a live web page of searches, campaigns and the fleet, for operators

Run "noisesearch <command> --help" for a command's flags.
`;

const WORKER_USAGE = 'noisesearch worker [--temporal host:port] [--namespace NS] [--task-queue Q] [--metrics HOST:PORT] [--temporal-metrics HOST:PORT] [--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--temporal-tls-* | --temporal-api-key KEY] --fleet host:port,...|FILE';
const WORKER_HELP = `Runs a worker (search workflows and the activities that call model servers) until SIGINT or SIGTERM.

Usage: ${WORKER_USAGE}

  --temporal ADDR    Temporal frontend (default $TEMPORAL_ADDRESS, else 127.0.0.1:7233)
  --namespace NS     Temporal namespace (default "${DEFAULT_NAMESPACE}")
  --task-queue Q     task queue (default "${TASK_QUEUE}")
  --fleet LIST|FILE  model servers: comma-separated host:port or dns:///name:port (every address the name resolves
                     to, followed as it changes: a Kubernetes headless Service), or a file (JSON {"endpoints": [...]}
                     or one a line)
${FLEET_TLS_HELP}${TEMPORAL_CONNECTION_HELP}${METRICS_HELP}`;

const SERVER_USAGE = 'noisesearch server start [--model NAME=DIR [--verifier NAME=DIR]... | --models FILE --model NAME | --triton HOST:PORT --model NAME@triton:M [--verifier NAME@triton:M]...] [--device D] | stop | status';
const SERVER_HELP = `Manages the embedded services, recorded in ${'$NOISESEARCH_HOME'} (default .noisesearch/).

Usage: ${SERVER_USAGE}

  start    start (or reuse) the Temporal dev server (persisted to a file) and the model server: the embedded
           gmm, or a PyTorch model from a local folder with its verifiers (docs/real-models.md), e.g.
             noisesearch server start --model flux=/weights/FLUX.1-dev --verifier clip-score=/weights/clip
           (the PyTorch extra installs with: .venv/bin/pip install -e 'servers[torch]'), or the networks of a
           Triton server (docs/triton.md), e.g.
             noisesearch server start --triton 127.0.0.1:8001 --model gmm@triton:gmm_denoiser \\
               --verifier gmm-classifier@triton:gmm_classifier
  stop     stop them
  status   say whether each is running and ready
`;

async function workerCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, { temporal: { type: 'string' }, namespace: { type: 'string' }, 'task-queue': { type: 'string' }, fleet: { type: 'string' }, ...FLEET_TLS_FLAGS, ...TEMPORAL_CONNECTION_FLAGS, ...METRICS_FLAGS }, WORKER_USAGE);
  if (values.help) {
    process.stdout.write(WORKER_HELP);
    return 0;
  }
  if (!values.fleet) throw new UsageError(`--fleet is required: the model servers this worker sends batches to; usage: ${WORKER_USAGE}`);
  const security = temporalSecurityFromFlags(values);
  const fleet = new Fleet(parseFleet(values.fleet as string), { tls: fleetTlsFromFlags(values) });
  const address = (values.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
  const metrics = await startCommandMetrics(values);
  installQuietRuntime();
  const connection = await connectTemporalWorker(address, security);
  const worker = await createSearchWorker({
    connection,
    fleet,
    namespace: values.namespace as string | undefined,
    taskQueue: values['task-queue'] as string | undefined,
  });
  const stop = () => worker.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  process.stderr.write(`worker polling ${values['task-queue'] ?? TASK_QUEUE} on ${address} with fleet ${fleet.describeTargets()}\n`);
  try {
    await worker.run();
  } finally {
    fleet.close();
    await connection.close();
    await metrics.close();
  }
  return 0;
}

/** The model server's arguments for `server start`, or undefined for whatever runs (the gmm at first). */
function modelServerArgs(values: { model?: string; models?: string; verifier?: string[]; device?: string; resolution?: string; triton?: string }): string[] | undefined {
  const { model, models, verifier = [], device, resolution, triton } = values;
  if (triton !== undefined && (model === undefined || !model.includes('@triton:'))) {
    throw new UsageError(`server start: --triton goes with --model NAME@triton:TRITON_MODEL, the Triton model that is the denoiser; usage: ${SERVER_USAGE}`);
  }
  if (model === undefined) {
    if (models !== undefined || verifier.length > 0 || device !== undefined || resolution !== undefined) {
      throw new UsageError(`server start: --models, --verifier, --device and --resolution go with --model; usage: ${SERVER_USAGE}`);
    }
    return undefined;
  }
  if (triton === undefined && [model, ...verifier].some((name) => name.includes('@triton:'))) {
    throw new UsageError('server start: --model/--verifier NAME@triton:TRITON_MODEL name Triton models; add --triton HOST:PORT, Triton\'s gRPC endpoint');
  }
  if (model === 'gmm' && (models !== undefined || verifier.length > 0)) throw new UsageError('server start: the embedded gmm hosts its own verifiers; --verifier and --models go with a PyTorch model');
  return [
    '--model', model,
    ...(triton !== undefined ? ['--triton', triton] : []),
    ...(models !== undefined ? ['--models', models] : []),
    ...verifier.flatMap((v) => ['--verifier', v]),
    ...(device !== undefined ? ['--device', device] : []),
    ...(resolution !== undefined ? ['--resolution', resolution] : []),
  ];
}

async function serverCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    argv,
    { model: { type: 'string' }, models: { type: 'string' }, verifier: { type: 'string', multiple: true }, device: { type: 'string' }, resolution: { type: 'string' }, triton: { type: 'string' } },
    SERVER_USAGE,
  );
  if (values.help) {
    process.stdout.write(SERVER_HELP);
    return 0;
  }
  const [action, ...extra] = positionals;
  if (!['start', 'stop', 'status'].includes(action) || extra.length > 0) {
    throw new UsageError(`server: "${positionals.join(' ')}" is not an action; usage: ${SERVER_USAGE}`);
  }
  if (action === 'start') {
    const embedded = await ensureEmbedded({ temporal: true, modelArgs: modelServerArgs(values), log: (line) => process.stderr.write(`${line}\n`) });
    process.stdout.write(`Temporal ${embedded.temporalAddress} (UI ${embedded.uiUrl})\nmodel server ${embedded.fleet.join(', ')}\nstate ${stateDir()}\n`);
  } else if (action === 'stop') {
    const stopped = await stopEmbedded();
    process.stdout.write(stopped.length > 0 ? `stopped ${stopped.join(', ')}\n` : 'nothing was running\n');
  } else {
    const statuses = await serviceStatus();
    if (statuses.length === 0) process.stdout.write('not running\n');
    for (const s of statuses) {
      const state = s.ready ? 'ready' : s.alive ? 'running, not ready' : 'not running';
      process.stdout.write(`${s.name.padEnd(12)} ${state.padEnd(20)} ${s.address}  pid ${s.pid}${s.uiUrl ? `  UI ${s.uiUrl}` : ''}\n`);
    }
    return statuses.every((s) => s.ready) && statuses.length > 0 ? 0 : 3;
  }
  return 0;
}

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  search: searchCommand,
  worker: workerCommand,
  server: serverCommand,
  demo: demoCommand,
  progress: controlCommand('progress'),
  stop: controlCommand('stop'),
  budget: controlCommand('budget'),
  campaign: campaignCommand,
  export: exportCommand,
  report: reportCommand,
  dashboard: dashboardCommand,
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(HELP);
    return name ? 0 : 2;
  }
  // Own commands only: "constructor" or "toString" would otherwise find Object.prototype's.
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) {
    process.stderr.write(`noisesearch: "${name}" is not a command; use one of ${Object.keys(COMMANDS).join(', ')} (noisesearch --help)\n`);
    return 2;
  }
  try {
    return await command(rest);
  } catch (error) {
    if (error instanceof UsageError || error instanceof MetricsAddressError || error instanceof TemporalOptionsError) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return 2;
    }
    if (error instanceof SpecError) {
      for (const problem of error.problems) process.stderr.write(`noisesearch ${name}: ${problem}\n`);
      return 2;
    }
    if (error instanceof ServiceUnreachableError) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return EXIT_UNREACHABLE;
    }
    if (error instanceof FleetError && !error.retryable) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return 2;
    }
    process.stderr.write(`noisesearch ${name}: ${failureLine(error)}\n`);
    return 1;
  }
}

/** One line for a failure a user cannot fix by changing the command: the stack only when asked for. */
export function failureLine(error: unknown): string {
  if (process.env.NOISESEARCH_DEBUG) return String((error as Error)?.stack ?? error);
  const message = String((error as Error)?.message ?? error);
  return message.split('\n')[0];
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
      process.stderr.write(`noisesearch: ${failureLine(error)}\n`);
      process.exit(1);
    },
  );
}
