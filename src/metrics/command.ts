// The metrics flags of the commands that do work (`worker`, `search`, `campaign run`): parsed and started
// before the work, closed after it (with one last scrape, src/metrics/server.ts).
import { grouped, type Flag } from '../cli/flags';
import { useTemporalMetrics } from '../temporal/worker';
import { metricsAddress, parseAddress, serveMetrics, type MetricsServer } from './server';

export const METRICS_FLAGS: readonly Flag[] = grouped('Metrics:', [
  { name: 'metrics', value: 'HOST:PORT', description: 'serve Prometheus metrics at /metrics there (default $NOISESEARCH_METRICS; off if unset)' },
  { name: 'temporal-metrics', value: 'HOST:PORT', description: "serve the Temporal SDK's worker metrics (temporal_*) there (default $NOISESEARCH_TEMPORAL_METRICS)" },
]);

export interface CommandMetrics {
  close(): Promise<void>;
}

/** The addresses asked for, checked: throws MetricsAddressError for a bad one. */
export function metricsFlags(values: Record<string, unknown>): { address?: string; temporal?: string } {
  const address = metricsAddress(values.metrics);
  const temporal = (values['temporal-metrics'] as string | undefined) ?? (process.env.NOISESEARCH_TEMPORAL_METRICS || undefined);
  if (address !== undefined) parseAddress('--metrics', address);
  if (temporal !== undefined) parseAddress('--temporal-metrics', temporal);
  return { address, temporal };
}

/** Starts what the flags ask for; throws MetricsAddressError for a bad address, before any work starts. */
export async function startCommandMetrics(values: Record<string, unknown>): Promise<CommandMetrics> {
  const { address, temporal } = metricsFlags(values);
  if (temporal !== undefined) useTemporalMetrics(temporal);
  const server: MetricsServer | null = address === undefined ? null : await serveMetrics('--metrics', address);
  return { close: async () => server?.close() };
}
