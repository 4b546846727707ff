// How every command connects to Temporal: one place for the address and the security a cluster asks for
// (mutual TLS, or an API key as Temporal Cloud takes; docs/security.md). The embedded dev server speaks
// plaintext and needs none of it. Files are read, and bad combinations refused in one line, before any
// connection is tried; no message carries a key or a file's contents.
import { Connection } from '@temporalio/client';
import type { TLSConfig } from '@temporalio/common/lib/internal-non-workflow';
import { NativeConnection } from '@temporalio/worker';
import { grouped, type Flag } from '../cli/flags';
import { diagnoseTls, quietIpServerNameWarning } from '../fleet/tls';
import { readKeyPair, readPem } from '../pem';

/** A bad Temporal connection flag: the CLI says it in one line and exits 2. */
export class TemporalOptionsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemporalOptionsError';
  }
}

export const TEMPORAL_CONNECTION_FLAGS: readonly Flag[] = grouped('Temporal TLS and API key:', [
  { name: 'temporal-tls-ca', value: 'PEM', file: true, description: "TLS to Temporal, trusting this CA (default $TEMPORAL_TLS_CA; else the system's roots)" },
  { name: 'temporal-tls-cert', value: 'PEM', file: true, description: 'client certificate for mutual TLS to Temporal (default $TEMPORAL_TLS_CERT)' },
  { name: 'temporal-tls-key', value: 'PEM', file: true, description: 'its private key (default $TEMPORAL_TLS_KEY)' },
  { name: 'temporal-tls-server-name', value: 'NAME', description: "the name Temporal's certificate carries, where the address is not it ($TEMPORAL_TLS_SERVER_NAME)" },
  { name: 'temporal-api-key', value: 'KEY', description: 'API key (Temporal Cloud); prefer $TEMPORAL_API_KEY, which process listings do not show. An API key implies TLS, unless --temporal-plaintext' },
  { name: 'temporal-plaintext', description: 'plaintext to Temporal even with an API key' },
]);

export interface TemporalSecurity {
  tls?: TLSConfig | boolean;
  apiKey?: string;
}

/** The security the flags ask for, else the environment Temporal's own CLI reads (TEMPORAL_TLS_*, TEMPORAL_API_KEY). */
export function temporalSecurityFromFlags(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): TemporalSecurity {
  const pick = (flag: string, variable: string) => (values[flag] as string | undefined) ?? (env[variable] || undefined);
  const caFile = pick('temporal-tls-ca', 'TEMPORAL_TLS_CA');
  const certFile = pick('temporal-tls-cert', 'TEMPORAL_TLS_CERT');
  const keyFile = pick('temporal-tls-key', 'TEMPORAL_TLS_KEY');
  const serverName = pick('temporal-tls-server-name', 'TEMPORAL_TLS_SERVER_NAME');
  const apiKey = pick('temporal-api-key', 'TEMPORAL_API_KEY');
  const plaintext = Boolean(values['temporal-plaintext']);
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw new TemporalOptionsError(`${certFile ? '--temporal-tls-cert' : '--temporal-tls-key'}: a client certificate needs its key and the key its certificate; give both`);
  }
  const wantsTls = Boolean(caFile || certFile || serverName);
  if (plaintext && wantsTls) throw new TemporalOptionsError('--temporal-plaintext: drop it, or the --temporal-tls-* flags (TEMPORAL_TLS_* in the environment count too)');
  const security: TemporalSecurity = {};
  if (apiKey) {
    if (/[\r\n]/.test(apiKey)) throw new TemporalOptionsError('--temporal-api-key: the key holds a line break; give it as one line (a file read with a trailing newline?)');
    security.apiKey = apiKey;
  }
  if (plaintext) security.tls = false;
  else if (wantsTls) {
    const tls: TLSConfig = {};
    const refuse = (message: string) => new TemporalOptionsError(message);
    if (caFile) tls.serverRootCACertificate = readPem('--temporal-tls-ca', caFile, refuse);
    if (certFile && keyFile) {
      const { cert, key } = readKeyPair('--temporal-tls-cert', certFile, '--temporal-tls-key', keyFile, refuse);
      tls.clientCertPair = { crt: cert, key };
    }
    if (serverName) tls.serverNameOverride = serverName;
    security.tls = tls;
  }
  return security;
}

/**
 * Why a connection failed, in one line: a refused handshake or credentials are the user's to fix (exit 2),
 * and are told apart from a Temporal that is down or not at that address (the SDK says only that it could
 * not connect before its deadline).
 */
async function explainFailure(address: string, security: TemporalSecurity, error: unknown): Promise<Error> {
  const cause = (error as { cause?: { code?: number; details?: string } })?.cause;
  const message = String((error as Error)?.message ?? error);
  // 16 UNAUTHENTICATED, 7 PERMISSION_DENIED: the frontend answered and refused these credentials.
  if (cause?.code === 16 || cause?.code === 7 || /UNAUTHENTICATED|PERMISSION_DENIED|unauthori[sz]ed/i.test(message)) {
    return new TemporalOptionsError(`Temporal ${address} refused this client (${cause?.details ?? message.split('\n')[0]}); check --temporal-api-key ($TEMPORAL_API_KEY) or the client certificate`);
  }
  const tls = typeof security.tls === 'object' ? security.tls : undefined;
  const speaksTls = security.tls === true || tls !== undefined || (security.apiKey !== undefined && security.tls !== false);
  const pair = tls?.clientCertPair;
  const reason = await diagnoseTls(
    address,
    speaksTls ? { ca: tls?.serverRootCACertificate as Buffer | undefined, cert: pair?.crt as Buffer | undefined, key: pair?.key as Buffer | undefined } : undefined,
    { flags: '--temporal-tls', serverName: tls?.serverNameOverride },
  );
  if (reason) return new TemporalOptionsError(`Temporal ${address}: TLS handshake failed: ${reason} (docs/security.md)`);
  return new Error(`Temporal ${address}: ${message.split('\n')[0]}; is Temporal's frontend running at this address?`);
}

/** A client connection (starting, querying, signalling workflows). */
export async function connectTemporal(address: string | undefined, security: TemporalSecurity = {}): Promise<Connection> {
  if (security.tls || security.apiKey) quietIpServerNameWarning();
  try {
    // gRPC backs off reconnecting up to 2 minutes by default: a Temporal back after an outage would go
    // unnoticed that long by a command waiting on it.
    return await Connection.connect({ address, ...security, channelArgs: { 'grpc.initial_reconnect_backoff_ms': 500, 'grpc.max_reconnect_backoff_ms': 5_000 } });
  } catch (error) {
    throw address ? await explainFailure(address, security, error) : error;
  }
}

/** A worker's connection. */
export async function connectTemporalWorker(address: string | undefined, security: TemporalSecurity = {}): Promise<NativeConnection> {
  try {
    return await NativeConnection.connect({ address, ...security });
  } catch (error) {
    throw address ? await explainFailure(address, security, error) : error;
  }
}
