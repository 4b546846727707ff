import { Client, Connection } from '@temporalio/client';
import { serviceStatus, stopEmbedded, ensureEmbedded } from '../embedded/services';
import { commandLogFile, stateDir } from '../embedded/paths';
import { Fleet, parseFleet } from '../fleet/client';
import { FleetError } from '../fleet/errors';
import { FLEET_TLS_FLAGS, fleetTlsFromFlags } from '../fleet/tls';
import { METRICS_FLAGS, startCommandMetrics } from '../metrics/command';
import { MetricsAddressError } from '../metrics/server';
import { SpecError } from '../search/spec';
import { connectTemporalWorker, TEMPORAL_CONNECTION_FLAGS, temporalSecurityFromFlags, TemporalOptionsError } from '../temporal/connection';
import { DEFAULT_NAMESPACE, TASK_QUEUE } from '../temporal/constants';
import { describeStuck, findStuckWorkflows, workflowOfRun } from '../temporal/stuck';
import { createSearchWorker, installQuietRuntime } from '../temporal/worker';
import { oneOf, UsageError } from './args';
import { logHint } from './log';
import { CAMPAIGN_ACTIONS, CAMPAIGN_FLAGS, CAMPAIGN_HELP, campaignCommand, EXPORT_FLAGS, exportCommand, REPORT_FLAGS, reportCommand } from './campaign';
import { completionScript, SHELLS, type Shell } from './completion';
import { CONTROL_FLAGS, controlCommand } from './control';
import { DASHBOARD_FLAGS, DASHBOARD_HELP, dashboardCommand } from '../dashboard/command';
import { DEMO_HELP, demoCommand } from './demo';
import { EXIT_BAD_INPUT, EXIT_DONE, EXIT_UNREACHABLE, EXIT_WORK_FAILED, ServiceUnreachableError } from './errors';
import { Outage, parseWait, temporalAnswers } from './outage';
import { DOCTOR_DESCRIPTION, DOCTOR_FLAGS, DOCTOR_HELP, doctorCommand } from './doctor';
import { grouped, JSON_FLAG, LOG_LEVELS, WAIT_FLAG, type CommandSpec, type Flag, type FlagValues } from './flags';
import { buildProgram, CommandLineError, parseCommandLine, type ParsedCommand, type ProgramTexts } from './program';
import { SEARCH_FLAGS, searchCommand } from './search';

const PROGRAM_TEXTS: ProgramTexts = {
  description: 'Inference-time search over diffusion noises, durable on Temporal.',
  helpAfter: `
Run "noisesearch <command> --help" for a command's flags; docs/cli.md for completion and more.
Exit status: 0 done, 1 the work failed, 2 bad input (nothing started), 3 a service unreachable within --wait,
130 interrupted (Ctrl-C; started work goes on).`,
};

const WORKER_USAGE = 'noisesearch worker [--temporal host:port] [--namespace NS] [--task-queue Q] [--metrics HOST:PORT] [--temporal-metrics HOST:PORT] [--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--temporal-tls-* | --temporal-api-key KEY] --fleet host:port,...|FILE';
const WORKER_FLAGS: readonly Flag[] = [
  { name: 'fleet', value: 'LIST|FILE', file: true, description: 'model servers: comma-separated host:port or dns:///name:port (every address the name resolves to, followed as it changes: a Kubernetes headless Service), or a file (JSON {"endpoints": [...]} or one a line); required' },
  { name: 'temporal', value: 'ADDR', description: 'Temporal frontend (default $TEMPORAL_ADDRESS, else 127.0.0.1:7233)' },
  { name: 'namespace', value: 'NS', description: `Temporal namespace (default "${DEFAULT_NAMESPACE}")` },
  { name: 'task-queue', value: 'Q', description: `task queue (default "${TASK_QUEUE}")` },
  WAIT_FLAG,
  ...FLEET_TLS_FLAGS,
  ...TEMPORAL_CONNECTION_FLAGS,
  ...METRICS_FLAGS,
];

const SERVER_USAGE = 'noisesearch server start [--model NAME=DIR [--verifier NAME=DIR]... | --models FILE --model NAME | --triton HOST:PORT --model NAME@triton:M [--verifier NAME@triton:M]...] [--device D] | stop | status';
const SERVER_FLAGS: readonly Flag[] = grouped('start:', [
  { name: 'model', value: 'NAME=DIR', description: 'serve a PyTorch model from a local folder (docs/real-models.md); NAME alone with --models; NAME@triton:M with --triton; gmm: the embedded one' },
  { name: 'verifier', value: 'NAME=DIR', repeatable: true, description: 'a verifier to host with it (repeatable); NAME@triton:M with --triton' },
  { name: 'models', value: 'FILE', file: true, description: 'a file naming the models and verifiers (docs/real-models.md)' },
  { name: 'triton', value: 'HOST:PORT', description: "a Triton server's gRPC endpoint whose networks to serve (docs/triton.md)" },
  { name: 'device', value: 'D', description: 'torch device (e.g. cuda, cuda:1, cpu)' },
  { name: 'resolution', value: 'PX', description: "image size in pixels (default: the model's own)" },
]).concat([JSON_FLAG]);
const SERVER_HELP = `
Actions:
  start    start (or reuse) the Temporal dev server (persisted to a file) and the model server: the embedded
           gmm, or a PyTorch model from a local folder with its verifiers (docs/real-models.md), e.g.
             noisesearch server start --model flux=/weights/FLUX.1-dev --verifier clip-score=/weights/clip
           (the PyTorch extra installs with: .venv/bin/pip install -e 'servers[torch]'), or the networks of a
           Triton server (docs/triton.md), e.g.
             noisesearch server start --triton 127.0.0.1:8001 --model gmm@triton:gmm_denoiser \\
               --verifier gmm-classifier@triton:gmm_classifier
  stop     stop them
  status   say whether each is running and ready (exit 3 when one is not)`;

async function workerCommand(values: FlagValues): Promise<number> {
  if (!values.fleet) throw new UsageError(`--fleet is required: the model servers this worker sends batches to; usage: ${WORKER_USAGE}`);
  const security = temporalSecurityFromFlags(values);
  const fleet = new Fleet(parseFleet(values.fleet as string), { tls: fleetTlsFromFlags(values) });
  const address = (values.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233';
  const waitMs = parseWait(values.wait as string | undefined);
  const metrics = await startCommandMetrics(values);
  // The terminal gets the startup line and one line per stuck workflow; everything else goes to the log file.
  let client: Client | undefined;
  installQuietRuntime('INFO', {
    onStuckWorkflow: (workflowId, firstError) =>
      process.stderr.write(`workflow ${workflowId}: its workflow tasks keep failing: ${firstError} (retried by Temporal; details in ${commandLogFile()})\n`),
    workflowOfRun: async (runId) => (client ? workflowOfRun(client, runId) : undefined),
  });
  // A worker started before Temporal (a deploy's start order) waits for it, up to --wait; once polling, the
  // SDK core retries its polls through outages by itself.
  const outage = new Outage({ what: 'Temporal', address, hint: 'is its frontend running?', waitMs, reattach: 'no worker was started', probe: () => temporalAnswers(address, security) });
  const connection = await outage.connecting(() => connectTemporalWorker(address, security));
  client = new Client({ connection, namespace: (values.namespace as string | undefined) ?? DEFAULT_NAMESPACE });
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

async function serverCommand(values: FlagValues, positionals: string[]): Promise<number> {
  const [action, ...extra] = positionals;
  if (!['start', 'stop', 'status'].includes(action) || extra.length > 0) {
    throw new UsageError(`server: "${positionals.join(' ')}" is not an action; usage: ${SERVER_USAGE}`);
  }
  if (action === 'start') {
    const embedded = await ensureEmbedded({ temporal: true, modelArgs: modelServerArgs(values as Parameters<typeof modelServerArgs>[0]), log: (line) => process.stderr.write(`${line}\n`) });
    if (values.json) process.stdout.write(`${JSON.stringify({ temporal: embedded.temporalAddress, uiUrl: embedded.uiUrl, fleet: embedded.fleet, state: stateDir() })}\n`);
    else process.stdout.write(`Temporal ${embedded.temporalAddress} (UI ${embedded.uiUrl})\nmodel server ${embedded.fleet.join(', ')}\nstate ${stateDir()}\n`);
  } else if (action === 'stop') {
    const stopped = await stopEmbedded();
    // What was stopped is a message: a script that wants it asks for --json.
    if (values.json) process.stdout.write(`${JSON.stringify({ stopped })}\n`);
    else process.stderr.write(stopped.length > 0 ? `stopped ${stopped.join(', ')}\n` : 'nothing was running\n');
  } else {
    const statuses = await serviceStatus();
    const stateOf = (s: (typeof statuses)[number]) => (s.ready ? 'ready' : s.alive ? 'running, not ready' : 'not running');
    if (values.json) process.stdout.write(`${JSON.stringify({ services: statuses.map((s) => ({ name: s.name, state: stateOf(s), address: s.address, pid: s.pid, uiUrl: s.uiUrl ?? null })) })}\n`);
    else if (statuses.length === 0) process.stdout.write('not running\n');
    for (const s of values.json ? [] : statuses) {
      const state = stateOf(s);
      process.stdout.write(`${s.name.padEnd(12)} ${state.padEnd(20)} ${s.address}  pid ${s.pid}${s.uiUrl ? `  UI ${s.uiUrl}` : ''}\n`);
    }
    const temporal = statuses.find((s) => s.name === 'temporal' && s.ready);
    if (temporal) await reportStuckWorkflows(temporal.address);
    return statuses.every((s) => s.ready) && statuses.length > 0 ? 0 : 3;
  }
  return 0;
}

/** `server status`'s lines on the namespace's stuck workflows (docs/cli.md, "Logs and stuck workflows"). */
async function reportStuckWorkflows(address: string): Promise<void> {
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address, connectTimeout: 5_000 });
    const { stuck, scannedCap } = await findStuckWorkflows(new Client({ connection, namespace: DEFAULT_NAMESPACE }));
    for (const workflow of stuck) process.stdout.write(`stuck: ${describeStuck(workflow)}\n`);
    if (scannedCap !== undefined) process.stdout.write(`(stuck workflows looked for among the first ${scannedCap} running ones only)\n`);
  } catch (error) {
    // The services' states above are the answer; this is a note on it.
    process.stderr.write(`noisesearch server: could not look for stuck workflows: ${failureLine(error)}\n`);
  } finally {
    await connection?.close();
  }
}

const ID = { name: 'ID', description: 'the workflow ID, as search prints it' };
const CAMPAIGN_ID = { name: 'ID', description: 'the campaign ID, as "campaign run" prints it' };
const CONTROL_HELP = '\nControls a search that is running; its ID is its workflow ID, as search prints it.';

const COMMANDS: readonly CommandSpec[] = [
  { name: 'search', summary: 'run one search and print its result', flags: SEARCH_FLAGS, run: searchCommand },
  {
    name: 'worker',
    summary: 'run a worker for a Temporal cluster and a fleet of model servers',
    description: 'Runs a worker (search workflows and the activities that call model servers) until SIGINT or SIGTERM.',
    flags: WORKER_FLAGS,
    run: workerCommand,
  },
  {
    name: 'server',
    summary: 'start | stop | status of the embedded Temporal dev server and model server',
    description: 'Manages the embedded services, recorded in $NOISESEARCH_HOME (default .noisesearch/).',
    arguments: [{ name: 'action', description: 'start | stop | status', choices: ['start', 'stop', 'status'] }],
    flags: SERVER_FLAGS,
    helpAfter: SERVER_HELP,
    run: serverCommand,
  },
  { name: 'demo', summary: 'random searches at a few budgets on a few classes, as a table', description: DEMO_HELP, flags: [JSON_FLAG], run: demoCommand },
  {
    name: 'progress',
    summary: "a running search's progress (NFEs spent, budget, best so far, round, whether it waits for model servers)",
    arguments: [ID],
    flags: CONTROL_FLAGS,
    helpAfter: CONTROL_HELP,
    run: controlCommand('progress'),
  },
  { name: 'stop', summary: 'end a running search after the round in flight, with the best so far', arguments: [ID], flags: CONTROL_FLAGS, helpAfter: CONTROL_HELP, run: controlCommand('stop') },
  {
    name: 'budget',
    summary: "raise or lower a running search's budget; refused below what is spent or committed",
    arguments: [ID, { name: 'NFES', description: 'the new budget, in denoiser evaluations' }],
    flags: CONTROL_FLAGS,
    helpAfter: CONTROL_HELP,
    run: controlCommand('budget'),
  },
  {
    name: 'campaign',
    summary: 'run | status | retry | cancel a benchmark campaign (dataset x algorithms x verifiers x budgets)',
    description: 'Benchmark campaigns: a dataset of conditions x a grid of algorithms, search verifiers and budgets.',
    arguments: [
      { name: 'action', description: CAMPAIGN_ACTIONS.join(' | '), choices: CAMPAIGN_ACTIONS },
      { name: 'SPEC|ID', description: 'run: the spec file (YAML or JSON); the others: the campaign ID', file: true },
    ],
    flags: CAMPAIGN_FLAGS,
    helpAfter: CAMPAIGN_HELP,
    run: campaignCommand,
  },
  { name: 'export', summary: "a campaign's results as CSV or JSONL", arguments: [CAMPAIGN_ID], flags: EXPORT_FLAGS, run: exportCommand },
  { name: 'report', summary: "a campaign's self-contained HTML report", arguments: [CAMPAIGN_ID], flags: REPORT_FLAGS, run: reportCommand },
  { name: 'dashboard', summary: 'a live web page of searches, campaigns and the fleet, for operators', description: DASHBOARD_HELP, flags: DASHBOARD_FLAGS, run: dashboardCommand },
  { name: 'doctor', summary: 'check Node, Python, the Temporal CLI, Temporal, the fleet and disk, and say what to do', description: DOCTOR_DESCRIPTION, flags: DOCTOR_FLAGS, helpAfter: DOCTOR_HELP, run: doctorCommand },
  {
    name: 'completion',
    summary: 'print a shell completion script (bash or zsh); docs/cli.md says how to install it',
    arguments: [{ name: 'shell', description: SHELLS.join(' | '), choices: SHELLS }],
    flags: [],
    helpAfter: '\nbash: noisesearch completion bash > ~/.local/share/bash-completion/completions/noisesearch\nzsh: add source <(noisesearch completion zsh) to ~/.zshrc (docs/cli.md)',
    run: async (_values, [shell]) => {
      if (!(SHELLS as readonly string[]).includes(shell)) throw new UsageError(`"${shell}" is not a shell this completes; use ${SHELLS.join(' or ')}`);
      process.stdout.write(completionScript(shell as Shell, buildProgram(COMMANDS, PROGRAM_TEXTS)));
      return 0;
    },
  },
];

/** The command line's command, flags and arguments, or a CommandLineError; nothing runs. */
export function parseArguments(argv: string[]): Promise<ParsedCommand> {
  return parseCommandLine(COMMANDS, PROGRAM_TEXTS, argv);
}

export async function main(argv: string[]): Promise<number> {
  let parsed: ParsedCommand;
  try {
    // "help NAME" for a NAME that is no command gets the same one line as NAME alone, not the whole help.
    const helpForNothing = argv[0] === 'help' && argv.length === 2 && !COMMANDS.some((command) => command.name === argv[1]);
    parsed = await parseArguments(helpForNothing ? argv.slice(1) : argv);
  } catch (error) {
    if (!(error instanceof CommandLineError)) throw error;
    if (error.helpShown) return EXIT_DONE;
    // No command: the program's help, on stderr, and the status of bad input (nothing was asked for).
    if (error.noCommand) return EXIT_BAD_INPUT;
    process.stderr.write(`noisesearch${error.command ? ` ${error.command}` : ''}: ${error.oneLine()}\n`);
    return EXIT_BAD_INPUT;
  }
  const name = parsed.spec.name;
  try {
    const logLevel = oneOf('log-level', parsed.values['log-level'] as string | undefined, LOG_LEVELS);
    if (logLevel) process.env.NOISESEARCH_LOG_LEVEL = logLevel;
    return await parsed.spec.run(parsed.values, parsed.positionals);
  } catch (error) {
    if (error instanceof UsageError || error instanceof MetricsAddressError || error instanceof TemporalOptionsError) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return EXIT_BAD_INPUT;
    }
    if (error instanceof SpecError) {
      for (const problem of error.problems) process.stderr.write(`noisesearch ${name}: ${problem}\n`);
      return EXIT_BAD_INPUT;
    }
    if (error instanceof ServiceUnreachableError) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return EXIT_UNREACHABLE;
    }
    if (error instanceof FleetError && !error.retryable) {
      process.stderr.write(`noisesearch ${name}: ${error.message}\n`);
      return EXIT_BAD_INPUT;
    }
    process.stderr.write(`noisesearch ${name}: ${failureLine(error)}${logHint()}\n`);
    return EXIT_WORK_FAILED;
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
