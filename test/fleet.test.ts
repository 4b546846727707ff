// The fleet client against real model servers: routing, endpoints that are down, error classification.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../src/embedded/processes';
import { Fleet, parseFleet } from '../src/fleet/client';
import { classifyGrpcError, FleetError } from '../src/fleet/errors';
import type { BatchRequest } from '../src/search/types';
import { gmmModelInfo } from './fixtures';
import { stopServer, withFaultyServer, withModelServer } from './helpers';

const SIGMA_MAX = gmmModelInfo().sigmaMax;

function batch(size: number, overrides: Partial<BatchRequest> = {}): BatchRequest {
  return {
    model: 'gmm',
    condition: { classLabel: 2 },
    verifiers: ['gmm-classifier'],
    candidates: Array.from({ length: size }, (_, i) => ({
      id: `c${i}`,
      lineage: { noise: { seed: 100 + i, perturbations: [] }, ops: [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0, solver: 'heun' as const, steps: 10 } }] },
      scoreXpred: false,
    })),
    ...overrides,
  };
}

describe('error classification', () => {
  it('retries what waiting can fix and fails at once on the caller\'s mistakes and server bugs, for every status', () => {
    // Every gRPC status by its number (grpc/doc/statuscodes.md), with the class this project gives it.
    const expected: Array<[number, string, boolean]> = [
      [1, 'CANCELLED', true],
      [2, 'UNKNOWN', false],
      [3, 'INVALID_ARGUMENT', false],
      [4, 'DEADLINE_EXCEEDED', true],
      [5, 'NOT_FOUND', false],
      [6, 'ALREADY_EXISTS', false],
      [7, 'PERMISSION_DENIED', false],
      [8, 'RESOURCE_EXHAUSTED', true],
      [9, 'FAILED_PRECONDITION', false],
      [10, 'ABORTED', true],
      [11, 'OUT_OF_RANGE', false],
      [12, 'UNIMPLEMENTED', false],
      [13, 'INTERNAL', false],
      [14, 'UNAVAILABLE', true],
      [15, 'DATA_LOSS', false],
      [16, 'UNAUTHENTICATED', false],
    ];
    for (const [code, name, retryable] of expected) {
      const failure = classifyGrpcError(Object.assign(new Error('x'), { code, details: 'why', metadata: null }), 'h:1');
      assert.deepEqual([failure.code, failure.retryable, failure.message], [name, retryable, `h:1: ${name}: why`]);
    }
    // A message over a size limit is RESOURCE_EXHAUSTED too, but sending it again cannot help.
    const tooLarge = classifyGrpcError(Object.assign(new Error('x'), { code: 8, details: 'Received message larger than max (300000000 vs. 268435456)', metadata: null }), 'h:1');
    assert.deepEqual([tooLarge.code, tooLarge.retryable], ['MESSAGE_TOO_LARGE', false]);
    assert.match(tooLarge.message, /^h:1: Received message larger than max .*raise the limits \(the servers' --max-message-mb\)$/);
    const notFromTheServer = classifyGrpcError(new TypeError('bad request object'), 'h:1');
    assert.deepEqual([notFromTheServer.code, notFromTheServer.retryable], ['INTERNAL', false]);
  });

  it('reads a fleet from a list and refuses a malformed address', () => {
    assert.deepEqual(parseFleet('a:1, b:2'), ['a:1', 'b:2']);
    assert.throws(() => parseFleet('no-port'), /"no-port" is not a host:port gRPC address/);
  });
});

describe('fleet client', () => {
  let a: Awaited<ReturnType<typeof withModelServer>>;
  let b: Awaited<ReturnType<typeof withModelServer>>;
  let deadAddress: string;

  before(async () => {
    [a, b] = await Promise.all([withModelServer(['--max-batch', '16']), withModelServer(['--max-batch', '32'])]);
    deadAddress = `127.0.0.1:${await freePort()}`;
  });
  after(async () => {
    await Promise.all([stopServer(a), stopServer(b)]);
  });

  it('skips an endpoint that is down and describes the model with the smallest max batch', async () => {
    const fleet = new Fleet([deadAddress, a.address, b.address], { probeDeadlineMs: 500 });
    try {
      const model = await fleet.describe('gmm');
      assert.deepEqual({ ...model, maxBatch: 64 }, gmmModelInfo(), 'the fixture the unit tests use is what the server describes');
      assert.equal(model.maxBatch, 16);
      assert.deepEqual(model.verifiers.map((v) => v.name).sort(), ['gmm-classifier', 'gmm-oracle', 'gmm-selfsup']);
      const outcome = await fleet.evaluate(batch(4));
      assert.equal(outcome.outcomes.length, 4);
      for (const o of outcome.outcomes) {
        assert.equal(o.nfeLogical, 19);
        assert.ok(Number.isFinite(o.scores['gmm-classifier']));
      }
    } finally {
      fleet.close();
    }
  });

  it('spreads concurrent batches over the endpoints (least outstanding)', async () => {
    const fleet = new Fleet([a.address, b.address]);
    try {
      const outcomes = await Promise.all(Array.from({ length: 8 }, (_, i) => fleet.evaluate(batch(8, { condition: { classLabel: i % 10 } }))));
      assert.equal(new Set(outcomes.map((o) => o.serverId)).size, 2);
    } finally {
      fleet.close();
    }
  });

  it('fails a bad candidate alone and a bad request as non-retryable', async () => {
    const fleet = new Fleet([a.address]);
    try {
      const request = batch(3);
      request.candidates[1].lineage.ops = [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0, solver: 'heun', steps: 0 } }];
      const outcome = await fleet.evaluate(request);
      assert.equal(outcome.outcomes[1].error?.code, 'INVALID_ARGUMENT');
      assert.match(outcome.outcomes[1].error!.message, /candidates\[1\]\.lineage\.ops\[0\]\.solve\.steps/);
      assert.ok(!outcome.outcomes[0].error && !outcome.outcomes[2].error);

      await assert.rejects(fleet.evaluate(batch(2, { verifiers: ['clip'] })), (error: FleetError) => {
        assert.equal(error.code, 'INVALID_ARGUMENT');
        assert.equal(error.retryable, false);
        assert.match(error.message, /verifiers\[0\].*clip/);
        return true;
      });
      await assert.rejects(fleet.evaluate(batch(2, { model: 'sdxl' })), (error: FleetError) => error.code === 'NOT_FOUND' && !error.retryable);
    } finally {
      fleet.close();
    }
  });

  it("gives a call a deadline that grows with its batch's NFEs", async () => {
    const slow = await withFaultyServer({ seed: 0, rules: [{ latency_ms: 1500 }] });
    const flat = new Fleet([slow.address], { callDeadlineMs: 300, msPerNfe: 0 });
    const scaled = new Fleet([slow.address], { callDeadlineMs: 300, msPerNfe: 100 });
    try {
      // One candidate, Heun 10 steps to 0: 19 NFEs, so 300 + 19 * 100 = 2,200 ms against 1,500 ms of latency.
      await assert.rejects(flat.evaluate(batch(1)), (error: FleetError) => error.code === 'DEADLINE_EXCEEDED' && error.retryable);
      const outcome = await scaled.evaluate(batch(1));
      assert.ok(Number.isFinite(outcome.outcomes[0].scores['gmm-classifier']));
    } finally {
      flat.close();
      scaled.close();
      await stopServer(slow);
    }
  });

  it('reports a fleet with nothing serving as retryable', async () => {
    const fleet = new Fleet([deadAddress], { probeDeadlineMs: 300 });
    try {
      await assert.rejects(fleet.evaluate(batch(1)), (error: FleetError) => error.code === 'UNAVAILABLE' && error.retryable);
    } finally {
      fleet.close();
    }
  });
});
