// The fleet client: the only code that talks to model servers. Endpoints are described on connect,
// re-checked when they fail, and a batch goes to the least-loaded SERVING endpoint that hosts its model,
// through a per-endpoint concurrency limit sized from what the server says it accepts.
import { readFileSync, existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import pLimit from 'p-limit';
import { opsNfe } from '../search/nfe';
import type { BatchOutcome, BatchRequest, CandidateOutcome, Condition, ModelInfo, PopulationMetrics } from '../search/types';
import { classifyGrpcError, FleetError, MESSAGE_TOO_LARGE } from './errors';
import { services } from './proto';
import * as metrics from '../metrics';
import { DnsWatch, isDnsTarget, parseDnsTarget, type Resolver } from './resolve';
import { channelCredentials, diagnoseTls, type FleetTls } from './tls';

/**
 * The largest gRPC message either end takes, as the model servers' default (--max-message-mb 256): an
 * image model's batch of PNGs, or a cell's samples for population metrics, is megabytes.
 */
export const MAX_MESSAGE_BYTES = 256 << 20;

/** A final sample for population metrics: a latent model's values, or an image model's decoded PNG. */
export type PopulationSample = { values: number[]; condition: Condition } | { image: Uint8Array; condition: Condition };

export interface FleetOptions {
  /** Deadline of one Evaluate call, before what its NFEs add (`msPerNfe`). */
  callDeadlineMs?: number;
  /** What each logical NFE of a batch adds to its deadline, so a big batch on a slow model is not cut short. */
  msPerNfe?: number;
  /** Deadline of health checks and Describe calls. */
  probeDeadlineMs?: number;
  /** How soon an endpoint that failed is probed again. */
  recheckMs?: number;
  /** How `dns:///host:port` fleet entries are resolved (tests inject one), and how often again. */
  resolver?: Resolver;
  resolveEveryMs?: number;
  /** TLS to every endpoint (src/fleet/tls.ts); plaintext without. */
  tls?: FleetTls;
}

interface Endpoint {
  address: string;
  denoiser: grpc.Client;
  verifier: grpc.Client;
  health: grpc.Client;
  model: ModelInfo | null;
  serverId: string;
  serving: boolean;
  checkedAt: number;
  /** Candidates of the calls in flight or queued here: what routing compares. */
  outstanding: number;
  limit: pLimit.Limit;
  limitSize: number;
  /** A probe in flight: concurrent callers wait for it rather than seeing the endpoint as down. */
  probing: Promise<void> | null;
  /** Resolved from a DNS target (and so removable when the name stops answering with it). */
  resolved: boolean;
  /** Gone from DNS: routed nothing new, and its channels close once its calls in flight end. */
  removed: boolean;
  /** Why TLS to it failed at its last probe; null when it did not (or the probe succeeded). */
  tlsFailure: string | null;
}

const RETRY_UNAVAILABLE = JSON.stringify({
  methodConfig: [
    {
      name: [{ service: 'noisesearch.v1.Denoiser' }, { service: 'noisesearch.v1.Verifier' }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: '0.1s',
        maxBackoff: '1s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
});

/**
 * `--fleet` takes a file (JSON `{"endpoints": [...]}` or one address a line) or comma-separated addresses;
 * an entry `dns:///host:port` stands for every address the name resolves to (src/fleet/resolve.ts).
 */
export function parseFleet(value: string): string[] {
  const text = existsSync(value) ? readFileSync(value, 'utf8') : value;
  const trimmed = text.trim();
  const addresses = trimmed.startsWith('{')
    ? (JSON.parse(trimmed).endpoints as string[])
    : trimmed.split(/[\s,]+/).filter((line) => line && !line.startsWith('#'));
  for (const address of addresses) {
    if (isDnsTarget(address)) {
      parseDnsTarget(address);
      continue;
    }
    if (!/^[\w.\-[\]:]+:\d+$/.test(address)) {
      throw new FleetError('INVALID_ARGUMENT', `fleet: "${address}" is not a host:port gRPC address`, false);
    }
  }
  if (addresses.length === 0) throw new FleetError('INVALID_ARGUMENT', 'fleet: no endpoints given; use host:port[,host:port...]', false);
  return addresses;
}

/** One call with a deadline; an abort signal cancels it, and its listener goes when the call ends. */
export function unary<Req, Res>(client: grpc.Client, method: string, request: Req, deadlineMs: number, signal?: AbortSignal): Promise<Res> {
  return new Promise((resolve, reject) => {
    const cancel = () => call.cancel();
    const call = (client as any)[method](request, { deadline: Date.now() + deadlineMs }, (error: grpc.ServiceError | null, response: Res) => {
      signal?.removeEventListener('abort', cancel);
      if (error) reject(error);
      else resolve(response);
    });
    signal?.addEventListener('abort', cancel, { once: true });
  });
}

/** Keys travel as bytes on the wire and as base64url text in outcomes, histories and state. */
function keyText(bytes: Buffer | Uint8Array | undefined): string | undefined {
  return bytes && bytes.length > 0 ? Buffer.from(bytes).toString('base64url') : undefined;
}

export function toModelInfo(d: any): ModelInfo {
  return {
    model: d.model,
    latentShape: d.latentShape,
    sigmaMin: d.sigmaMin,
    sigmaMax: d.sigmaMax,
    // A server from before models said their process and schedule hosts a VE model on the Karras schedule.
    process: d.process || 've',
    schedule: { kind: d.schedule || 'karras', rho: d.rho, shift: d.scheduleShift || 1 },
    solvers: d.solvers.map((s: { name: string }) => s.name),
    maxBatch: d.maxBatch,
    maxConcurrency: d.maxConcurrency,
    verifiers: d.verifiers.map((v: any) => ({ name: v.name, kind: v.kind, needsCondition: v.needsCondition, xpredSigma: v.xpredSigma })),
    defaultSolver: d.defaultSolver,
    defaultSteps: d.defaultSteps,
    numClasses: d.numClasses,
    defaultGuidanceScale: d.defaultGuidanceScale,
    takesPrompts: Boolean(d.takesPrompts),
    imageShape: d.imageShape ?? [],
  };
}

function toCondition(condition: Condition): object {
  const { classLabel, prompt, guidanceScale, negativePrompt } = condition;
  // guidance_scale is optional on the wire: absent means the model's default, and 0 stays 0.
  return {
    ...(classLabel !== undefined ? { classLabel } : {}),
    ...(prompt !== undefined ? { prompt } : {}),
    ...(guidanceScale !== undefined ? { guidanceScale } : {}),
    ...(negativePrompt !== undefined ? { negativePrompt } : {}),
  };
}

/** A solve names the schedule of the model that runs it (a server refuses any other). */
function toRequest(batch: BatchRequest, schedule: string): object {
  const condition = toCondition(batch.condition);
  return {
    model: batch.model,
    verifiers: batch.verifiers,
    returnSamples: batch.returnSamples ?? false,
    candidates: batch.candidates.map((c) => ({
      id: c.id,
      condition,
      scoreXpred: c.scoreXpred,
      ...(c.base ? { base: Buffer.from(c.base.key, 'base64url') } : {}),
      lineage: {
        noise: c.lineage.noise,
        ops: c.lineage.ops.map((op) => ('solve' in op ? { solve: { ...op.solve, schedule } } : { renoise: op.renoise })),
      },
    })),
  };
}

function toOutcome(r: any): CandidateOutcome {
  const outcome: CandidateOutcome = { id: r.id, scores: { ...r.scores }, nfeLogical: r.nfeLogical, nfeExecuted: r.nfeExecuted };
  if (r.error && r.error.code) outcome.error = { code: r.error.code, message: r.error.message };
  if (r.sample && r.sample.length > 0) outcome.sample = r.sample;
  if (r.image && r.image.length > 0) outcome.image = new Uint8Array(r.image);
  const key = keyText(r.stateKey);
  const noiseKey = keyText(r.noiseKey);
  if (key) outcome.key = key;
  if (noiseKey) outcome.noiseKey = noiseKey;
  return outcome;
}

/** Logical NFEs a batch asks of a server at most (its own ops and x-predictions): what its deadline scales with. */
export function batchNfe(batch: BatchRequest): number {
  return batch.candidates.reduce((sum, c) => sum + opsNfe(c.lineage.ops) + (c.scoreXpred ? 1 : 0), 0);
}

export class Fleet {
  private endpoints: Endpoint[];
  private readonly dns: DnsWatch | null;
  private readonly dnsTargets: string[];
  private readonly callDeadlineMs: number;
  private readonly msPerNfe: number;
  private readonly probeDeadlineMs: number;
  private readonly recheckMs: number;
  private readonly credentials: grpc.ChannelCredentials;
  private readonly tls: FleetTls | undefined;
  /** Where the search for the least-loaded endpoint starts next: ties rotate. */
  private nextTie = 0;

  constructor(addresses: string[], options: FleetOptions = {}) {
    this.credentials = channelCredentials(options.tls);
    this.tls = options.tls;
    this.callDeadlineMs = options.callDeadlineMs ?? 60_000;
    this.msPerNfe = options.msPerNfe ?? 20;
    this.probeDeadlineMs = options.probeDeadlineMs ?? 2_000;
    this.recheckMs = options.recheckMs ?? 500;
    this.dnsTargets = addresses.filter(isDnsTarget);
    this.endpoints = addresses.filter((a) => !isDnsTarget(a)).map((address) => this.endpoint(address, false));
    this.dns = this.dnsTargets.length > 0
      ? new DnsWatch(this.dnsTargets, { resolver: options.resolver, everyMs: options.resolveEveryMs, onChange: (resolved) => this.follow(resolved) })
      : null;
  }

  private endpoint(address: string, resolved: boolean): Endpoint {
    const { Denoiser, Verifier, Health } = services();
    // A resolved address is a pod's IP; its certificate names the DNS name the fleet was given.
    const host = resolved && this.tls ? this.dns?.hostOf(address) : undefined;
    const name = host ? { 'grpc.ssl_target_name_override': host, 'grpc.default_authority': host } : {};
    const channelOptions = { 'grpc.service_config': RETRY_UNAVAILABLE, 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_MESSAGE_BYTES, ...name };
    return {
      address,
      denoiser: new Denoiser(address, this.credentials, channelOptions),
      verifier: new Verifier(address, this.credentials, channelOptions),
      health: new Health(address, this.credentials, name),
      model: null,
      serverId: '',
      serving: false,
      checkedAt: 0,
      outstanding: 0,
      limit: pLimit(1),
      limitSize: 1,
      probing: null,
      resolved,
      removed: false,
      tlsFailure: null,
    };
  }

  /** The addresses DNS gives now: new ones join, vanished ones leave routing and close when their calls end. */
  private follow(resolved: string[]): void {
    const known = new Set(this.endpoints.map((e) => e.address));
    const wanted = new Set(resolved);
    for (const e of this.endpoints) {
      if (e.resolved && !wanted.has(e.address)) {
        e.removed = true;
        // A pod gone from DNS is not down: its series goes, or "endpoint down" would fire for it forever.
        metrics.endpointUp.remove({ endpoint: e.address });
        if (e.outstanding === 0) closeEndpoint(e);
      }
    }
    this.endpoints = [
      ...this.endpoints.filter((e) => !e.removed),
      ...resolved.filter((a) => !known.has(a)).map((a) => this.endpoint(a, true)),
    ];
  }

  get addresses(): string[] {
    return this.endpoints.map((e) => e.address);
  }

  /** What the fleet was configured with, for people: the fixed addresses and the DNS names it follows. */
  describeTargets(): string {
    return [...this.endpoints.filter((e) => !e.resolved).map((e) => e.address), ...this.dnsTargets].join(', ');
  }

  private async probe(endpoint: Endpoint): Promise<void> {
    endpoint.checkedAt = Date.now();
    try {
      const health = await unary<object, { status: string }>(endpoint.health, 'Check', { service: '' }, this.probeDeadlineMs);
      if (health.status !== 'SERVING') {
        setServing(endpoint, false);
        return;
      }
      const timer = metrics.endpointRequestSeconds.startTimer({ endpoint: endpoint.address, method: 'Describe' });
      const description: any = await unary(endpoint.denoiser, 'Describe', {}, this.probeDeadlineMs).finally(() => timer());
      endpoint.model = toModelInfo(description);
      endpoint.serverId = description.serverId;
      const size = Math.max(1, endpoint.model.maxConcurrency);
      if (size !== endpoint.limitSize) {
        endpoint.limit = pLimit(size);
        endpoint.limitSize = size;
      }
      endpoint.tlsFailure = null;
      setServing(endpoint, true);
    } catch (error) {
      // grpc-js's words for a connection that never carried a call: a server down, or a handshake refused.
      const unconnected = /No connection established/.test(String((error as Error)?.message));
      endpoint.tlsFailure = unconnected ? await diagnoseTls(endpoint.address, this.tls) : null;
      setServing(endpoint, false);
    }
  }

  /** Probes endpoints that are not known to be serving and have not been probed lately. */
  async refresh(force = false): Promise<void> {
    await this.dns?.ready;
    const now = Date.now();
    await Promise.all(
      this.endpoints.map((e) => {
        if (!e.probing && (force || (!e.serving && now - e.checkedAt >= this.recheckMs))) {
          e.probing = this.probe(e).finally(() => (e.probing = null));
        }
        return e.probing;
      }),
    );
  }

  private hosting(model: string): Endpoint[] {
    return this.endpoints.filter((e) => e.serving && e.model?.model === model);
  }

  private async route(model: string): Promise<Endpoint[]> {
    await this.refresh();
    const hosts = this.hosting(model);
    if (hosts.length > 0) return hosts;
    // An empty fleet (a headless Service with no ready pod yet) is a wait, not a missing model.
    const allServing = this.endpoints.length > 0 && this.endpoints.every((e) => e.serving);
    if (allServing) {
      const hosted = [...new Set(this.endpoints.map((e) => e.model?.model))].join(', ');
      throw counted(new FleetError('NOT_FOUND', `model "${model}" is not hosted by the fleet (${this.addresses.join(', ')} host ${hosted})`, false));
    }
    // Every endpoint refused the handshake: a certificate or a CA is wrong, which no retry mends. One that is
    // merely down (refused connection, no answer) keeps the wait retryable.
    const handshakes = this.endpoints.filter((e) => e.tlsFailure !== null);
    if (handshakes.length > 0 && handshakes.length === this.endpoints.length) {
      const [first] = handshakes;
      throw counted(new FleetError('FAILED_PRECONDITION', `${first.address}: TLS handshake failed: ${first.tlsFailure} (docs/security.md)`, false));
    }
    throw counted(new FleetError('UNAVAILABLE', `no SERVING endpoint hosts model "${model}" (fleet: ${[...this.dnsTargets, ...this.addresses].join(', ')})`, true));
  }

  /** The model as the fleet serves it; max batch is the smallest any host accepts, so a batch fits anywhere. */
  async describe(model: string): Promise<ModelInfo> {
    const hosts = await this.route(model);
    return { ...hosts[0].model!, maxBatch: Math.min(...hosts.map((h) => h.model!.maxBatch)) };
  }

  /**
   * Runs `call` on the least-loaded SERVING endpoint hosting `model`, within its concurrency limit. Load is
   * counted in candidates, not calls: a server's batch has room for candidates, and a one-candidate call
   * weighs less than a round of 64. Ties go round the fleet, so a lightly loaded fleet still uses every
   * server rather than the first in the list.
   */
  private async onEndpoint<T>(model: string, method: 'Evaluate' | 'Population', call: (endpoint: Endpoint) => Promise<T>, weight = 1): Promise<T> {
    const hosts = await this.route(model);
    const start = this.nextTie++ % hosts.length;
    let endpoint = hosts[start];
    for (let i = 1; i < hosts.length; i++) {
      const e = hosts[(start + i) % hosts.length];
      if (e.outstanding < endpoint.outstanding) endpoint = e;
    }
    endpoint.outstanding += weight;
    const labels = { endpoint: endpoint.address };
    metrics.endpointQueued.inc(labels);
    try {
      return await endpoint.limit(async () => {
        metrics.endpointQueued.dec(labels);
        metrics.endpointInFlight.inc(labels);
        const timer = metrics.endpointRequestSeconds.startTimer({ ...labels, method });
        try {
          return await call(endpoint);
        } finally {
          timer();
          metrics.endpointInFlight.dec(labels);
        }
      });
    } catch (error) {
      const failure = counted(classifyGrpcError(error, endpoint.address));
      if (failure.retryable) setServing(endpoint, false);
      throw failure;
    } finally {
      endpoint.outstanding -= weight;
      if (endpoint.removed && endpoint.outstanding === 0) closeEndpoint(endpoint);
    }
  }

  /** Evaluates a batch end to end on one server; throws FleetError (classified) on failure. */
  async evaluate(batch: BatchRequest, signal?: AbortSignal): Promise<BatchOutcome> {
    return this.onEndpoint(batch.model, 'Evaluate', async (endpoint) => {
      const deadlineMs = this.callDeadlineMs + this.msPerNfe * batchNfe(batch);
      const response: any = await unary(endpoint.denoiser, 'Evaluate', toRequest(batch, endpoint.model!.schedule.kind), deadlineMs, signal);
      return {
        outcomes: response.results.map(toOutcome),
        verifierTimings: response.verifierTimings.map((t: any) => ({ verifier: t.verifier, calls: t.calls, seconds: t.seconds })),
        denoiseSeconds: response.denoiseSeconds,
        serverId: response.serverId,
      };
    }, batch.candidates.length);
  }

  /**
   * Population metrics (Frechet distance, Inception-Score analogue, and CLIP-FID from an image model's
   * server with a CLIP reference) of final samples against the model's true distribution; an image
   * model's samples go as their PNGs.
   */
  async population(model: string, samples: PopulationSample[]): Promise<PopulationMetrics> {
    const bytes = samples.reduce((sum, s) => sum + ('image' in s ? s.image.length : 4 * s.values.length) + 256, 0);
    if (bytes > MAX_MESSAGE_BYTES) {
      throw counted(new FleetError(MESSAGE_TOO_LARGE, `population: ${samples.length} samples make a request of ${(bytes / 2 ** 20).toFixed(0)} MiB, over the ${MAX_MESSAGE_BYTES / 2 ** 20} MiB a gRPC message may carry; use fewer items or seeds per cell`, false));
    }
    return this.onEndpoint(model, 'Population', async (endpoint) => {
      const described = endpoint.model!;
      const request = {
        samples: samples.map((s) =>
          'image' in s
            ? { image: Buffer.from(s.image), shape: described.imageShape, condition: toCondition(s.condition) }
            : { values: s.values, shape: described.latentShape, condition: toCondition(s.condition) },
        ),
      };
      const r: any = await unary(endpoint.verifier, 'Population', request, this.callDeadlineMs);
      // clip_frechet_distance is optional on the wire: proto-loader leaves it out (no default) unless the server set it.
      return {
        frechetDistance: r.frechetDistance,
        inceptionScore: r.inceptionScore,
        samples: r.samples,
        referenceSamples: r.referenceSamples,
        ...(r.clipFrechetDistance !== undefined ? { clipFrechetDistance: r.clipFrechetDistance } : {}),
      };
    });
  }

  close(): void {
    this.dns?.stop();
    for (const e of this.endpoints) closeEndpoint(e);
  }
}

function closeEndpoint(e: Endpoint): void {
  e.denoiser.close();
  e.verifier.close();
  e.health.close();
}

/** Whether an endpoint takes calls, as routing and the endpoint_up gauge see it. */
function setServing(endpoint: Endpoint, serving: boolean): void {
  endpoint.serving = serving;
  metrics.endpointUp.set({ endpoint: endpoint.address }, serving ? 1 : 0);
}

/** Counts a classified error once, where it is classified, and hands it on. */
function counted(error: FleetError): FleetError {
  metrics.errors.inc({ code: error.code, retryable: String(error.retryable) });
  return error;
}
