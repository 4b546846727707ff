// A TLS front for the Temporal dev server (which speaks only plaintext), standing in for a cluster or
// Temporal Cloud in tests: node:http2 terminates TLS (ALPN h2; client certificates required when a CA is
// given), checks `authorization: Bearer KEY` on every call when an API key is set, and forwards each gRPC
// stream, headers, messages and trailers, to the dev server. It parses no gRPC message: it sees what a
// cluster's front door sees.
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';

export interface TemporalProxyOptions {
  upstream: string;
  cert: Buffer;
  key: Buffer;
  /** Require client certificates signed by this CA (mutual TLS). */
  ca?: Buffer;
  /** Require this API key, as a bearer token, on every call. */
  apiKey?: string;
}

export interface TemporalProxy {
  address: string;
  /** Calls let through, and calls refused for a missing or wrong API key. */
  counts: { forwarded: number; refused: number };
  /** Every authorization header value seen (to check what a client sent). */
  authorizations: Set<string>;
  stop(): Promise<void>;
}

const HOP_HEADERS = new Set([':method', ':path', ':scheme', ':authority', ':status', 'connection', 'host']);

function forwardable(headers: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_HEADERS.has(name)));
}

export async function startTemporalProxy(options: TemporalProxyOptions): Promise<TemporalProxy> {
  const upstream = http2.connect(`http://${options.upstream}`);
  upstream.on('error', () => {});
  const counts = { forwarded: 0, refused: 0 };
  const authorizations = new Set<string>();
  const server = http2.createSecureServer({
    cert: options.cert,
    key: options.key,
    ...(options.ca ? { ca: options.ca, requestCert: true, rejectUnauthorized: true } : {}),
  });
  server.on('sessionError', () => {});
  const sockets = new Set<import('node:tls').TLSSocket>();
  server.on('secureConnection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const authorization = headers.authorization;
    if (authorization) authorizations.add(String(authorization));
    if (options.apiKey !== undefined && authorization !== `Bearer ${options.apiKey}`) {
      counts.refused++;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '16', 'grpc-message': 'missing or wrong API key' }, { endStream: true });
      return;
    }
    counts.forwarded++;
    const call = upstream.request({ ':method': 'POST', ':path': headers[':path'], ...forwardable(headers) });
    call.on('error', () => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
    stream.on('close', () => call.close());
    let trailers: http2.OutgoingHttpHeaders = {};
    call.on('trailers', (received) => (trailers = forwardable(received)));
    call.on('response', (received) => {
      const response = { ':status': received[':status'], ...forwardable(received) };
      // A trailers-only answer (an error status at once) carries its status in these headers.
      if (received['grpc-status'] !== undefined) {
        stream.respond(response, { endStream: true });
        return;
      }
      stream.respond(response, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers(trailers));
      call.pipe(stream);
    });
    stream.pipe(call);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    authorizations,
    async stop() {
      upstream.destroy();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Sessions of clients still connected (workers' long polls) would hold close() open.
        for (const socket of sockets) socket.destroy();
      });
    },
  };
}
