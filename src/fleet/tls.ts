// TLS between the orchestrator and its model servers (docs/security.md): every channel to every endpoint
// (denoiser, verifier, health; fixed or DNS-resolved) is made with the same credentials. Files are read
// once, when a command starts; a file that cannot be read or a key that is not the certificate's is refused
// there in one line, and no message ever carries a file's contents.
import { isIP } from 'node:net';
import { connect, createSecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { grouped, type Flag } from '../cli/flags';
import { readKeyPair, readPem } from '../pem';
import { FleetError } from './errors';

export interface FleetTls {
  /** CA certificates that sign the servers' certificates (PEM); absent: the system's roots. */
  ca?: Buffer;
  /** This client's certificate and key (PEM), for servers that require mutual TLS. */
  cert?: Buffer;
  key?: Buffer;
}

export const FLEET_TLS_FLAGS: readonly Flag[] = grouped('Model server TLS:', [
  { name: 'tls-ca', value: 'PEM', file: true, description: 'talk TLS to the model servers, trusting this CA (default $NOISESEARCH_TLS_CA)' },
  { name: 'tls-cert', value: 'PEM', file: true, description: "this client's certificate, for servers that require mutual TLS (default $NOISESEARCH_TLS_CERT)" },
  { name: 'tls-key', value: 'PEM', file: true, description: 'its private key (default $NOISESEARCH_TLS_KEY)' },
]);

function refuse(message: string): FleetError {
  return new FleetError('INVALID_ARGUMENT', message, false);
}

/**
 * The fleet's TLS from the flags, else NOISESEARCH_TLS_CA/CERT/KEY (how Kubernetes hands secrets over);
 * undefined when none is set: plaintext, as the embedded model server speaks.
 */
export function fleetTlsFromFlags(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): FleetTls | undefined {
  const pick = (flag: string, variable: string) => (values[flag] as string | undefined) ?? (env[variable] || undefined);
  const caFile = pick('tls-ca', 'NOISESEARCH_TLS_CA');
  const certFile = pick('tls-cert', 'NOISESEARCH_TLS_CERT');
  const keyFile = pick('tls-key', 'NOISESEARCH_TLS_KEY');
  if (!caFile && !certFile && !keyFile) return undefined;
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw refuse(`${certFile ? '--tls-cert' : '--tls-key'}: a client certificate needs its key and the key its certificate; give both --tls-cert and --tls-key`);
  }
  const tls: FleetTls = {};
  if (caFile) {
    tls.ca = readPem('--tls-ca', caFile, refuse);
    try {
      createSecureContext({ ca: tls.ca });
    } catch {
      throw refuse(`--tls-ca ${caFile}: not a PEM CA certificate`);
    }
  }
  if (certFile && keyFile) {
    const pair = readKeyPair('--tls-cert', certFile, '--tls-key', keyFile, refuse);
    tls.cert = pair.cert;
    tls.key = pair.key;
  }
  return tls;
}

let ipServerNameQuiet = false;

/**
 * grpc-js hands Node's TLS the target's host as the server name, an IP address for most fleets; Node
 * deprecates that (DEP0123: RFC 6066 has no IPs in SNI) with a two-line warning on stderr, which would break
 * the CLI's one-line output. The certificate is still verified against the IP. Only that warning is dropped.
 */
export function quietIpServerNameWarning(): void {
  if (ipServerNameQuiet) return;
  ipServerNameQuiet = true;
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
    if (code !== 'DEP0123') emit(warning, ...rest);
  }) as typeof process.emitWarning;
}

/** Credentials for every channel to a model server: plaintext without TLS. */
export function channelCredentials(tls: FleetTls | undefined): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  quietIpServerNameWarning();
  return grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

/** How long the handshake diagnosis waits for the server's verdict on this client's certificate. */
const DIAGNOSIS_MS = 2_000;

/**
 * Why TLS to `address` fails, or null when TLS is not the problem (the server is down, or the handshake
 * works). gRPC only says "Failed to connect" when a server drops the connection for want of a client
 * certificate, or when TLS meets plaintext, so after a failed probe the fleet shakes hands itself, with the
 * same credentials, to tell a configuration error (which no retry mends) from a server that is down.
 */
export function diagnoseTls(address: string, tls: FleetTls | undefined, naming: { flags?: string; serverName?: string } = {}): Promise<string | null> {
  const flags = naming.flags ?? '--tls';
  const match = /^\[?(.*?)\]?:(\d+)$/.exec(address);
  if (!match) return Promise.resolve(null);
  const [, host, port] = match;
  return new Promise((resolve) => {
    let settled = false;
    const done = (reason: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(reason);
    };
    const socket = connect({
      host,
      port: Number(port),
      ...(naming.serverName ? { servername: naming.serverName } : isIP(host) ? {} : { servername: host }),
      ALPNProtocols: ['h2'],
      ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key } : { rejectUnauthorized: false }),
    });
    const timer = setTimeout(() => done(null), DIAGNOSIS_MS);
    let secured = false;
    socket.once('secureConnect', () => {
      secured = true;
      // A plaintext fleet whose server answered a TLS handshake: the server wants TLS.
      if (!tls) done(`the server speaks TLS and this client plaintext; give ${flags}-ca (and ${flags}-cert/${flags}-key where it requires mutual TLS)`);
    });
    // The server's HTTP/2 settings: it took this client, so TLS is not why calls fail.
    socket.once('data', () => done(null));
    socket.once('error', (error: NodeJS.ErrnoException) => {
      if (tls && error.code === 'ERR_SSL_WRONG_VERSION_NUMBER') done(`the server speaks plaintext and this client TLS; start it with TLS, or give this client no ${flags}-*`);
      // A server that sends an alert for a missing or untrusted client certificate (Node's, Go's do).
      else if (tls && /alert certificate required/.test(error.message)) done(`the server requires a client certificate (mutual TLS); give ${flags}-cert and ${flags}-key`);
      else if (tls && /alert (unknown ca|bad certificate|certificate unknown|decrypt error)/.test(error.message)) done(`the server refused this client's certificate (${flags}-cert): it is not signed by a CA the server trusts`);
      else if (!tls || /ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ENOTFOUND|EAI_AGAIN/.test(error.code ?? '')) done(null);
      else done(`the server's certificate was not accepted (${error.message.split('\n')[0]}); check that ${flags}-ca signed it and that it names ${naming.serverName ?? host}`);
    });
    // A server that requires client certificates checks this one after the handshake, and refuses it by
    // closing before its HTTP/2 settings (gRPC's server sends no alert that Node reports).
    socket.once('close', () => {
      if (!secured || !tls) done(null);
      else if (!tls.cert) done(`the server requires a client certificate (mutual TLS); give ${flags}-cert and ${flags}-key`);
      else done(`the server refused this client's certificate (${flags}-cert): it is not signed by a CA the server trusts`);
    });
  });
}
