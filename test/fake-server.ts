// A stand-in for a model server, for tests of the pure search core: it keeps the states it evaluated by
// key (as a real server's cache does), resolves a candidate's base to the whole lineage, and scores that
// whole lineage with a pure function of it, as a real verifier would. It can forget every state (a
// restarted server) and fail candidates, so the core's recovery and failure paths can be driven by hand.
import { createHash } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { services } from '../src/fleet/proto';
import type { BatchOutcome, BatchRequest, CandidateError, CandidateOutcome, Lineage, WireCandidate } from '../src/search/types';

export type Scorer = (lineage: Lineage, verifier: string) => number;

/** How a failing candidate fails: its error, and the logical NFEs the server says it spent first. */
export interface InjectedFailure {
  error: CandidateError;
  nfeLogical: number;
}

export interface FakeServerOptions {
  scorer: Scorer;
  /** Decides, per candidate (by id and whole lineage), whether and how it fails. */
  fail?: (id: string, lineage: Lineage) => InjectedFailure | null;
  /** The executed NFEs the server reports for a candidate: a marker the tests can sum, not a formula. */
  executed?: (id: string) => number;
}

export interface EvaluatedCandidate {
  wire: WireCandidate;
  lineage: Lineage;
  outcome: CandidateOutcome;
}

function keyOf(lineage: Lineage): string {
  return createHash('sha256').update(JSON.stringify(lineage)).digest('base64url').slice(0, 22);
}

export class FakeServer {
  private readonly states = new Map<string, Lineage>();
  /** Every candidate this server answered, in order, with the whole lineage it resolved. */
  readonly evaluated: EvaluatedCandidate[] = [];
  readonly requests: BatchRequest[] = [];

  constructor(private readonly options: FakeServerOptions) {}

  /** A restarted server: every base is gone. */
  forget(): void {
    this.states.clear();
  }

  private resolve(candidate: WireCandidate): Lineage | null {
    if (!candidate.base) return candidate.lineage;
    const base = this.states.get(candidate.base.key);
    if (!base) return null;
    const added = candidate.lineage.noise.perturbations;
    if (added.length > 0) {
      if (base.ops.length > 0) throw new Error(`${candidate.id}: perturbations on a base state`);
      return { noise: { seed: base.noise.seed, perturbations: [...base.noise.perturbations, ...added] }, ops: candidate.lineage.ops };
    }
    return { noise: base.noise, ops: [...base.ops, ...candidate.lineage.ops] };
  }

  evaluate(batch: BatchRequest): BatchOutcome {
    this.requests.push(batch);
    const outcomes = batch.candidates.map((candidate): CandidateOutcome => {
      const lineage = this.resolve(candidate);
      const executed = this.options.executed?.(candidate.id) ?? 0;
      if (!lineage) {
        const outcome = { id: candidate.id, scores: {}, nfeLogical: 0, nfeExecuted: 0, error: { code: 'NOT_FOUND', message: 'base: not held by this server' } };
        return outcome;
      }
      const key = keyOf(lineage);
      const noiseKey = keyOf({ noise: lineage.noise, ops: [] });
      this.states.set(key, lineage);
      this.states.set(noiseKey, { noise: lineage.noise, ops: [] });
      const failure = this.options.fail?.(candidate.id, lineage) ?? null;
      const outcome: CandidateOutcome = failure
        ? { id: candidate.id, scores: {}, nfeLogical: failure.nfeLogical, nfeExecuted: executed, error: failure.error, key, noiseKey }
        : {
            id: candidate.id,
            scores: Object.fromEntries(batch.verifiers.map((v) => [v, this.options.scorer(lineage, v)])),
            nfeLogical: 0,
            nfeExecuted: executed,
            key,
            noiseKey,
          };
      this.evaluated.push({ wire: candidate, lineage, outcome });
      return outcome;
    });
    return {
      serverId: 'fake',
      verifierTimings: batch.verifiers.map((verifier) => ({ verifier, calls: batch.candidates.length, seconds: 0.001 })),
      outcomes,
    };
  }

  /** The whole lineage this server resolved for a candidate id (the last time it answered it). */
  lineageOf(id: string): Lineage {
    const found = [...this.evaluated].reverse().find((e) => e.wire.id === id);
    if (!found) throw new Error(`candidate ${id} was never evaluated`);
    return found.lineage;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The same fake behind a real gRPC server: the contract's Denoiser, Verifier and Health services on
// localhost, answering from a FakeServer and describing whatever model a test gives, so that the fleet
// client, the activities and the workflows run against it as against a model server. For an image model
// it decodes samples as small PNGs.

/** A PNG of width x height RGB pixels, each row unfiltered: the smallest image a decoder takes. */
export function tinyPng(width: number, height: number, pixel: (x: number, y: number) => [number, number, number]): Buffer {
  const rows = Buffer.alloc(height * (1 + 3 * width));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) rows.set(pixel(x, y), y * (1 + 3 * width) + 1 + 3 * x);
  }
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', header), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function crc32(bytes: Buffer): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** A 4 x 4 picture whose colours follow the candidate's whole lineage: different samples look different. */
export function lineagePng(lineage: Lineage): Buffer {
  const hash = createHash('sha256').update(JSON.stringify(lineage)).digest();
  return tinyPng(4, 4, (x, y) => [hash[(4 * y + x) % 32], hash[(4 * y + x + 11) % 32], hash[(4 * y + x + 22) % 32]]);
}

/** A text-to-image model as its server would describe it (proto field names), small enough for tests. */
export function tinyTextModelDescription(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model: 'tiny-flux',
    latentShape: [4, 2, 2],
    sigmaMin: 0.001,
    sigmaMax: 1,
    solvers: [{ name: 'euler' }, { name: 'heun' }, { name: 'euler_ancestral' }],
    maxBatch: 8,
    maxConcurrency: 4,
    verifiers: [
      { name: 'clip-score', kind: 'supervised', needsCondition: true, xpredSigma: 0, description: 'fake' },
      { name: 'aesthetic', kind: 'supervised', needsCondition: false, xpredSigma: 0, description: 'fake' },
    ],
    defaultSolver: 'euler',
    defaultSteps: 4,
    numClasses: 0,
    defaultGuidanceScale: 3.5,
    serverId: 'fake-grpc',
    rho: 7,
    process: 'flow',
    schedule: 'shifted',
    scheduleShift: 3,
    takesPrompts: true,
    imageShape: [3, 4, 4],
    ...overrides,
  };
}

export interface FakeModelServer {
  address: string;
  fake: FakeServer;
  /** Every Evaluate request as the server decoded it. */
  evaluations: any[];
  /** Every Population request as the server decoded it. */
  populations: any[];
  close(): Promise<void>;
}

/** Serves `description` on localhost:0 from a FakeServer; samples come back as `png(lineage)` when asked for. */
export async function serveFakeModel(description: Record<string, unknown>, options: FakeServerOptions, png: (lineage: Lineage) => Buffer = lineagePng): Promise<FakeModelServer> {
  const fake = new FakeServer(options);
  const evaluations: any[] = [];
  const populations: any[] = [];
  const keys = new Map<string, string>();
  const bytesOf = (key: string): Buffer => {
    const bytes = createHash('sha256').update(key).digest().subarray(0, 16);
    keys.set(bytes.toString('hex'), key);
    return bytes;
  };
  const { Denoiser, Verifier, Health } = services();
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 256 << 20, 'grpc.max_send_message_length': 256 << 20 });
  const unaryOf = (handler: (request: any) => unknown): grpc.handleUnaryCall<any, any> => (call, callback) => {
    try {
      callback(null, handler(call.request));
    } catch (error) {
      callback({ code: grpc.status.INTERNAL, details: String((error as Error).message) } as grpc.ServiceError, null);
    }
  };
  server.addService((Denoiser as any).service, {
    Describe: unaryOf(() => description),
    Evaluate: unaryOf((request) => {
      evaluations.push(request);
      const candidates: WireCandidate[] = request.candidates.map((c: any) => {
        const ops = c.lineage.ops.map((op: any) =>
          op.op === 'solve'
            ? { solve: { sigmaFrom: op.solve.sigmaFrom, sigmaTo: op.solve.sigmaTo, solver: op.solve.solver, steps: op.solve.steps, ...(op.solve.seed ? { seed: op.solve.seed } : {}) } }
            : { renoise: { sigmaFrom: op.renoise.sigmaFrom, sigmaTo: op.renoise.sigmaTo, seed: op.renoise.seed } },
        );
        const noise = { seed: c.lineage.noise?.seed ?? 0, perturbations: (c.lineage.noise?.perturbations ?? []).map((p: any) => ({ seed: p.seed, cosine: p.cosine })) };
        const base = c.base && c.base.length > 0 ? keys.get(Buffer.from(c.base).toString('hex')) ?? 'unknown' : undefined;
        return { id: c.id, ...(base ? { base: { key: base } } : {}), lineage: { noise, ops }, scoreXpred: c.scoreXpred };
      });
      const outcome = fake.evaluate({ model: request.model, condition: {}, verifiers: request.verifiers, candidates, returnSamples: request.returnSamples });
      return {
        results: outcome.outcomes.map((o) => ({
          id: o.id,
          scores: o.scores,
          nfeLogical: o.nfeLogical,
          nfeExecuted: o.nfeExecuted,
          ...(o.error ? { error: o.error } : {}),
          ...(o.key ? { stateKey: bytesOf(o.key) } : {}),
          ...(o.noiseKey ? { noiseKey: bytesOf(o.noiseKey) } : {}),
          ...(request.returnSamples && !o.error ? { image: png(fake.lineageOf(o.id)) } : {}),
        })),
        verifierTimings: outcome.verifierTimings,
        serverId: description.serverId,
      };
    }),
  });
  server.addService((Verifier as any).service, {
    Population: unaryOf((request) => {
      populations.push(request);
      // Pictures get a CLIP-FID, as from a server started with --clip-fid; latents none.
      const pictures = request.samples.some((s: any) => s.image?.length > 0);
      return { frechetDistance: request.samples.length, inceptionScore: 1, samples: request.samples.length, referenceSamples: 0, featureDim: 0, ...(pictures ? { clipFrechetDistance: 0.25 } : {}) };
    }),
  });
  server.addService((Health as any).service, { Check: unaryOf(() => ({ status: 'SERVING' })) });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))));
  return {
    address: `127.0.0.1:${port}`,
    fake,
    evaluations,
    populations,
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}
