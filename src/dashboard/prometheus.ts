// The dashboard's fleet metrics, read from Prometheus' HTTP API: a fixed set of instant queries over the
// series the workers export (docs/metrics.md), all evaluated at one moment so that the numbers on the page
// agree with each other and can be checked by running the same PromQL at that moment.

/** Rates and quantiles are over this window: long enough to hold several scrapes at the usual 15 s interval. */
const WINDOW = '1m';
/** A Prometheus that hangs must not hold the gathering (and so the page) back. */
const QUERY_TIMEOUT_MS = 2_000;

const quantile = (q: number, metric: string, by: string) => `histogram_quantile(${q}, sum by (${by}, le) (rate(${metric}_bucket[${WINDOW}])))`;

/** Every query the dashboard runs, by what it measures; the test runs each of them itself. */
export const PROMETHEUS_QUERIES = {
  endpointRequestsPerSecond: `sum by (endpoint) (rate(noisesearch_endpoint_request_seconds_count[${WINDOW}]))`,
  endpointP50Seconds: quantile(0.5, 'noisesearch_endpoint_request_seconds', 'endpoint'),
  endpointP95Seconds: quantile(0.95, 'noisesearch_endpoint_request_seconds', 'endpoint'),
  endpointInFlight: 'sum by (endpoint) (noisesearch_endpoint_in_flight_requests)',
  endpointQueued: 'sum by (endpoint) (noisesearch_endpoint_queued_requests)',
  verifierP50Seconds: quantile(0.5, 'noisesearch_verifier_seconds', 'verifier'),
  verifierP95Seconds: quantile(0.95, 'noisesearch_verifier_seconds', 'verifier'),
  verifierSamplesPerSecond: `sum by (verifier) (rate(noisesearch_verifier_calls_total[${WINDOW}]))`,
  nfeLogicalPerSecond: `sum(rate(noisesearch_nfe_logical_total[${WINDOW}]))`,
  nfeExecutedPerSecond: `sum(rate(noisesearch_nfe_executed_total[${WINDOW}]))`,
} as const;

export type MetricName = keyof typeof PROMETHEUS_QUERIES;

export interface EndpointMetrics {
  endpoint: string;
  requestsPerSecond: number | null;
  p50Seconds: number | null;
  p95Seconds: number | null;
  inFlight: number | null;
  queued: number | null;
}

export interface VerifierMetrics {
  verifier: string;
  p50Seconds: number | null;
  p95Seconds: number | null;
  samplesPerSecond: number | null;
}

export interface FleetMetrics {
  /** The Prometheus asked, or null when the dashboard was started without --prometheus. */
  prometheus: string | null;
  /** The moment every query was evaluated at (seconds since the epoch, as Prometheus' `time` parameter). */
  evaluatedAt: number | null;
  /** Why there are no numbers: Prometheus unreachable, or refusing a query. */
  error: string | null;
  endpoints: EndpointMetrics[];
  verifiers: VerifierMetrics[];
  nfeLogicalPerSecond: number | null;
  nfeExecutedPerSecond: number | null;
}

interface Sample {
  labels: Record<string, string>;
  value: number;
}

class PrometheusError extends Error {}

/** One instant query at `time`; Prometheus' own error, or "unreachable", as one line. */
export async function instantQuery(baseUrl: string, promql: string, time: number): Promise<Sample[]> {
  const url = `${baseUrl}/api/v1/query?query=${encodeURIComponent(promql)}&time=${time}`;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(QUERY_TIMEOUT_MS) });
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).name;
    throw new PrometheusError(`Prometheus at ${baseUrl} is unreachable (${cause})`);
  }
  let body: { status?: string; error?: string; data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
  try {
    body = (await response.json()) as typeof body;
  } catch {
    throw new PrometheusError(`Prometheus at ${baseUrl} answered HTTP ${response.status} without its JSON: is this Prometheus?`);
  }
  if (body.status !== 'success' || body.data?.resultType !== 'vector') throw new PrometheusError(`Prometheus at ${baseUrl} refused a query: ${body.error ?? `HTTP ${response.status}`}`);
  return body.data.result.map((r) => ({ labels: r.metric, value: Number(r.value[1]) }));
}

/** A quantile over a window with no observations is NaN: the page shows "–", not "NaN". */
const finite = (value: number | undefined): number | null => (value !== undefined && Number.isFinite(value) ? value : null);

/** Every query at one moment, shaped per endpoint and per verifier; never throws (the error is in the result). */
export async function gatherFleetMetrics(baseUrl: string | undefined, now = Date.now()): Promise<FleetMetrics> {
  const empty: FleetMetrics = { prometheus: baseUrl ?? null, evaluatedAt: null, error: null, endpoints: [], verifiers: [], nfeLogicalPerSecond: null, nfeExecutedPerSecond: null };
  if (!baseUrl) return empty;
  let evaluatedAt = now / 1000;
  let results: Record<MetricName, Sample[]>;
  try {
    // Evaluated at the last moment every target has reported (the oldest of their latest scrapes): a scrape
    // started before `now` may still be on its way into the TSDB, and would change a rate at `now` after the
    // page showed it. Every sample up to that moment is in, so the numbers are final and can be re-queried.
    const settled = (await instantQuery(baseUrl, 'min(timestamp(up))', evaluatedAt))[0]?.value;
    if (settled !== undefined && Number.isFinite(settled)) evaluatedAt = Math.min(evaluatedAt, settled);
    const entries = await Promise.all(Object.entries(PROMETHEUS_QUERIES).map(async ([name, promql]) => [name, await instantQuery(baseUrl, promql, evaluatedAt)] as const));
    results = Object.fromEntries(entries) as Record<MetricName, Sample[]>;
  } catch (error) {
    return { ...empty, evaluatedAt, error: error instanceof PrometheusError ? error.message : `Prometheus at ${baseUrl}: ${(error as Error).message}` };
  }
  const byLabel = (name: MetricName, label: string) => new Map(results[name].map((s) => [s.labels[label] ?? '', s.value]));
  const table = <K extends string>(label: string, columns: Record<K, MetricName>) => {
    const maps = Object.entries(columns).map(([column, name]) => [column, byLabel(name as MetricName, label)] as const);
    const keys = [...new Set(maps.flatMap(([, map]) => [...map.keys()]))].sort();
    return keys.map((key) => ({ [label]: key, ...Object.fromEntries(maps.map(([column, map]) => [column, finite(map.get(key))])) }));
  };
  return {
    ...empty,
    evaluatedAt,
    endpoints: table('endpoint', { requestsPerSecond: 'endpointRequestsPerSecond', p50Seconds: 'endpointP50Seconds', p95Seconds: 'endpointP95Seconds', inFlight: 'endpointInFlight', queued: 'endpointQueued' }) as unknown as EndpointMetrics[],
    verifiers: table('verifier', { p50Seconds: 'verifierP50Seconds', p95Seconds: 'verifierP95Seconds', samplesPerSecond: 'verifierSamplesPerSecond' }) as unknown as VerifierMetrics[],
    nfeLogicalPerSecond: finite(results.nfeLogicalPerSecond[0]?.value),
    nfeExecutedPerSecond: finite(results.nfeExecutedPerSecond[0]?.value),
  };
}
