// A TCP proxy in front of a model server, for the fault campaign: workers reach the server only through
// it, so a partition, a reset storm or a slow link is a mode switched here, and a server restarted on the
// same port is invisible to the addresses the workers were given.
import * as net from 'node:net';

export type ProxyMode =
  /** Bytes flow both ways as they come. */
  | { kind: 'pass' }
  /**
   * A partition: new connections are accepted and held, nothing is forwarded either way, and open
   * connections stall (their bytes wait, as packets on a cut link would be retransmitted) until the mode
   * changes.
   */
  | { kind: 'blackhole' }
  /** Every open connection and every new one is reset (TCP RST), as by a dropped route or a firewall. */
  | { kind: 'reset' }
  /** Every chunk, either way, is delivered `ms` later than it arrived, in order. */
  | { kind: 'latency'; ms: number };

/** One direction of a proxied connection: chunks leave in order, none before its due time. */
class Pipe {
  private queue: { chunk: Buffer; due: number }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private lastDue = 0;
  private drained: (() => void)[] = [];

  constructor(private readonly to: net.Socket, private readonly proxy: FaultProxy) {}

  push(chunk: Buffer): void {
    const mode = this.proxy.mode;
    // A lowered latency must not overtake chunks already waiting under the higher one.
    const due = Math.max(Date.now() + (mode.kind === 'latency' ? mode.ms : 0), this.lastDue);
    this.lastDue = due;
    this.queue.push({ chunk, due });
    this.flush();
  }

  flush(): void {
    if (this.timer || this.proxy.mode.kind === 'blackhole') return;
    while (this.queue.length > 0) {
      const wait = this.queue[0].due - Date.now();
      if (wait > 0) {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.flush();
        }, wait);
        return;
      }
      if (!this.to.destroyed) this.to.write(this.queue.shift()!.chunk);
      else this.queue.shift();
    }
    for (const done of this.drained.splice(0)) done();
  }

  /** Runs `done` once every chunk pushed so far has been delivered. */
  afterDelivered(done: () => void): void {
    this.drained.push(done);
    this.flush();
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.queue = [];
  }
}

interface Connection {
  client: net.Socket;
  upstream: net.Socket | null;
  pipes: Pipe[];
}

export class FaultProxy {
  mode: ProxyMode = { kind: 'pass' };
  private readonly connections = new Set<Connection>();

  private constructor(private readonly server: net.Server, readonly port: number, private readonly target: { host: string; port: number }) {}

  /** A proxy on 127.0.0.1:`listenPort` (0: a free one) forwarding to `target` (host:port). */
  static async start(target: string, listenPort = 0): Promise<FaultProxy> {
    const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
    let proxy: FaultProxy | null = null;
    const server = net.createServer((client) => proxy!.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listenPort, '127.0.0.1', () => resolve());
    });
    proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, { host, port });
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  setMode(mode: ProxyMode): void {
    this.mode = mode;
    if (mode.kind === 'reset') for (const connection of [...this.connections]) this.drop(connection, true);
    for (const connection of this.connections) {
      // Held connections of a partition that healed reach the server now.
      if (mode.kind !== 'blackhole' && !connection.upstream) this.connect(connection);
      for (const socket of [connection.client, connection.upstream]) {
        if (!socket) continue;
        if (mode.kind === 'blackhole') socket.pause();
        else socket.resume();
      }
      for (const pipe of connection.pipes) pipe.flush();
    }
  }

  /** Open client connections (held ones included). */
  get connectionCount(): number {
    return this.connections.size;
  }

  async close(): Promise<void> {
    for (const connection of [...this.connections]) this.drop(connection, false);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.mode.kind === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const connection: Connection = { client, upstream: null, pipes: [] };
    this.connections.add(connection);
    client.on('error', () => this.drop(connection, false));
    client.on('close', () => this.drop(connection, false));
    if (this.mode.kind === 'blackhole') client.pause();
    else this.connect(connection);
  }

  private connect(connection: Connection): void {
    const { client } = connection;
    const upstream = net.connect(this.target.port, this.target.host);
    connection.upstream = upstream;
    const toUpstream = new Pipe(upstream, this);
    const toClient = new Pipe(client, this);
    connection.pipes = [toUpstream, toClient];
    client.on('data', (chunk: Buffer) => toUpstream.push(chunk));
    upstream.on('data', (chunk: Buffer) => toClient.push(chunk));
    // A server that is down or crashed looks to the client as it would without the proxy: a reset. One
    // that closes the connection closes it to the client too, once the bytes it sent before are delivered.
    upstream.on('error', () => this.drop(connection, true));
    upstream.on('close', () => toClient.afterDelivered(() => this.drop(connection, false)));
    client.resume();
  }

  private drop(connection: Connection, reset: boolean): void {
    if (!this.connections.delete(connection)) return;
    for (const pipe of connection.pipes) pipe.clear();
    const { client } = connection;
    // An RST on a socket whose side already shut down spins libuv at 100% CPU (seen on Node 20): a
    // connection closing anyway is just destroyed.
    if (reset && !client.destroyed && !client.writableEnded && !client.readableEnded) client.resetAndDestroy();
    else client.destroy();
    connection.upstream?.destroy();
  }
}
