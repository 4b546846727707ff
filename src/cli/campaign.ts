// Campaigns from the command line: run (or attach to) one, see its status, retry its failed searches,
// cancel it, export its results and write its report.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { type Client, WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import type { CampaignInput } from '../campaign/plan';
import { loadSampleImages } from '../campaign/samples';
import { describeCampaign, readCampaignSpec, resolveCampaign } from '../campaign/spec';
import { stateDir } from '../embedded/paths';
import { FLEET_TLS_FLAGS, fleetTlsFromFlags, type FleetTls } from '../fleet/tls';
import { TEMPORAL_CONNECTION_FLAGS, temporalSecurityFromFlags, type TemporalSecurity } from '../temporal/connection';
import { writeReport } from '../report/report';
import { SpecError } from '../search/spec';
import { exportSearches, openStore, type ExportFormat } from '../store';
import { shareableStore } from '../store/credentials';
import type { StoreConfig } from '../store/types';
import { CAMPAIGN_INPUT_LIMIT_BYTES, CAMPAIGN_INPUT_WARN_BYTES, DEFAULT_NAMESPACE } from '../temporal/constants';
import { startCampaign } from '../temporal/client';
import { describeWait, type FleetWait } from '../fleet/wait';
import { fleetWait } from '../temporal/waiting';
import { campaignProgressQuery, type CampaignProgress } from '../../workflows/campaign';
import { oneOf, UsageError } from './args';
import { JSON_FLAG, temporalFlags, WAIT_FLAG, type Flag, type FlagValues } from './flags';
import { connectWaiting } from './control';
import { describeStuck, findStuckWorkflows, stuckWorkflow, type StuckWorkflow } from '../temporal/stuck';
import { openDeployment } from './deployment';
import * as metrics from '../metrics';
import { METRICS_FLAGS, metricsFlags, startCommandMetrics } from '../metrics/command';
import { ProgressDisplay } from './progress';
import { describeForValidation } from './search';
import { abortable, FleetPatience, sleep } from './waiting';
import { EXIT_INTERRUPTED } from './errors';
import { Interrupted, interruption, parseWait } from './outage';

const USAGE = 'noisesearch campaign run SPEC | status ID | retry ID | cancel ID  [--temporal host:port] [--namespace NS] [--fleet LIST|FILE]';
/** The actions after "campaign", with what each does (help and completion). */
export const CAMPAIGN_ACTIONS = ['run', 'status', 'retry', 'cancel'] as const;
export const CAMPAIGN_HELP = `
Actions:
  run SPEC     run the campaign in SPEC (YAML or JSON), or attach to it if it runs or ran
  status ID    done, running and failed searches per grid cell
  retry ID     run its failed searches again (finished ones are kept)
  cancel ID    cancel it and its running searches

A spec: see docs/campaigns.md. Its results: noisesearch export ID, noisesearch report ID.`;

const STORE_FLAG: Flag = { name: 'store', value: 'URL|PATH', file: true, description: 'results store, where this machine has no record of the campaign (postgres://... or a SQLite file)' };

export const CAMPAIGN_FLAGS: readonly Flag[] = [
  ...temporalFlags('the embedded dev server', DEFAULT_NAMESPACE),
  { name: 'fleet', value: 'LIST|FILE', file: true, description: 'model servers (default: the embedded model server)' },
  { name: 'no-worker', description: 'run no worker here: workers run elsewhere ("noisesearch worker"); the fleet only validates the spec' },
  STORE_FLAG,
  WAIT_FLAG,
  JSON_FLAG,
  ...FLEET_TLS_FLAGS,
  ...TEMPORAL_CONNECTION_FLAGS,
  ...METRICS_FLAGS,
];

export const EXPORT_FLAGS: readonly Flag[] = [
  { name: 'format', value: 'FORMAT', choices: ['csv', 'jsonl'], description: 'csv | jsonl (default csv)' },
  { name: 'out', value: 'FILE', file: true, description: "where to write it (default: the campaign's folder)" },
  STORE_FLAG,
];

export const REPORT_FLAGS: readonly Flag[] = [
  { name: 'out', value: 'FILE', file: true, description: "where to write it (default: report.html in the campaign's folder)" },
  STORE_FLAG,
  JSON_FLAG,
];

/** What resolveCampaign makes: campaign-<name>-<12 hex digits>, the name of 1 to 64 letters, digits, '.', '_' or '-'. */
const CAMPAIGN_ID = /^campaign-[\w.-]{1,64}-[0-9a-f]{12}$/;

function campaignsDir(): string {
  return path.join(stateDir(), 'campaigns');
}

function recordFile(campaignId: string): string {
  return path.join(campaignsDir(), `${campaignId}.json`);
}

function saveRecord(input: CampaignInput): void {
  mkdirSync(campaignsDir(), { recursive: true });
  writeFileSync(recordFile(input.campaignId), JSON.stringify(input, null, 2));
}

function loadRecord(campaignId: string, storeFlag?: string): { input: CampaignInput | null; store: StoreConfig; folder: string } {
  // The ID names a file under the campaigns folder: one of another shape ("../x") could read outside it.
  if (!CAMPAIGN_ID.test(campaignId)) throw new UsageError(`campaign ID ${JSON.stringify(campaignId).slice(0, 80)}: want the ID "campaign run" printed, campaign-NAME-HASH (e.g. campaign-demo-0123456789ab)`);
  const file = recordFile(campaignId);
  const input = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as CampaignInput) : null;
  if (storeFlag) {
    const store: StoreConfig = /^postgres(ql)?:\/\//.test(storeFlag) ? { kind: 'postgres', url: storeFlag } : { kind: 'sqlite', path: path.resolve(storeFlag) };
    return { input, store, folder: input?.folder ?? process.cwd() };
  }
  if (!input) throw new UsageError(`campaign ${campaignId}: no record on this machine (${file}); give --store URL|PATH, or run "noisesearch campaign run SPEC" here`);
  return { input, store: input.store, folder: input.folder };
}

/**
 * Running searches `status` asks Temporal about: a fleet outage makes every one of them wait, so a few say
 * it as well as all; asking each of 1,000 running searches took 10 s for 100.
 */
const STATUS_WAIT_SAMPLE = 16;

/** Whether any of the first few running searches waits for model servers (asked side by side). */
async function runningWait(client: Client, runningIds: string[], stop: AbortSignal, sample = 3): Promise<FleetWait | null> {
  const waits = await Promise.all(
    runningIds.slice(0, sample).map((workflowId) => abortable(client, stop, () => fleetWait(client.workflow.getHandle(workflowId))).catch(() => null)),
  );
  return waits.find((wait) => wait) ?? null;
}

/**
 * A campaign's progress as gauges under its name, and its ETA at the rate of this run so far (searches
 * skipped because the store had them are not part of that rate).
 */
function progressMetrics(name: string, startedAt: number): (progress: CampaignProgress) => void {
  return (progress) => {
    metrics.campaignSearches.set({ campaign: name, state: 'total' }, progress.total);
    metrics.campaignSearches.set({ campaign: name, state: 'done' }, progress.done);
    metrics.campaignSearches.set({ campaign: name, state: 'failed' }, progress.failed);
    const remaining = progress.total - progress.done - progress.failed;
    const finished = progress.done - progress.skipped + progress.failed;
    const seconds = (Date.now() - startedAt) / 1000;
    if (remaining === 0) metrics.campaignEta.set({ campaign: name }, 0);
    else if (finished > 0) metrics.campaignEta.set({ campaign: name }, (remaining * seconds) / finished);
  };
}

/** How long a progress query may take before the command asks whether Temporal is there at all. */
const QUERY_DEADLINE_MS = 3_000;

/** What the user can do when this command stops waiting on a campaign: it goes on, and this reattaches. */
function campaignReattach(campaignId: string): string {
  return `campaign ${campaignId} goes on in Temporal; "noisesearch campaign run SPEC" with the same spec attaches to it, "noisesearch campaign status ${campaignId}" shows it`;
}

/** Runs (or attaches to) a campaign through Temporal, showing progress until it ends. */
export async function runCampaign(
  input: CampaignInput,
  options: { temporalAddress?: string; namespace?: string; fleet?: string; fleetTls?: FleetTls; temporalSecurity?: TemporalSecurity; noWorker?: boolean; waitMs?: number; signal?: AbortSignal; log: (line: string) => void },
): Promise<{ progress: CampaignProgress | null; failed: string | null }> {
  saveRecord(input);
  const deployment = await openDeployment({ temporal: true, ...options });
  try {
    const url = deployment.workflowUrl(input.campaignId);
    if (url) options.log(`Temporal UI: ${url}`);
    const client = deployment.client!;
    const outage = deployment.outage(campaignReattach(input.campaignId));
    // Ctrl-C (the signal) or --wait given up end the waiting; the campaign goes on in Temporal.
    const ended = new Promise<never>((_, reject) => options.signal?.addEventListener('abort', () => reject(new Interrupted()), { once: true }));
    ended.catch(() => {});
    const handle = await Promise.race([outage.retrying(() => startCampaign(client, input)), outage.failure, ended]);
    const fleetPatience = new FleetPatience({ waitMs: options.waitMs, reattach: campaignReattach(input.campaignId) });
    let fleetGaveUp: (error: Error) => void = () => {};
    const fleetGivenUp = new Promise<never>((_, reject) => (fleetGaveUp = reject));
    fleetGivenUp.catch(() => {});
    metrics.campaigns.inc({ state: 'started' });
    const measure = progressMetrics(input.name, Date.now());
    const display = new ProgressDisplay();
    // One query at a time, each with its own abort signal; the one in flight is aborted when the campaign
    // ends, so that a query waiting on a worker that is gone (a closed workflow's sticky queue) neither
    // delays the exit nor outlives the connection.
    const stopPolling = new AbortController();
    const polling = (async () => {
      for (let tick = 0; !stopPolling.signal.aborted; tick++) {
        // A deadline: while Temporal is away the client retries a query for some 20 s before it fails.
        const progress = await abortable(client, stopPolling.signal, () => client.withDeadline(Date.now() + QUERY_DEADLINE_MS, () => handle.query(campaignProgressQuery))).catch(async (error) => {
          // Temporal away: one status line for the whole command (the result's wait shares it).
          if (!stopPolling.signal.aborted) await outage.checkAfter(error);
          return null;
        });
        if (progress && !stopPolling.signal.aborted) {
          // Every few ticks, ask Temporal whether one of the running searches is retrying a failed call.
          if (tick % 4 === 0) {
            const wait = await runningWait(client, progress.runningIds ?? [], stopPolling.signal);
            display.setWaiting(wait);
            try {
              fleetPatience.check(wait);
            } catch (error) {
              fleetGaveUp(error as Error);
            }
          }
          if (!stopPolling.signal.aborted) {
            display.update(progress);
            measure(progress);
          }
        }
        await sleep(500, stopPolling.signal);
      }
    })();
    const endPolling = async () => {
      stopPolling.abort();
      await polling;
    };
    try {
      // The result is asked again after an outage: the campaign ran on (or waited) in Temporal meanwhile.
      const progress = await deployment.run(Promise.race([outage.retrying(() => deployment.call(() => handle.result())), outage.failure, fleetGivenUp, ended]), outage);
      await endPolling();
      display.finish(progress);
      measure(progress);
      metrics.campaigns.inc({ state: 'completed' });
      return { progress, failed: null };
    } catch (error) {
      await endPolling();
      if (!(error instanceof WorkflowFailedError)) {
        display.leave();
        throw error;
      }
      metrics.campaigns.inc({ state: 'failed' });
      return { progress: null, failed: error.cause?.message ?? error.message };
    }
  } finally {
    await deployment.close();
  }
}

/** Runs (or attaches to) the campaign with the command's flags; 0 when every search finished. */
async function runWithFlags(input: CampaignInput, values: Record<string, unknown>): Promise<number> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const waitMs = parseWait(values.wait as string | undefined);
  const served = await startCommandMetrics(values);
  const interrupt = interruption();
  const outcome = await runCampaign(input, {
    temporalAddress: (values.temporal as string | undefined) ?? process.env.TEMPORAL_ADDRESS,
    namespace: values.namespace as string | undefined,
    fleet: values.fleet as string | undefined,
    fleetTls: fleetTlsFromFlags(values),
    temporalSecurity: temporalSecurityFromFlags(values),
    noWorker: Boolean(values['no-worker']),
    waitMs,
    signal: interrupt.signal,
    log,
  })
    .catch((error) => {
      if (!(error instanceof Interrupted || interrupt.signal.aborted)) throw error;
      log(`interrupted: stopped waiting; ${campaignReattach(input.campaignId)}. It resumes when a worker polls: the rerun runs one, as does "noisesearch worker"`);
      return null;
    })
    .finally(() => {
      interrupt.dispose();
      return served.close();
    });
  if (!outcome) return EXIT_INTERRUPTED;
  if (outcome.failed) {
    log(`campaign ${input.campaignId}: ${outcome.failed}`);
    if (values.json) process.stdout.write(`${JSON.stringify({ campaignId: input.campaignId, status: 'failed', error: outcome.failed })}\n`);
    return 1;
  }
  if (values.json) {
    const { total = 0, done = 0, failed = 0, skipped = 0, nfeSpent = 0 } = outcome.progress ?? {};
    const summary = { campaignId: input.campaignId, status: 'completed', total, done, failed, skipped, nfe: nfeSpent, report: `noisesearch report ${input.campaignId}` };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return 0;
  }
  process.stdout.write(`campaign ${input.campaignId} finished; "noisesearch report ${input.campaignId}" writes its report\n`);
  return 0;
}

async function run(values: Record<string, unknown>, specFile: string): Promise<number> {
  const { spec, problems } = readCampaignSpec(specFile);
  if (problems.length > 0) throw new SpecError(problems);
  const model = await describeForValidation(((spec as { model?: string })?.model) ?? 'gmm', values.fleet as string | undefined, false, fleetTlsFromFlags(values), parseWait(values.wait as string | undefined));
  // A PostgreSQL password stays in this process: the record, the workflow input and the store get the URL without it.
  const resolved = resolveCampaign(spec, model!, campaignsDir());
  const input: CampaignInput = { ...resolved, store: shareableStore(resolved.store) };
  process.stderr.write(`campaign ${input.campaignId}: ${describeCampaign(input)}\n`);
  const inputBytes = Buffer.byteLength(JSON.stringify(input));
  if (inputBytes > CAMPAIGN_INPUT_WARN_BYTES) {
    process.stderr.write(`campaign ${input.campaignId}: warning: its input (the dataset's items) is ${Math.round(inputBytes / 1024)} KiB, carried by every run of its workflow; Temporal refuses over ${CAMPAIGN_INPUT_LIMIT_BYTES / 2 ** 20} MiB\n`);
  }
  return runWithFlags(input, values);
}

async function status(values: Record<string, unknown>, campaignId: string): Promise<number> {
  const { input, store: storeConfig } = loadRecord(campaignId, values.store as string | undefined);
  let live: CampaignProgress | null = null;
  let waiting: FleetWait | null = null;
  const stuck: StuckWorkflow[] = [];
  try {
    const { client, outage } = await connectWaiting(values, 'nothing was changed');
    try {
      const handle = client.workflow.getHandle(campaignId);
      // A closed campaign is answered from the store: a query would need a worker to replay its whole history.
      const description = await Promise.race([outage.retrying(() => handle.describe()), outage.failure]);
      if (description.status.name === 'RUNNING') {
        // A stuck campaign cannot answer a query (its worker fails every task): it is reported, not asked.
        const stuckCampaign = await stuckWorkflow(client, campaignId, description);
        if (stuckCampaign) stuck.push(stuckCampaign);
        else {
          live = await Promise.race([outage.retrying(() => handle.query(campaignProgressQuery)), outage.failure]).catch(async (error: unknown) => {
            // The query met a task failing for the second time since the describe: that is the answer.
            const nowStuck = await stuckWorkflow(client, campaignId).catch(() => null);
            if (!nowStuck) throw error;
            stuck.push(nowStuck);
            return null;
          });
        }
        if (live) {
          waiting = await runningWait(client, live.runningIds ?? [], new AbortController().signal, STATUS_WAIT_SAMPLE);
          stuck.push(...(await findStuckWorkflows(client, `ParentWorkflowId = '${campaignId}'`)).stuck);
        }
      }
    } finally {
      await client.connection.close();
    }
  } catch (error) {
    if (!(error instanceof UsageError || error instanceof WorkflowNotFoundError || (error as Error).name === 'QueryNotRegisteredError')) throw error;
  }
  const store = await openStore(storeConfig);
  try {
    const searches = await store.searches(campaignId);
    const cells = new Map<string, { done: number; failed: number; running: number; total: number }>();
    for (const [cell, counts] of Object.entries(live?.cells ?? {})) cells.set(cell, { ...counts });
    if (!live) {
      for (const s of searches) {
        const counts = cells.get(s.cell) ?? { done: 0, failed: 0, running: 0, total: input ? input.items.length * input.seeds.length : 0 };
        counts[s.status === 'done' ? 'done' : 'failed']++;
        cells.set(s.cell, counts);
      }
    }
    const failures = searches.filter((s) => s.status === 'failed');
    if (values.json) {
      const sorted = [...cells.entries()].sort();
      const totals = { done: 0, running: 0, failed: 0, total: 0 };
      for (const [, c] of sorted) for (const key of Object.keys(totals) as Array<keyof typeof totals>) totals[key] += c[key];
      process.stdout.write(`${JSON.stringify({
        campaignId,
        status: live ? 'running' : stuck.some((workflow) => workflow.workflowId === campaignId) ? 'stuck' : 'not running',
        phase: live?.phase ?? null,
        waiting: waiting && { ...waiting, message: describeWait(waiting) },
        stuck,
        ...totals,
        cells: Object.fromEntries(sorted),
        failures: failures.map((f) => ({ workflowId: f.workflowId, error: f.error })),
      })}\n`);
      return 0;
    }
    const width = Math.max(4, ...[...cells.keys()].map((c) => c.length));
    const stuckItself = stuck.some((workflow) => workflow.workflowId === campaignId);
    process.stdout.write(`campaign ${campaignId}: ${live ? `running (${live.phase})` : stuckItself ? 'running, stuck' : 'not running'}\n`);
    if (waiting) process.stdout.write(`${describeWait(waiting)}\n`);
    for (const workflow of stuck) process.stdout.write(`stuck: ${describeStuck(workflow)} (retried by Temporal; see docs/cli.md, "Logs and stuck workflows")\n`);
    process.stdout.write(`${'cell'.padEnd(width)}  ${'done'.padStart(6)}  ${'running'.padStart(7)}  ${'failed'.padStart(6)}  ${'total'.padStart(6)}\n`);
    for (const [cell, c] of [...cells.entries()].sort()) {
      process.stdout.write(`${cell.padEnd(width)}  ${String(c.done).padStart(6)}  ${String(c.running).padStart(7)}  ${String(c.failed).padStart(6)}  ${String(c.total).padStart(6)}\n`);
    }
    for (const failed of failures.slice(0, 10)) process.stdout.write(`failed: ${failed.workflowId}: ${failed.error}\n`);
    return 0;
  } finally {
    await store.close();
  }
}

async function retry(values: Record<string, unknown>, campaignId: string): Promise<number> {
  const { input } = loadRecord(campaignId);
  return runWithFlags(input!, values);
}

async function cancel(values: Record<string, unknown>, campaignId: string): Promise<number> {
  const { client, outage } = await connectWaiting(values, `campaign ${campaignId} was not cancelled; run this command again`);
  try {
    await Promise.race([outage.retrying(() => client.workflow.getHandle(campaignId).cancel()), outage.failure]);
    process.stdout.write(values.json ? `${JSON.stringify({ campaignId, cancelled: true })}\n` : `cancelled campaign ${campaignId} and its running searches\n`);
    return 0;
  } finally {
    await client.connection.close();
  }
}

export async function campaignCommand(values: FlagValues, positionals: string[]): Promise<number> {
  const [action, target, ...extra] = positionals;
  const actions: Record<string, (v: Record<string, unknown>, t: string) => Promise<number>> = { run, status, retry, cancel };
  if (!Object.hasOwn(actions, action) || !target || extra.length > 0) throw new UsageError(`campaign: "${positionals.join(' ')}" is not an action with its argument; usage: ${USAGE}`);
  // A bad metrics address is refused before the spec is read or the fleet asked.
  metricsFlags(values);
  return actions[action](values, target);
}

export async function exportCommand(values: FlagValues, positionals: string[]): Promise<number> {
  if (positionals.length !== 1) throw new UsageError('export takes one campaign ID; usage: noisesearch export ID --format csv|jsonl [--out FILE]');
  const format = oneOf('format', (values.format as string | undefined) ?? 'csv', ['csv', 'jsonl'] as const) as ExportFormat;
  const [campaignId] = positionals;
  const { store: storeConfig } = loadRecord(campaignId, values.store as string | undefined);
  const store = await openStore(storeConfig);
  let rows: string;
  try {
    rows = exportSearches(await store.searches(campaignId), format, await store.cellMetrics(campaignId));
  } finally {
    await store.close();
  }
  // The rows are the result: on stdout, for a pipe, unless a file is asked for.
  if (values.out === undefined) {
    await writeAll(process.stdout, rows);
    return 0;
  }
  const out = path.resolve(values.out as string);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, rows);
  process.stderr.write(`${out}\n`);
  return 0;
}

/**
 * Writes `text` and resolves once the stream took it: main exits the process as soon as the command returns,
 * which would cut a pipe's last megabytes short. A reader that closed early (`| head`) ends the write quietly.
 */
function writeAll(stream: NodeJS.WriteStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => (error.code === 'EPIPE' ? resolve() : reject(error));
    stream.once('error', onError);
    stream.write(text, (error) => {
      if (error && (error as NodeJS.ErrnoException).code !== 'EPIPE') reject(error);
      else resolve();
    });
  });
}

export async function writeCampaignReport(campaignId: string, storeConfig: StoreConfig, out: string): Promise<string> {
  const store = await openStore(storeConfig);
  try {
    const campaign = await store.getCampaign(campaignId);
    if (!campaign) throw new UsageError(`campaign ${campaignId}: not in the results store`);
    const searches = await store.searches(campaignId);
    // An image model's pictures are files in the campaign's folder, on this machine when it ran the workers.
    const folder = (campaign.spec as { folder?: unknown } | null)?.folder;
    const images = typeof folder === 'string' ? loadSampleImages(folder, searches) : undefined;
    return await writeReport({ campaign, searches, cellMetrics: await store.cellMetrics(campaignId), images }, out);
  } finally {
    await store.close();
  }
}

export async function reportCommand(values: FlagValues, positionals: string[]): Promise<number> {
  if (positionals.length !== 1) throw new UsageError('report takes one campaign ID; usage: noisesearch report ID [--out FILE]');
  const [campaignId] = positionals;
  const { store, folder } = loadRecord(campaignId, values.store as string | undefined);
  const out = path.resolve((values.out as string | undefined) ?? path.join(folder, 'report.html'));
  const written = await writeCampaignReport(campaignId, store, out);
  process.stdout.write(values.json ? `${JSON.stringify({ report: written })}\n` : `${written}\n`);
  return 0;
}
