// A real Prometheus for tests: Debian's /usr/bin/prometheus on a free port, scraping the targets given
// every second, with its config and storage in a temporary folder that goes when it stops.
import { spawn } from 'node:child_process';
import { openSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { stopChild, tempDir, waitUntil } from './helpers';

export const PROMETHEUS = '/usr/bin/prometheus';

export interface PromSample {
  metric: Record<string, string>;
  value: number;
}

export interface RunningPrometheus {
  url: string;
  /** The folder holding its config, data and log (prometheus.log). */
  dir: string;
  stop(): Promise<void>;
  /** An instant query; throws with Prometheus' own error for a bad one. */
  query(promql: string): Promise<PromSample[]>;
  /** Waits until every target (or those given, as host:port) was scraped successfully after `after` (ms since the epoch; default now). */
  waitForScrape(options?: { after?: number; targets?: string[]; timeoutMs?: number }): Promise<void>;
}

/** A port free now: taken by the system, then given back. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function getJson(url: string): Promise<any> {
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const body = (await response.json()) as { status: string; data: any; error?: string };
  if (body.status !== 'success') throw new Error(`Prometheus: ${url}: ${body.error ?? response.status}`);
  return body.data;
}

export async function withPrometheus(targets: string[], opts: { scrapeIntervalS?: number } = {}): Promise<RunningPrometheus> {
  const dir = tempDir('prometheus');
  const interval = `${opts.scrapeIntervalS ?? 1}s`;
  const config = path.join(dir, 'prometheus.yml');
  // JSON is YAML: no YAML library needed to write the config.
  writeFileSync(config, JSON.stringify({
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: [{ job_name: 'noisesearch', static_configs: [{ targets }] }],
  }));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = openSync(path.join(dir, 'prometheus.log'), 'a');
  const child = spawn(PROMETHEUS, [
    `--config.file=${config}`,
    `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
  ], { stdio: ['ignore', log, log] });
  const stop = async () => {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitUntil(`Prometheus ready at ${url} (log: ${dir}/prometheus.log)`, async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited with code ${child.exitCode} before it was ready (log: ${dir}/prometheus.log)`);
      return fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    }, 30_000, 100);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    url,
    dir,
    stop,
    async query(promql) {
      const data = await getJson(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
      return (data.result as Array<{ metric: Record<string, string>; value: [number, string] }>).map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
    },
    async waitForScrape({ after = Date.now(), targets: only, timeoutMs = 30_000 } = {}) {
      await waitUntil(`a scrape of ${only?.join(', ') ?? 'every target'} after ${new Date(after).toISOString()}`, async () => {
        const data = await getJson(`${url}/api/v1/targets?state=active`);
        const wanted = (data.activeTargets as Array<{ labels: { instance: string }; lastScrape: string; health: string }>).filter((t) => !only || only.includes(t.labels.instance));
        return wanted.length > 0 && wanted.every((t) => t.health === 'up' && Date.parse(t.lastScrape) > after);
      }, timeoutMs, 200);
    },
  };
}
