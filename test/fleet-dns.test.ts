// A fleet named by DNS (`--fleet dns:///host:port`, as a Kubernetes headless Service is named): resolved to
// every address, followed as the answer changes, against a real gmm model server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../src/embedded/processes';
import { Fleet, parseFleet } from '../src/fleet/client';
import type { FleetError } from '../src/fleet/errors';
import type { BatchRequest } from '../src/search/types';
import { gmmModelInfo } from './fixtures';
import { stopServer, waitUntil, withModelServer } from './helpers';

const SIGMA_MAX = gmmModelInfo().sigmaMax;

/** One Heun solve of 10 steps to 0 per candidate: 19 logical NFEs each, by the solver's count. */
function batch(size: number): BatchRequest {
  return {
    model: 'gmm',
    condition: { classLabel: 1 },
    verifiers: ['gmm-oracle'],
    candidates: Array.from({ length: size }, (_, i) => ({
      id: `c${i}`,
      lineage: { noise: { seed: 7 + i, perturbations: [] }, ops: [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0, solver: 'heun' as const, steps: 10 } }] },
      scoreXpred: false,
    })),
  };
}

function dnsError(code: string): Error {
  return Object.assign(new Error(`queryA ${code} models.test`), { code });
}

describe('fleet targets', () => {
  it('takes dns:///host:port beside host:port and refuses other DNS forms in one line', () => {
    assert.deepEqual(parseFleet('dns:///noisesearch-models.ns.svc.cluster.local:50151, 10.0.0.1:50151'), ['dns:///noisesearch-models.ns.svc.cluster.local:50151', '10.0.0.1:50151']);
    for (const bad of ['dns:///models', 'dns://8.8.8.8/models:50151', 'dns:models:50151']) {
      assert.throws(() => parseFleet(bad), (error: FleetError) => error.code === 'INVALID_ARGUMENT' && error.message === `fleet: "${bad}" is not a dns:///host:port target (e.g. dns:///noisesearch-models.default.svc.cluster.local:50151)`);
    }
  });
});

describe('a fleet resolved from DNS', () => {
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let port: number;

  before(async () => {
    port = await freePort();
    // On every loopback address (127.0.0.0/8), so that a resolver answering 127.0.0.1 and 127.0.0.2 names
    // two endpoints on the same port, as a headless Service names its pods.
    server = await withModelServer(['--host', '0.0.0.0', '--allow-fault-injection', '--faults', JSON.stringify({ seed: 0, rules: [{ match: { id: '^slow' }, latency_ms: 1500 }] })], port);
  });
  after(async () => {
    await stopServer(server);
  });

  it('resolves localhost through the system resolver and serves Describe and Evaluate through it', async () => {
    const fleet = new Fleet([`dns:///localhost:${port}`]);
    try {
      const model = await fleet.describe('gmm');
      assert.deepEqual({ ...model, maxBatch: 64 }, gmmModelInfo());
      // /etc/hosts maps localhost to 127.0.0.1 (and maybe ::1, where nothing listens: that endpoint is simply not serving).
      assert.ok(fleet.addresses.includes(`127.0.0.1:${port}`), `fleet addresses: ${fleet.addresses.join(', ')}`);
      const outcome = await fleet.evaluate(batch(3));
      assert.deepEqual(outcome.outcomes.map((o) => o.nfeLogical), [19, 19, 19]);
      assert.ok(outcome.outcomes.every((o) => Number.isFinite(o.scores['gmm-oracle'])));
    } finally {
      fleet.close();
    }
  });

  it('adds and removes endpoints as the answer changes, without dropping a call in flight', async () => {
    let answer: string[] | Error = [];
    const resolver = async () => {
      if (answer instanceof Error) throw answer;
      return answer;
    };
    const fleet = new Fleet([`dns:///models.test:${port}`], { resolver, resolveEveryMs: 50, probeDeadlineMs: 1_000 });
    const follows = (addresses: string[]) => waitUntil(`the fleet to be [${addresses.join(', ')}]`, async () => fleet.addresses.join() === addresses.join(), 5_000, 20);
    try {
      // No pod ready yet: the fleet is empty, and a call is told to wait (retryable), not that the model is missing.
      await assert.rejects(fleet.evaluate(batch(1)), (error: FleetError) => error.code === 'UNAVAILABLE' && error.retryable && error.message.includes(`dns:///models.test:${port}`));

      answer = ['127.0.0.1'];
      await follows([`127.0.0.1:${port}`]);
      answer = ['127.0.0.1', '127.0.0.2'];
      await follows([`127.0.0.1:${port}`, `127.0.0.2:${port}`]);
      assert.equal((await fleet.evaluate(batch(2))).outcomes.length, 2);

      // A slow call goes to 127.0.0.1 alone; while it runs, 127.0.0.1 leaves DNS. The call still completes.
      answer = ['127.0.0.1'];
      await follows([`127.0.0.1:${port}`]);
      const slow = batch(1);
      slow.candidates[0].id = 'slow-0';
      const inFlight = fleet.evaluate(slow);
      await new Promise((resolve) => setTimeout(resolve, 200));
      answer = ['127.0.0.2'];
      await follows([`127.0.0.2:${port}`]);
      const slowOutcome = await inFlight;
      assert.deepEqual(slowOutcome.outcomes.map((o) => [o.id, o.nfeLogical, o.error]), [['slow-0', 19, undefined]]);
      assert.equal((await fleet.evaluate(batch(1))).outcomes.length, 1, 'new calls go to the endpoint that remains');

      // A DNS failure that is not "no such name" keeps the last answer; NXDOMAIN (no ready pod) empties the fleet.
      answer = dnsError('ESERVFAIL');
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(fleet.addresses, [`127.0.0.2:${port}`]);
      answer = dnsError('ENOTFOUND');
      await follows([]);
      await assert.rejects(fleet.evaluate(batch(1)), (error: FleetError) => error.code === 'UNAVAILABLE' && error.retryable);
    } finally {
      fleet.close();
    }
  });
});
