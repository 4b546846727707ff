// `noisesearch dashboard`: serves the live page for operators until SIGINT or SIGTERM.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readyEmbeddedModelServer, serviceStatus } from '../embedded/services';
import { parseFleet } from '../fleet/client';
import { FLEET_TLS_FLAGS, fleetTlsFromFlags } from '../fleet/tls';
import { TEMPORAL_CONNECTION_FLAGS } from '../temporal/connection';
import { DEFAULT_NAMESPACE } from '../temporal/constants';
import { UsageError } from '../cli/args';
import { temporalFlags, type Flag, type FlagValues } from '../cli/flags';
import { connectClient } from '../cli/control';
import { startDashboard } from './server';

const USAGE = 'noisesearch dashboard [--address HOST:PORT] [--temporal ADDR] [--namespace NS] [--temporal-ui URL] [--fleet LIST|FILE] [--prometheus URL] [--allow-actions [--action-token-file FILE]] [--poll-ms MS]';
export const DASHBOARD_HELP = `Serves a live web page for operators: running and recent searches and campaigns (Temporal visibility and
their progress queries), each search's best score against NFEs, campaign progress and ETA, and the fleet; with
--prometheus, each endpoint's requests/s, latency percentiles, in-flight and queued calls, each verifier's
latency, and the NFE burn rate. See docs/dashboard.md.`;

export const DASHBOARD_FLAGS: readonly Flag[] = [
  { name: 'address', value: 'HOST:PORT', description: 'where to serve the page (default 127.0.0.1:8080; port 0 picks a free one)' },
  ...temporalFlags('the embedded dev server if running', DEFAULT_NAMESPACE),
  { name: 'temporal-ui', value: 'URL', description: "the Temporal UI, for links to each workflow (default: the embedded dev server's UI)" },
  { name: 'fleet', value: 'LIST|FILE', file: true, description: 'model servers to show (default: the embedded model server if running)' },
  { name: 'prometheus', value: 'URL', description: 'Prometheus scraping the workers (e.g. http://127.0.0.1:9090), for rates and latencies' },
  { name: 'allow-actions', description: "let the page stop, re-budget and cancel searches and campaigns (refused otherwise), with a token: from --action-token-file, else $NOISESEARCH_DASHBOARD_TOKEN, else a random one, printed once on stderr as the page's URL ending in #token=..." },
  { name: 'action-token-file', value: 'FILE', file: true, description: 'the actions token (at least 16 characters; surrounding whitespace ignored)' },
  { name: 'poll-ms', value: 'MS', description: 'how often the page asks for new state (default 2000)' },
  ...FLEET_TLS_FLAGS,
  ...TEMPORAL_CONNECTION_FLAGS,
];

/** HOST:PORT, with [v6] hosts; the port may be 0 (any free port). */
export function parseAddress(value: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[\w.-]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (!match || port > 65535) throw new UsageError(`--address: "${value}" is not HOST:PORT (e.g. 127.0.0.1:8080)`);
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

function parseHttpUrl(flag: string, value: string, example: string): string {
  try {
    const url = new URL(value);
    if (url.protocol === 'http:' || url.protocol === 'https:') return value.replace(/\/$/, '');
  } catch {
    // Falls through to the one message below.
  }
  throw new UsageError(`--${flag}: "${value}" is not an http(s) URL (e.g. ${example})`);
}

const MIN_TOKEN_LENGTH = 16;

/** The actions token: a file's, the environment's, or a fresh random one (`generated`) with --allow-actions. */
function actionTokenFrom(values: Record<string, unknown>, allowActions: boolean): { token?: string; generated: boolean } {
  const file = values['action-token-file'] as string | undefined;
  if (file !== undefined && !allowActions) throw new UsageError('--action-token-file: goes with --allow-actions (without it the page only watches)');
  if (!allowActions) return { generated: false };
  let token = process.env.NOISESEARCH_DASHBOARD_TOKEN || undefined;
  let source = '$NOISESEARCH_DASHBOARD_TOKEN';
  if (file !== undefined) {
    source = `--action-token-file ${file}`;
    try {
      token = readFileSync(file, 'utf8').trim();
    } catch (error) {
      throw new UsageError(`${source}: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
  }
  if (token === undefined) return { token: randomBytes(24).toString('base64url'), generated: true };
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) throw new UsageError(`${source}: the token must be at least ${MIN_TOKEN_LENGTH} characters with no whitespace (e.g. openssl rand -hex 24)`);
  return { token, generated: false };
}

export async function dashboardCommand(values: FlagValues, positionals: string[]): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`dashboard takes no arguments ("${positionals.join(' ')}"); usage: ${USAGE}`);
  const { host, port } = parseAddress((values.address as string | undefined) ?? '127.0.0.1:8080');
  let temporalUi = values['temporal-ui'] !== undefined ? parseHttpUrl('temporal-ui', values['temporal-ui'] as string, 'http://127.0.0.1:8233') : undefined;
  const prometheus = values.prometheus !== undefined ? parseHttpUrl('prometheus', values.prometheus as string, 'http://127.0.0.1:9090') : undefined;
  const pollMs = values['poll-ms'] !== undefined ? Number(values['poll-ms']) : 2_000;
  if (!Number.isFinite(pollMs) || pollMs < 100) throw new UsageError(`--poll-ms: "${values['poll-ms']}" is not a number of milliseconds of at least 100`);
  const fleet = values.fleet !== undefined ? parseFleet(values.fleet as string) : [await readyEmbeddedModelServer()].filter((a): a is string => a !== undefined);
  const fleetTls = values.fleet !== undefined ? fleetTlsFromFlags(values) : undefined;
  const usesEmbedded = values.temporal === undefined && !process.env.TEMPORAL_ADDRESS;
  if (temporalUi === undefined && usesEmbedded) temporalUi = (await serviceStatus()).find((s) => s.name === 'temporal')?.uiUrl;
  const allowActions = Boolean(values['allow-actions']);
  const { token: actionToken, generated } = actionTokenFrom(values, allowActions);
  const client = await connectClient(values);
  const namespace = (values.namespace as string | undefined) ?? DEFAULT_NAMESPACE;
  let dashboard;
  try {
    dashboard = await startDashboard({ client, namespace, fleet, fleetTls, temporalUi, prometheus, allowActions, actionToken, host, port, pollMs });
  } catch (error) {
    await client.connection.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES') throw new UsageError(`--address ${host}:${port}: cannot listen there (${code})`);
    throw error;
  }
  // The only time the token is shown: in the URL's fragment, which the browser never sends to the server.
  if (generated) process.stderr.write(`dashboard actions: open ${dashboard.url}#token=${actionToken} (this token is not shown again)\n`);
  process.stdout.write(`dashboard ${dashboard.url} (namespace ${namespace}, actions ${allowActions ? 'enabled' : 'disabled'}${prometheus ? `, metrics from ${prometheus}` : ''})\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await dashboard.close();
  await client.connection.close();
  return 0;
}
