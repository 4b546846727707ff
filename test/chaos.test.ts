// The fault campaign (src/chaos): its proxy against a real echo server, its schedule, and a short
// campaign under every kind of fault that must end bit-identical to its fault-free reference.
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { chaosRun, reliabilityTable } from '../src/chaos/main';
import { FaultProxy } from '../src/chaos/proxy';
import { FAULT_KINDS, faultSchedule } from '../src/chaos/schedule';

/** An echo server: what a client sends comes back unchanged. */
async function echoServer(): Promise<{ address: string; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A client of the proxy that records what came back, when, and how the connection ended. */
async function dial(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  const received: { text: string; at: number }[] = [];
  let ended: string | null = null;
  socket.on('data', (d: Buffer) => received.push({ text: d.toString(), at: Date.now() }));
  socket.on('error', (error: NodeJS.ErrnoException) => (ended = error.code ?? error.message));
  socket.on('close', () => (ended ??= 'closed'));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  return { socket, received, text: () => received.map((r) => r.text).join(''), ended: () => ended };
}

/**
 * Searches run at once: few enough that the faulted campaign outlasts its nine faults (the time a
 * campaign takes here is set by its searches' rounds through Temporal more than by their NFEs). On an
 * idle 2-core machine 48 searches took 33 s clean and ended after 7 of the 9 faults; 96 at pace 0.4 give
 * the faults (about 20 s of them, and their recoveries) twice the time they need.
 */
const CAMPAIGN_CONCURRENCY = 2;
const SEARCHES = 96;
const PACE = 0.4;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until<T>(what: string, probe: () => T | null | undefined | false, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

describe('the fault proxy, in front of a real echo server', () => {
  let echo: Awaited<ReturnType<typeof echoServer>>;
  let proxy: FaultProxy;
  before(async () => {
    echo = await echoServer();
    proxy = await FaultProxy.start(echo.address);
  });
  after(async () => {
    await proxy?.close();
    await echo?.close();
  });

  it('passes bytes both ways unchanged', async () => {
    proxy.setMode({ kind: 'pass' });
    const c = await dial(proxy.port);
    c.socket.write('hello, ');
    c.socket.write('server');
    assert.equal(await until('the echo', () => c.text() === 'hello, server' && c.text()), 'hello, server');
    c.socket.destroy();
  });

  it('delays each chunk by the latency each way: an echo comes back after twice that, in order', async () => {
    proxy.setMode({ kind: 'latency', ms: 300 });
    const c = await dial(proxy.port);
    const sent = Date.now();
    c.socket.write('a');
    await sleep(50);
    c.socket.write('b');
    await until('both echoes', () => c.text() === 'ab');
    // 300 ms to the server, 300 ms back: the first byte returns after >= 600 ms (timers may fire a
    // millisecond early, hence 595), the second 50 ms later; a proxy that delayed only one way, or not at all, fails.
    const first = c.received[0].at - sent;
    assert.ok(first >= 595 && first < 1_500, `first echo after ${first} ms`);
    assert.ok(c.received[c.received.length - 1].at - sent >= 645, 'the second chunk was delayed as much');
    proxy.setMode({ kind: 'pass' });
    c.socket.destroy();
  });

  it('blackholes: a new connection is accepted but hears nothing, an open one stalls, and both resume when it heals', async () => {
    proxy.setMode({ kind: 'pass' });
    const open = await dial(proxy.port);
    open.socket.write('1');
    await until('the first echo', () => open.text() === '1');
    proxy.setMode({ kind: 'blackhole' });
    const held = await dial(proxy.port);
    held.socket.write('x');
    open.socket.write('2');
    await sleep(500);
    assert.equal(held.text(), '', 'nothing reaches the server while partitioned');
    assert.equal(open.text(), '1', 'an open connection stalls');
    assert.equal(held.ended(), null, 'the connection is held, not refused');
    assert.equal(open.ended(), null);
    proxy.setMode({ kind: 'pass' });
    await until('the held echo', () => held.text() === 'x');
    await until('the stalled echo', () => open.text() === '12');
    held.socket.destroy();
    open.socket.destroy();
  });

  it('resets open connections and every new one while in reset mode, and serves again after', async () => {
    proxy.setMode({ kind: 'pass' });
    const open = await dial(proxy.port);
    proxy.setMode({ kind: 'reset' });
    assert.equal(await until('the reset', () => open.ended()), 'ECONNRESET');
    const refused = await dial(proxy.port).then(
      (c) => until('the reset of a new connection', () => c.ended()),
      (error: NodeJS.ErrnoException) => error.code,
    );
    assert.equal(refused, 'ECONNRESET');
    proxy.setMode({ kind: 'pass' });
    const again = await dial(proxy.port);
    again.socket.write('back');
    await until('the echo after the resets', () => again.text() === 'back');
    again.socket.destroy();
  });

  it('resets the client when the server behind it is down, as a refused connection would', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const orphan = await FaultProxy.start(`127.0.0.1:${port}`);
    try {
      const c = await dial(orphan.port);
      assert.equal(await until('the reset', () => c.ended()), 'ECONNRESET');
      assert.equal(orphan.connectionCount, 0);
    } finally {
      await orphan.close();
    }
  });
});

describe('the fault schedule', () => {
  it('is the same for the same seed, and another seed orders it otherwise', () => {
    assert.deepEqual(faultSchedule({ seed: 5, repeats: 2, workers: 3 }), faultSchedule({ seed: 5, repeats: 2, workers: 3 }));
    const kinds = (seed: number) => faultSchedule({ seed, repeats: 2, workers: 3 }).map((e) => e.kind).join(',');
    assert.notEqual(kinds(5), kinds(6));
  });

  it('has every kind `repeats` times and one lost server in the last third, after which server faults hit the survivor', () => {
    for (const seed of [0, 1, 2, 3, 11, 12345]) {
      const schedule = faultSchedule({ seed, repeats: 2, workers: 3 });
      // 8 kinds twice, and lose-server once: 17 events.
      assert.equal(schedule.length, 17);
      for (const kind of FAULT_KINDS) assert.equal(schedule.filter((e) => e.kind === kind).length, kind === 'lose-server' ? 1 : 2, `${kind} (seed ${seed})`);
      const lostAt = schedule.findIndex((e) => e.kind === 'lose-server');
      // Inserted among the 16 others at a position from ceil(16 * 2 / 3) = 11 on.
      assert.ok(lostAt >= 11, `lose-server at ${lostAt} (seed ${seed})`);
      const survivor = 1 - schedule[lostAt].target;
      for (const event of schedule.slice(lostAt + 1)) {
        if (['kill-server', 'partition', 'reset', 'slow-server', 'server-errors'].includes(event.kind)) assert.equal(event.target, survivor, `${event.kind} after the loss (seed ${seed})`);
      }
      for (const event of schedule) {
        if (event.kind === 'kill-worker') assert.ok(event.target >= 0 && event.target < 3);
        if (event.kind === 'slow-server') assert.ok(event.latencyMs! >= 200 && event.latencyMs! <= 800);
        else assert.equal(event.latencyMs, undefined);
        assert.ok(event.gapMs >= 1_000 && event.gapMs <= 3_000);
        assert.ok(event.kind === 'lose-server' ? event.durationMs === 0 : event.durationMs >= 500 && event.durationMs <= 10_000);
      }
    }
  });

  it('at a pace below 1 is the same faults with every duration and gap scaled', () => {
    const full = faultSchedule({ seed: 9, repeats: 1, workers: 2 });
    const brief = faultSchedule({ seed: 9, repeats: 1, workers: 2, pace: 0.5 });
    assert.deepEqual(brief.map((e) => [e.kind, e.target, e.latencyMs]), full.map((e) => [e.kind, e.target, e.latencyMs]));
    assert.deepEqual(brief.map((e) => [e.durationMs, e.gapMs]), full.map((e) => [Math.round(e.durationMs / 2), Math.round(e.gapMs / 2)]));
  });

  it('refuses a schedule with no repeats, no workers or a pace outside (0, 1]', () => {
    assert.throws(() => faultSchedule({ seed: 1, repeats: 1, workers: 1, pace: 0 }), /^Error: pace: got 0; want a number in \(0, 1\]$/);
    assert.throws(() => faultSchedule({ seed: 1, repeats: 0, workers: 2 }), /^Error: repeats: got 0; want a whole number >= 1$/);
    assert.throws(() => faultSchedule({ seed: 1, repeats: 1, workers: 0 }), /^Error: workers: got 0; want a whole number >= 1$/);
  });
});

describe('a campaign under every kind of fault', { timeout: 1_500_000 }, () => {
  it('ends with every search in the store once, done, and bit-identical to its fault-free reference', { timeout: 1_500_000 }, async () => {
    const lines: string[] = [];
    const report = await chaosRun({ searches: SEARCHES, seed: 3, runs: 1, workers: 2, repeats: 1, pace: PACE, budget: 300, concurrency: CAMPAIGN_CONCURRENCY, timeoutMs: 600_000, log: (line) => lines.push(line) });
    const { reference } = report;
    const [{ outcome: faulted, comparison }] = report.runs;
    const context = `${reliabilityTable(report)}\n${lines.join('\n')}\nCLI: ${faulted.cliStderr}`;
    // 4 algorithms x 2 verifier sets x 4 classes x 3 seeds.
    assert.equal(comparison.expected, 96);
    assert.equal(reference.records.filter((r) => r.status === 'done').length, 96, context);
    for (const kind of FAULT_KINDS) assert.ok(faulted.injected.some((f) => f.event.kind === kind), `${kind} was injected\n${context}`);
    for (const fault of faulted.injected) assert.notEqual(fault.recoveryMs, null, `${fault.event.kind} recovered\n${context}`);
    assert.deepEqual(
      { lost: comparison.lost, duplicated: comparison.duplicated, differing: comparison.differing, failed: comparison.failed, running: faulted.running, exits: faulted.unexpectedExits, timedOut: faulted.timedOut, cli: faulted.cliExit },
      { lost: [], duplicated: [], differing: [], failed: [], running: [], exits: [], timedOut: false, cli: 0 },
      context,
    );
  });
});
