// /metrics over plain node:http, on an address the operator gives (`--metrics HOST:PORT` or
// $NOISESEARCH_METRICS): off unless asked for, so a command run by hand opens no port.
import * as http from 'node:http';
import { collectProcessMetrics, registry } from './index';

/** A bad --metrics (or --temporal-metrics) value: the CLI says it in one line and exits 2. */
export class MetricsAddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MetricsAddressError';
  }
}

/**
 * How long a finished command keeps serving for the scrape that carries its last values: a CLI run ends
 * when its work does, and without this its final counts would never reach Prometheus. Only a process that
 * was scraped at least once waits (someone is scraping it), and never longer than this.
 */
const FINAL_SCRAPE_WAIT_MS = 20_000;

export function parseAddress(flag: string, value: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[\w.-]+):(\d{1,5})$/.exec(value.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new MetricsAddressError(`${flag}: "${value}" is not HOST:PORT (e.g. 127.0.0.1:9464, or 0.0.0.0:9464 for every interface)`);
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

export interface MetricsServer {
  /** host:port it listens on (the port the system gave, for port 0). */
  address: string;
  /** Waits for a final scrape (see FINAL_SCRAPE_WAIT_MS), then stops serving. */
  close(options?: { finalScrape?: boolean }): Promise<void>;
}

export async function serveMetrics(flag: string, value: string): Promise<MetricsServer> {
  const { host, port } = parseAddress(flag, value);
  collectProcessMetrics();
  let scrapes = 0;
  // Set while closing: called by a scrape that arrived after the work ended, so it carries the last values.
  let onScrape: (() => void) | null = null;
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET' || (request.url ?? '').split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    const final = onScrape;
    registry.metrics().then(
      (text) => {
        response.writeHead(200, { 'content-type': registry.contentType }).end(text);
        scrapes++;
        final?.();
      },
      (error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(error?.message ?? error)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(new MetricsAddressError(`${flag}: cannot listen on ${value}: ${error.code ?? error.message}`)));
    server.listen(port, host, () => resolve());
  });
  // A metrics port must never keep a finished command alive.
  server.unref();
  const bound = server.address() as { address: string; port: number };
  return {
    address: `${bound.address.includes(':') ? `[${bound.address}]` : bound.address}:${bound.port}`,
    async close({ finalScrape = true } = {}) {
      if (finalScrape && scrapes > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, FINAL_SCRAPE_WAIT_MS);
          onScrape = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The address asked for: the flag, else $NOISESEARCH_METRICS; undefined for none. */
export function metricsAddress(flag: unknown): string | undefined {
  const value = (flag as string | undefined) ?? process.env.NOISESEARCH_METRICS;
  return value === undefined || value === '' ? undefined : value;
}
