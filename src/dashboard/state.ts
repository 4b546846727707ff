// What the dashboard shows, gathered on demand: searches and campaigns from Temporal visibility (the
// Noisesearch* search attributes) and their progress queries, and the fleet as its servers describe
// themselves. Curves and rates are built from the progress seen on successive polls, so they cover the
// time the dashboard has been watching; the durable numbers are Temporal's.
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Client, WorkflowExecutionInfo } from '@temporalio/client';
import type { QueryDefinition } from '@temporalio/common';
import { stateDir } from '../embedded/paths';
import { gatherFleetMetrics, type FleetMetrics } from './prometheus';
import { toModelInfo, unary } from '../fleet/client';
import { channelCredentials, diagnoseTls, type FleetTls } from '../fleet/tls';
import { services } from '../fleet/proto';
import { abortable } from '../cli/waiting';
import { SEARCH_ATTRIBUTES } from '../temporal/search-attributes';
import { findStuckWorkflows, type StuckWorkflow } from '../temporal/stuck';
import type { SearchProgress } from '../search/run';
import { campaignProgressQuery, type CampaignProgress } from '../../workflows/campaign';
import { progressQuery } from '../../workflows/search';

/** Executions listed per refresh: the newest first (running ones lead), enough for an operator's screen. */
const LIST_LIMIT = 100;
/** Running workflows asked for their progress per refresh: each query is a round trip to a worker. */
const QUERY_LIMIT = 24;
/** A query to a workflow whose worker is gone waits for one; the page must not. */
const QUERY_TIMEOUT_MS = 2_000;
/** Points kept per curve: bounded memory however long a search runs. */
const CURVE_POINTS = 400;
/** NFE rates are measured over this much recent time. */
const RATE_WINDOW_MS = 10_000;

export interface CurvePoint {
  nfe: number;
  score: number;
}

export interface SearchRow {
  workflowId: string;
  runId: string;
  status: string;
  startTime: string;
  closeTime: string | null;
  parentId: string | null;
  algorithm: string | null;
  model: string | null;
  verifier: string | null;
  nfeSpent: number | null;
  budget: number | null;
  bestScore: number | null;
  round: number | null;
  phase: string | null;
  stopRequested: boolean;
  /** NFEs per second over the last few seconds, while it runs. */
  nfeRate: number | null;
  curve: CurvePoint[];
  temporalUrl: string | null;
}

export interface CampaignRow {
  workflowId: string;
  runId: string;
  status: string;
  startTime: string;
  closeTime: string | null;
  progress: Omit<CampaignProgress, 'cells' | 'runningIds'> | null;
  /** NFEs of its finished searches (the workflow's count) plus what its running searches spent so far. */
  nfeLive: number | null;
  etaSeconds: number | null;
  cells: Record<string, { total: number; done: number; failed: number; running: number }> | null;
  report: string | null;
  temporalUrl: string | null;
}

export interface EndpointRow {
  address: string;
  health: string;
  latencyMs: number | null;
  model: string | null;
  serverId: string | null;
  verifiers: string[];
  maxBatch: number | null;
  maxConcurrency: number | null;
  solvers: string[];
  error: string | null;
}

export interface DashboardState {
  generatedAt: string;
  namespace: string;
  allowActions: boolean;
  temporalUi: string | null;
  searches: SearchRow[];
  campaigns: CampaignRow[];
  fleet: EndpointRow[];
  /** Throughput, queues, latency percentiles and NFE burn from Prometheus (--prometheus), or why there are none. */
  metrics: FleetMetrics;
  /** NFEs per second across the running searches, over the last few seconds. */
  nfeRate: number;
  /** Running workflows whose workflow tasks keep failing, each once (src/temporal/stuck.ts). */
  stuck: StuckWorkflow[];
  errors: string[];
}

export interface StateOptions {
  client: Client;
  namespace: string;
  fleet: string[];
  /** TLS to the fleet's servers (--tls-*). */
  fleetTls?: FleetTls;
  temporalUi?: string;
  allowActions: boolean;
  /** Prometheus' base URL (--prometheus), for the fleet's rates and latencies; without it those sections say how to get them. */
  prometheus?: string;
  /** Where campaign records are (`noisesearch campaign run` writes them): the report is found through them. */
  campaignsDir?: string;
}

interface Seen {
  at: number;
  nfe: number;
}

/**
 * Gathers the dashboard's state every `pollMs` in the background, whether or not a page is open, so that
 * curves and rates cover the whole time the dashboard runs; pages read the latest gathering, so any number
 * of them cost Temporal nothing more.
 */
export class DashboardData {
  private readonly curves = new Map<string, CurvePoint[]>();
  private readonly lastSeen = new Map<string, Seen[]>();
  private readonly firstCampaignSeen = new Map<string, { at: number; finished: number }>();
  private latest: Promise<DashboardState>;
  /** The gathering in progress: closing waits for it, so that no call outlives the connections. */
  private gathering: Promise<unknown>;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly probes: ReturnType<typeof makeProbes>;

  constructor(private readonly options: StateOptions, pollMs: number) {
    this.probes = makeProbes(options.fleet, options.fleetTls);
    const loop = async () => {
      const next = this.gather();
      this.gathering = next.catch(() => undefined);
      await this.gathering;
      // The page keeps the previous state until the new one is whole.
      this.latest = next;
      if (!this.closed) this.timer = setTimeout(loop, pollMs);
    };
    this.latest = this.gather();
    // A failed gathering is answered to the page that asks (HTTP 500), never left unhandled.
    this.gathering = this.latest.catch(() => undefined);
    this.timer = setTimeout(loop, pollMs);
  }

  state(): Promise<DashboardState> {
    return this.latest;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.gathering;
    this.probes.close();
  }

  private workflowUrl(workflowId: string): string | null {
    const ui = this.options.temporalUi;
    return ui ? `${ui.replace(/\/$/, '')}/namespaces/${encodeURIComponent(this.options.namespace)}/workflows/${encodeURIComponent(workflowId)}` : null;
  }

  private async gather(): Promise<DashboardState> {
    const errors: string[] = [];
    let listed = true;
    const [executions, stuck, fleet, metrics] = await Promise.all([
      this.list().catch((error) => {
        errors.push(`Temporal: ${firstLine(error)}`);
        listed = false;
        return [] as WorkflowExecutionInfo[];
      }),
      // Temporal's own trouble is said once, by the listing above.
      findStuckWorkflows(this.options.client).then((scan) => scan.stuck, () => [] as StuckWorkflow[]),
      this.fleet(),
      gatherFleetMetrics(this.options.prometheus),
    ]);
    const now = Date.now();
    const searches: SearchRow[] = [];
    const campaigns: CampaignRow[] = [];
    let queries = 0;
    const queryAllowed = () => queries++ < QUERY_LIMIT;
    await Promise.all(
      executions.map(async (info) => {
        const running = info.status.name === 'RUNNING';
        if (info.type === 'campaignWorkflow') {
          const progress = running && queryAllowed() ? await this.query(info.workflowId, campaignProgressQuery) : null;
          campaigns.push(this.campaignRow(info, progress, now));
        } else if (info.type === 'searchWorkflow') {
          const progress = running && queryAllowed() ? await this.query(info.workflowId, progressQuery) : null;
          searches.push(this.searchRow(info, progress, now));
        }
      }),
    );
    // A campaign's live NFEs: its finished searches' total plus what its running searches spent so far.
    for (const campaign of campaigns) {
      if (!campaign.progress) continue;
      const live = searches.filter((s) => s.parentId === campaign.workflowId && s.status === 'RUNNING').reduce((sum, s) => sum + (s.nfeSpent ?? 0), 0);
      campaign.nfeLive = campaign.progress.nfeSpent + live;
    }
    const byStart = (a: { startTime: string }, b: { startTime: string }) => (a.startTime < b.startTime ? 1 : -1);
    const runningFirst = (a: { status: string }, b: { status: string }) => Number(b.status === 'RUNNING') - Number(a.status === 'RUNNING');
    searches.sort((a, b) => runningFirst(a, b) || byStart(a, b));
    campaigns.sort((a, b) => runningFirst(a, b) || byStart(a, b));
    // A failed listing says nothing about what ended: curves survive a moment without Temporal.
    if (listed) this.forget(executions);
    return {
      generatedAt: new Date(now).toISOString(),
      namespace: this.options.namespace,
      allowActions: this.options.allowActions,
      temporalUi: this.options.temporalUi ?? null,
      searches,
      campaigns,
      fleet,
      metrics,
      nfeRate: searches.reduce((sum, s) => sum + (s.nfeRate ?? 0), 0),
      stuck,
      errors,
    };
  }

  private async list(): Promise<WorkflowExecutionInfo[]> {
    const out: WorkflowExecutionInfo[] = [];
    for await (const info of this.options.client.workflow.list({ query: 'WorkflowType = "searchWorkflow" OR WorkflowType = "campaignWorkflow"', pageSize: LIST_LIMIT })) {
      out.push(info);
      if (out.length >= LIST_LIMIT) break;
    }
    return out;
  }

  /** A progress query, or null when it cannot answer in time (no worker, or the run just closed). */
  private async query<T>(workflowId: string, query: QueryDefinition<T, []>): Promise<T | null> {
    const client = this.options.client;
    return abortable(client, AbortSignal.timeout(QUERY_TIMEOUT_MS), () => client.workflow.getHandle(workflowId).query(query)).catch(() => null);
  }

  private searchRow(info: WorkflowExecutionInfo, progress: SearchProgress | null, now: number): SearchRow {
    const attributes = info.typedSearchAttributes;
    const nfeSpent = progress?.nfeSpent ?? attributes.get(SEARCH_ATTRIBUTES.nfeSpent) ?? null;
    const bestScore = progress?.best?.score ?? attributes.get(SEARCH_ATTRIBUTES.bestScore) ?? null;
    let nfeRate: number | null = null;
    if (progress) {
      // Over a window of polls: a search spends in rounds, so one poll's interval is all or nothing.
      const seen = (this.lastSeen.get(info.runId) ?? []).filter((p) => now - p.at <= RATE_WINDOW_MS);
      const oldest = seen[0];
      if (oldest && now > oldest.at) nfeRate = Math.max(0, ((progress.nfeSpent - oldest.nfe) * 1000) / (now - oldest.at));
      seen.push({ at: now, nfe: progress.nfeSpent });
      this.lastSeen.set(info.runId, seen);
      if (progress.best) this.record(info.workflowId, { nfe: progress.nfeSpent, score: progress.best.score });
    } else if (nfeSpent !== null && bestScore !== null) {
      // Without a query (closed, or past the queries of a round), the indexed point: a closed search's curve ends where it ended.
      this.record(info.workflowId, { nfe: nfeSpent, score: bestScore });
    }
    return {
      workflowId: info.workflowId,
      runId: info.runId,
      status: info.status.name,
      startTime: info.startTime.toISOString(),
      closeTime: info.closeTime?.toISOString() ?? null,
      parentId: info.parentExecution?.workflowId ?? null,
      algorithm: attributes.get(SEARCH_ATTRIBUTES.algorithm) ?? null,
      model: attributes.get(SEARCH_ATTRIBUTES.model) ?? null,
      verifier: attributes.get(SEARCH_ATTRIBUTES.verifier) ?? null,
      nfeSpent,
      budget: progress?.budget ?? null,
      bestScore,
      round: progress?.round ?? null,
      phase: progress?.phase ?? null,
      stopRequested: progress?.stopRequested ?? false,
      nfeRate,
      // A copy: the next gathering extends the curve while this state may still be served.
      curve: [...(this.curves.get(info.workflowId) ?? [])],
      temporalUrl: this.workflowUrl(info.workflowId),
    };
  }

  private campaignRow(info: WorkflowExecutionInfo, progress: CampaignProgress | null, now: number): CampaignRow {
    let etaSeconds: number | null = null;
    if (progress) {
      const finished = progress.done + progress.failed;
      const first = this.firstCampaignSeen.get(info.runId);
      if (!first) this.firstCampaignSeen.set(info.runId, { at: now, finished });
      // The rate since the dashboard first saw it: searches finish in bursts, so a longer window is steadier.
      else if (finished > first.finished) etaSeconds = ((progress.total - finished) * (now - first.at)) / 1000 / (finished - first.finished);
    }
    const { cells, runningIds: _running, ...summary } = progress ?? ({} as CampaignProgress);
    return {
      workflowId: info.workflowId,
      runId: info.runId,
      status: info.status.name,
      startTime: info.startTime.toISOString(),
      closeTime: info.closeTime?.toISOString() ?? null,
      progress: progress ? summary : null,
      nfeLive: null,
      etaSeconds,
      cells: cells ?? null,
      report: this.reportFile(info.workflowId) ? `/report/${encodeURIComponent(info.workflowId)}` : null,
      temporalUrl: this.workflowUrl(info.workflowId),
    };
  }

  /** The campaign's report, where `noisesearch report ID` writes it by default, if this machine has it. */
  reportFile(campaignId: string): string | null {
    if (!/^[\w.-]+$/.test(campaignId)) return null;
    const record = path.join(this.options.campaignsDir ?? path.join(stateDir(), 'campaigns'), `${campaignId}.json`);
    try {
      const folder = (JSON.parse(readFileSync(record, 'utf8')) as { folder?: string }).folder;
      const file = folder && path.join(folder, 'report.html');
      return file && existsSync(file) ? file : null;
    } catch {
      return null;
    }
  }

  private record(workflowId: string, point: CurvePoint): void {
    const curve = this.curves.get(workflowId) ?? [];
    const last = curve[curve.length - 1];
    if (last && last.nfe === point.nfe && last.score === point.score) return;
    // Visibility lags the progress query: a point behind the last one adds nothing to the curve.
    if (last && point.nfe < last.nfe) return;
    curve.push(point);
    // The oldest points after the first go: the curve keeps where it started and its recent shape.
    if (curve.length > CURVE_POINTS) curve.splice(1, curve.length - CURVE_POINTS);
    this.curves.set(workflowId, curve);
  }

  /** Keeps what the dashboard remembers to the executions listed now: bounded however long it runs. */
  private forget(listed: WorkflowExecutionInfo[]): void {
    const workflowIds = new Set(listed.map((info) => info.workflowId));
    const runIds = new Set(listed.map((info) => info.runId));
    for (const key of this.curves.keys()) if (!workflowIds.has(key)) this.curves.delete(key);
    for (const key of this.lastSeen.keys()) if (!runIds.has(key)) this.lastSeen.delete(key);
    for (const key of this.firstCampaignSeen.keys()) if (!runIds.has(key)) this.firstCampaignSeen.delete(key);
  }


  private fleet(): Promise<EndpointRow[]> {
    return this.probes.probeAll();
  }
}

/** Health and Describe of every endpoint, through the fleet's own proto and call helper. */
function makeProbes(addresses: string[], tls: FleetTls | undefined) {
  const { Denoiser, Health } = services();
  const credentials = channelCredentials(tls);
  const clients = addresses.map((address) => ({
    address,
    health: new Health(address, credentials),
    denoiser: new Denoiser(address, credentials),
  }));
  const probe = async (c: (typeof clients)[number]): Promise<EndpointRow> => {
    const row: EndpointRow = { address: c.address, health: 'UNKNOWN', latencyMs: null, model: null, serverId: null, verifiers: [], maxBatch: null, maxConcurrency: null, solvers: [], error: null };
    const started = performance.now();
    try {
      const health = await unary<object, { status: string }>(c.health, 'Check', { service: '' }, 2_000);
      row.latencyMs = Math.round((performance.now() - started) * 10) / 10;
      row.health = health.status;
      if (health.status === 'SERVING') {
        const described: any = await unary(c.denoiser, 'Describe', {}, 2_000);
        const model = toModelInfo(described);
        Object.assign(row, { model: model.model, serverId: described.serverId || null, verifiers: model.verifiers.map((v) => v.name), maxBatch: model.maxBatch, maxConcurrency: model.maxConcurrency, solvers: model.solvers });
      }
    } catch (error) {
      row.health = 'DOWN';
      // A refused handshake says why (src/fleet/tls.ts), where gRPC only says it could not connect.
      const handshake = /No connection established/.test(firstLine(error)) ? await diagnoseTls(c.address, tls) : null;
      row.error = handshake ? `TLS handshake failed: ${handshake}` : firstLine(error);
    }
    return row;
  };
  return {
    probeAll: () => Promise.all(clients.map(probe)),
    close: () => clients.forEach((c) => (c.health.close(), c.denoiser.close())),
  };
}

function firstLine(error: unknown): string {
  return String((error as Error)?.message ?? error).split('\n')[0];
}
