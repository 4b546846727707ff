// Grafana dashboards as code: the fleet, searches and campaigns, Temporal workers and Triton, over the metrics
// of docs/metrics.md (and Temporal's and Triton's own). `npm run dashboards` writes them to
// deploy/grafana/dashboards/; test/grafana.test.ts checks the committed files against this and evaluates every
// query against a real Prometheus scraping real processes.
// The SDK publishes its modules as `exports` subpaths, which `moduleResolution: node` does not read; tsconfig's
// `paths` points the type checker at the same files under dist/, and Node resolves the subpaths at run time.
import * as common from '@grafana/grafana-foundation-sdk/common';
import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';
import * as stat from '@grafana/grafana-foundation-sdk/stat';
import * as timeseries from '@grafana/grafana-foundation-sdk/timeseries';

export interface Query {
  expr: string;
  legend: string;
}

export interface PanelSpec {
  title: string;
  description: string;
  /** A Grafana unit id: s, ms, percentunit, bytes, reqps, short, none. */
  unit: string;
  kind?: 'timeseries' | 'stat';
  queries: Query[];
  /**
   * Why the panel's series exist only where a GPU is present. Only such panels may show nothing on a CPU-only
   * fleet, and only they are left out of the test that every query returns series.
   */
  gpuOnly?: string;
}

export interface DashboardSpec {
  uid: string;
  title: string;
  /** The file under deploy/grafana/dashboards/. */
  file: string;
  description: string;
  panels: PanelSpec[];
}

/** The datasource variable every panel reads from, so one dashboard serves any provisioned Prometheus. */
const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };
/** Grafana's rate window: at least four scrape intervals, so a rate always has samples to work with. */
const RATE = '$__rate_interval';

const rate = (metric: string) => `rate(${metric}[${RATE}])`;

/** p50/p95/p99 of a histogram, per `by` labels. */
function percentiles(histogram: string, by: string[], legendPrefix = ''): Query[] {
  const labels = ['le', ...by].join(', ');
  const legend = by.map((label) => `{{${label}}}`).join(' ');
  return [0.5, 0.95, 0.99].map((q) => ({
    expr: `histogram_quantile(${q}, sum by (${labels}) (${rate(`${histogram}_bucket`)}))`,
    legend: `${legendPrefix}${legend} p${Math.round(q * 100)}`.trim(),
  }));
}

const GPU_NOISESEARCH = 'the model server exports device memory and utilisation only where a GPU (and NVML) is present';
const GPU_TRITON = "Triton exports nv_gpu_* only where it sees a GPU through NVML";

const fleet: DashboardSpec = {
  uid: 'noisesearch-fleet',
  title: 'noisesearch / Fleet',
  file: 'fleet.json',
  description: 'Model-server endpoints as the workers see them (health, latency, concurrency, errors) and as the servers report themselves (batching, queueing, cache, devices).',
  panels: [
    {
      title: 'Endpoint up',
      description: "1 while an endpoint's gRPC health says SERVING to every worker that uses it (the minimum over workers), else 0.",
      unit: 'none',
      kind: 'stat',
      queries: [{ expr: 'min by (endpoint) (noisesearch_endpoint_up)', legend: '{{endpoint}}' }],
    },
    {
      title: 'Request latency by endpoint',
      description: 'gRPC call latency per model server, all methods, as the fleet client measures it.',
      unit: 's',
      queries: percentiles('noisesearch_endpoint_request_seconds', ['endpoint']),
    },
    {
      title: 'Requests in flight',
      description: 'Calls on the wire now, summed over workers.',
      unit: 'short',
      queries: [{ expr: 'sum by (endpoint) (noisesearch_endpoint_in_flight_requests)', legend: '{{endpoint}}' }],
    },
    {
      title: 'Requests queued in the workers',
      description: "Calls waiting for an endpoint's concurrency limit: a backlog the servers cannot take yet.",
      unit: 'short',
      queries: [{ expr: 'sum by (endpoint) (noisesearch_endpoint_queued_requests)', legend: '{{endpoint}}' }],
    },
    {
      title: 'Errors by code',
      description: 'Errors per second as the fleet client classified them, retryable or not.',
      unit: 'reqps',
      queries: [{ expr: `sum by (code, retryable) (${rate('noisesearch_errors_total')})`, legend: '{{code}} retryable={{retryable}}' }],
    },
    {
      title: 'Server calls by method and code',
      description: 'Calls the model servers answered per second.',
      unit: 'reqps',
      queries: [{ expr: `sum by (method, code) (${rate('noisesearch_server_requests_total')})`, legend: '{{method}} {{code}}' }],
    },
    {
      title: 'Server batch fill',
      description: "Candidates per engine batch over --max-batch, after the dynamic batcher merged requests: low fill on a busy fleet means the batcher's window is too short.",
      unit: 'percentunit',
      queries: [
        ...percentiles('noisesearch_server_batch_fill_ratio', ['instance']),
        {
          expr: `sum by (instance) (${rate('noisesearch_server_batch_fill_ratio_sum')}) / sum by (instance) (${rate('noisesearch_server_batch_fill_ratio_count')})`,
          legend: '{{instance}} mean',
        },
      ],
    },
    {
      title: 'Server queue wait',
      description: 'Time a request waited in the batcher before its batch ran.',
      unit: 's',
      queries: percentiles('noisesearch_server_queue_wait_seconds', ['instance']),
    },
    {
      title: 'Lineage cache hit ratio',
      description: 'Share of lineage lookups the server answered from its cache (a hit costs no NFE).',
      unit: 'percentunit',
      queries: [
        {
          expr: `sum by (instance) (${rate('noisesearch_server_cache_hits_total')}) / (sum by (instance) (${rate('noisesearch_server_cache_hits_total')}) + sum by (instance) (${rate('noisesearch_server_cache_misses_total')}))`,
          legend: '{{instance}}',
        },
      ],
    },
    {
      title: 'Lineage cache size and evictions',
      description: 'Bytes the lineage cache holds, and evictions per second.',
      unit: 'bytes',
      queries: [
        { expr: 'sum by (instance) (noisesearch_server_cache_bytes)', legend: '{{instance}} bytes' },
        { expr: `sum by (instance) (${rate('noisesearch_server_cache_evictions_total')})`, legend: '{{instance}} evictions/s' },
      ],
    },
    {
      title: 'Engine time by op',
      description: 'Seconds of engine work per second, by kind of work: how busy the servers are and with what.',
      unit: 'percentunit',
      queries: [{ expr: `sum by (instance, op) (${rate('noisesearch_server_compute_seconds_total')})`, legend: '{{instance}} {{op}}' }],
    },
    {
      title: 'Server NFEs executed',
      description: 'Denoiser evaluations per second the servers ran.',
      unit: 'short',
      queries: [{ expr: `sum by (instance, model) (${rate('noisesearch_server_nfe_executed_total')})`, legend: '{{instance}} {{model}}' }],
    },
    {
      title: 'Device memory',
      description: 'GPU memory the model servers hold, allocated and reserved by the framework.',
      unit: 'bytes',
      queries: [{ expr: 'sum by (instance, device, kind) (noisesearch_server_device_memory_bytes)', legend: '{{instance}} {{device}} {{kind}}' }],
      gpuOnly: GPU_NOISESEARCH,
    },
    {
      title: 'Device utilisation',
      description: 'GPU utilisation of the model servers.',
      unit: 'percentunit',
      queries: [{ expr: 'max by (instance, device) (noisesearch_server_device_utilization_ratio)', legend: '{{instance}} {{device}}' }],
      gpuOnly: GPU_NOISESEARCH,
    },
  ],
};

/**
 * Searches not finished yet: a campaign's remaining ones (from its `campaign run` process's progress gauges)
 * plus those `noisesearch search` processes started and have not ended. Workers count only ends (a campaign's
 * searches start inside its workflow), so started minus ended is taken per process and only where a process
 * counted starts. `or vector(0)`: either side may have no series at all. The NoisesearchNfeBurnStalled alert
 * (deploy/prometheus/alerts.yml) uses the same expression.
 */
export const UNFINISHED_SEARCHES = [
  '(sum(max by (campaign) (noisesearch_campaign_searches{state="total"})',
  ' - max by (campaign) (noisesearch_campaign_searches{state="done"})',
  ' - max by (campaign) (noisesearch_campaign_searches{state="failed"})) or vector(0))',
  ' + (sum(clamp_min(sum by (instance) (noisesearch_searches_total{state="started"})',
  ' - (sum by (instance) (noisesearch_searches_total{state=~"completed|failed|cancelled"})',
  ' or 0 * sum by (instance) (noisesearch_searches_total{state="started"})), 0)) or vector(0))',
].join('');

const searches: DashboardSpec = {
  uid: 'noisesearch-searches',
  title: 'noisesearch / Searches and campaigns',
  file: 'searches.json',
  description: 'What the searches spend (NFEs, candidates), how they end, campaign progress and ETA, and the verifiers.',
  panels: [
    {
      title: 'NFE burn rate',
      description: 'Denoiser evaluations per second: logical (what budgets count) against executed (what the servers ran; cache hits cost nothing).',
      unit: 'short',
      queries: [
        { expr: `sum by (model, algorithm) (${rate('noisesearch_nfe_logical_total')})`, legend: 'logical {{model}} {{algorithm}}' },
        { expr: `sum by (model, algorithm) (${rate('noisesearch_nfe_executed_total')})`, legend: 'executed {{model}} {{algorithm}}' },
      ],
    },
    {
      title: 'NFEs saved by the cache',
      description: 'Share of logical NFEs the servers did not have to run.',
      unit: 'percentunit',
      queries: [
        {
          expr: `1 - sum by (model) (${rate('noisesearch_nfe_executed_total')}) / sum by (model) (${rate('noisesearch_nfe_logical_total')})`,
          legend: '{{model}}',
        },
      ],
    },
    {
      title: 'Candidates by outcome',
      description: 'Candidates evaluated per second: scored, failed, cancelled.',
      unit: 'short',
      queries: [{ expr: `sum by (outcome, algorithm) (${rate('noisesearch_candidates_total')})`, legend: '{{outcome}} {{algorithm}}' }],
    },
    {
      title: 'Searches unfinished',
      description: "Searches not finished yet: campaigns' remaining searches and standalone searches running.",
      unit: 'short',
      kind: 'stat',
      queries: [{ expr: UNFINISHED_SEARCHES, legend: 'unfinished' }],
    },
    {
      title: 'Searches by state',
      description: 'Searches reaching each state per minute.',
      unit: 'short',
      queries: [{ expr: `60 * sum by (algorithm, state) (${rate('noisesearch_searches_total')})`, legend: '{{algorithm}} {{state}}' }],
    },
    {
      title: 'Campaigns by state',
      description: 'Campaigns reaching each state per minute.',
      unit: 'short',
      queries: [{ expr: `60 * sum by (state) (${rate('noisesearch_campaigns_total')})`, legend: '{{state}}' }],
    },
    {
      title: 'Campaign progress',
      description: "Share of a campaign's searches done, and failed.",
      unit: 'percentunit',
      queries: [
        {
          expr: 'max by (campaign) (noisesearch_campaign_searches{state="done"}) / max by (campaign) (noisesearch_campaign_searches{state="total"})',
          legend: '{{campaign}} done',
        },
        {
          expr: 'max by (campaign) (noisesearch_campaign_searches{state="failed"}) / max by (campaign) (noisesearch_campaign_searches{state="total"})',
          legend: '{{campaign}} failed',
        },
      ],
    },
    {
      title: 'Campaign ETA',
      description: "A campaign's remaining time at its current rate.",
      unit: 's',
      queries: [{ expr: 'max by (campaign) (noisesearch_campaign_eta_seconds)', legend: '{{campaign}}' }],
    },
    {
      title: 'Verifier latency',
      description: 'Verifier time per scored sample, as the servers report it.',
      unit: 's',
      queries: percentiles('noisesearch_verifier_seconds', ['verifier']),
    },
    {
      title: 'Verifier calls',
      description: 'Samples scored per second, by verifier.',
      unit: 'short',
      queries: [{ expr: `sum by (verifier) (${rate('noisesearch_verifier_calls_total')})`, legend: '{{verifier}}' }],
    },
  ],
};

// Temporal's worker metrics (Runtime.install telemetry), durations in seconds (src/temporal/worker.ts asks for them).
const temporal: DashboardSpec = {
  uid: 'noisesearch-temporal',
  title: 'noisesearch / Temporal workers',
  file: 'temporal.json',
  description: "The Temporal SDK's own worker metrics: slots, pollers, schedule-to-start, task latencies, sticky cache.",
  panels: [
    {
      title: 'Task slots available',
      description: 'Free slots per worker type: none left means tasks wait in the task queue.',
      unit: 'short',
      queries: [{ expr: 'sum by (task_queue, worker_type) (temporal_worker_task_slots_available)', legend: '{{task_queue}} {{worker_type}}' }],
    },
    {
      title: 'Task slots used',
      description: 'Busy slots per worker type.',
      unit: 'short',
      queries: [{ expr: 'sum by (task_queue, worker_type) (temporal_worker_task_slots_used)', legend: '{{task_queue}} {{worker_type}}' }],
    },
    {
      title: 'Workflow task schedule-to-start',
      description: 'Time a workflow task waited in the task queue for a worker: growing means too few workers.',
      unit: 's',
      queries: percentiles('temporal_workflow_task_schedule_to_start_latency', ['task_queue']),
    },
    {
      title: 'Activity schedule-to-start',
      description: 'Time an activity (a search step) waited in the task queue for a worker.',
      unit: 's',
      queries: percentiles('temporal_activity_schedule_to_start_latency', ['task_queue']),
    },
    {
      title: 'Workflow task execution',
      description: 'Time a worker spent running a workflow task.',
      unit: 's',
      queries: percentiles('temporal_workflow_task_execution_latency', ['task_queue']),
    },
    {
      title: 'Activity execution',
      description: 'Time an activity ran, by activity type.',
      unit: 's',
      queries: percentiles('temporal_activity_execution_latency', ['activity_type']),
    },
    {
      title: 'Poll latency',
      description: 'Long-poll latency by operation: a poll that returns at once means work was waiting.',
      unit: 's',
      queries: percentiles('temporal_long_request_latency', ['operation']),
    },
    {
      title: 'Pollers',
      description: 'Pollers per poller type.',
      unit: 'short',
      queries: [{ expr: 'sum by (task_queue, poller_type) (temporal_num_pollers)', legend: '{{task_queue}} {{poller_type}}' }],
    },
    {
      title: 'Sticky cache',
      description: 'Workflows cached on the workers (replays avoided).',
      unit: 'short',
      queries: [{ expr: 'sum by (instance) (temporal_sticky_cache_size)', legend: '{{instance}}' }],
    },
  ],
};

// Triton's durations are cumulative microseconds per model: divided by the requests, the mean per request.
const perRequest = (duration: string) =>
  `sum by (model) (${rate(duration)}) / sum by (model) (${rate('nv_inference_request_success')}) / 1e6`;

const triton: DashboardSpec = {
  uid: 'noisesearch-triton',
  title: 'noisesearch / Triton',
  file: 'triton.json',
  description: "Triton Inference Server's own metrics: requests, queueing and compute per model, batching, GPUs.",
  panels: [
    {
      title: 'Inference requests succeeded',
      description: 'Successful requests per second by model.',
      unit: 'reqps',
      queries: [{ expr: `sum by (model) (${rate('nv_inference_request_success')})`, legend: '{{model}}' }],
    },
    {
      title: 'Inference requests failed',
      description: 'Failed requests per second by model and reason.',
      unit: 'reqps',
      queries: [{ expr: `sum by (model, reason) (${rate('nv_inference_request_failure')})`, legend: '{{model}} {{reason}}' }],
    },
    {
      title: 'Queue time per request',
      description: "Mean time a request waited in Triton's scheduler.",
      unit: 's',
      queries: [{ expr: perRequest('nv_inference_queue_duration_us'), legend: '{{model}}' }],
    },
    {
      title: 'Compute time per request',
      description: 'Mean compute time per request: input, inference, output.',
      unit: 's',
      queries: [
        { expr: perRequest('nv_inference_compute_input_duration_us'), legend: '{{model}} input' },
        { expr: perRequest('nv_inference_compute_infer_duration_us'), legend: '{{model}} infer' },
        { expr: perRequest('nv_inference_compute_output_duration_us'), legend: '{{model}} output' },
      ],
    },
    {
      title: 'Batch size',
      description: 'Inferences per model execution: how much the dynamic batcher merges.',
      unit: 'short',
      queries: [{ expr: `sum by (model) (${rate('nv_inference_count')}) / sum by (model) (${rate('nv_inference_exec_count')})`, legend: '{{model}}' }],
    },
    {
      title: 'Pending requests',
      description: 'Requests waiting or running in Triton now.',
      unit: 'short',
      queries: [{ expr: 'sum by (model) (nv_inference_pending_request_count)', legend: '{{model}}' }],
    },
    {
      title: 'GPU utilisation',
      description: 'Utilisation of each GPU Triton uses.',
      unit: 'percentunit',
      queries: [{ expr: 'max by (instance, gpu_uuid) (nv_gpu_utilization)', legend: '{{instance}} {{gpu_uuid}}' }],
      gpuOnly: GPU_TRITON,
    },
    {
      title: 'GPU memory',
      description: 'GPU memory used and total.',
      unit: 'bytes',
      queries: [
        { expr: 'max by (instance, gpu_uuid) (nv_gpu_memory_used_bytes)', legend: '{{instance}} {{gpu_uuid}} used' },
        { expr: 'max by (instance, gpu_uuid) (nv_gpu_memory_total_bytes)', legend: '{{instance}} {{gpu_uuid}} total' },
      ],
      gpuOnly: GPU_TRITON,
    },
  ],
};

export const DASHBOARDS: DashboardSpec[] = [fleet, searches, temporal, triton];

const PANEL_WIDTH = 12;
const PANEL_HEIGHT = 8;

export function buildDashboard(spec: DashboardSpec): Dashboard {
  const builder = new dashboard.DashboardBuilder(spec.title)
    .uid(spec.uid)
    .description(spec.description)
    .tags(['noisesearch', 'generated'])
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .timezone('browser')
    .withVariable(new dashboard.DatasourceVariableBuilder('datasource').label('Prometheus').type('prometheus'));
  spec.panels.forEach((panel, index) => {
    const gridPos = { x: (index % 2) * PANEL_WIDTH, y: Math.floor(index / 2) * PANEL_HEIGHT, w: PANEL_WIDTH, h: PANEL_HEIGHT };
    const description = panel.gpuOnly ? `${panel.description} GPU only: ${panel.gpuOnly}.` : panel.description;
    // A stat shows the latest value (Grafana's default reducer list is empty, which shows nothing).
    const built =
      panel.kind === 'stat'
        ? new stat.PanelBuilder().reduceOptions(new common.ReduceDataOptionsBuilder().calcs(['lastNotNull']))
        : new timeseries.PanelBuilder();
    built.title(panel.title).description(description).unit(panel.unit).datasource(DATASOURCE).gridPos(gridPos);
    panel.queries.forEach((query, q) => {
      built.withTarget(
        new prometheus.DataqueryBuilder()
          .datasource(DATASOURCE)
          .expr(query.expr)
          .legendFormat(query.legend)
          .refId(String.fromCharCode(65 + q)),
      );
    });
    builder.withPanel(built);
  });
  return builder.build();
}

/** Each dashboard's file name and the JSON text written there. */
export function renderDashboards(): { file: string; json: string }[] {
  return DASHBOARDS.map((spec) => ({ file: spec.file, json: `${JSON.stringify(buildDashboard(spec), null, 2)}\n` }));
}
