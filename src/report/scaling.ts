// Scaling curves: each evaluation score and population metric against what the searches cost, once in
// NFEs (the paper's count) and once in measured fleet seconds, where a costly verifier shows.
import type { CellMetricsRecord } from '../store/types';
import { fleetSeconds, groupMetrics, mean, type Group } from './groups';
import { escapeHtml, figure, type Figure, type VlSpec } from './plot';

const PLOT_WIDTH = 290;
const PLOT_HEIGHT = 200;

interface ScalingPoint {
  algorithm: string;
  verifiers: string;
  series: string;
  budget: number;
  /** Where the point sits on the cost axis: mean total NFEs, or mean fleet seconds, per search. */
  cost: number;
  value: number;
  n: number;
}

/** A cost axis: what a point's cost is and how the axis names it. */
interface CostAxis {
  name: string;
  cost: (g: Group) => number;
  title: string;
  format: string;
  /** How a caption ends: what the curve is plotted against. */
  against: string;
}

const NFE_AXIS: CostAxis = {
  name: 'nfe',
  cost: (g) => mean(g.records.map((r) => r.nfeTotal)),
  title: 'mean total NFEs per search',
  format: ',~f',
  against: 'against the mean total NFEs per search',
};

const SECONDS_AXIS: CostAxis = {
  name: 'seconds',
  cost: (g) => mean(g.records.map((r) => fleetSeconds(r)?.total ?? NaN)),
  title: 'mean fleet seconds per search',
  format: ',~r',
  against: 'against the mean measured fleet seconds per search (the servers’ denoising and verifier time, not wall time)',
};

function scalingSpec(title: string, yTitle: string, points: ScalingPoint[], axis: CostAxis, logX: boolean): VlSpec {
  return {
    title: { text: title },
    width: PLOT_WIDTH,
    height: PLOT_HEIGHT,
    data: { values: points },
    mark: { type: 'line', point: { filled: true, size: 45 }, strokeWidth: 1.8, clip: false },
    encoding: {
      x: {
        field: 'cost',
        type: 'quantitative',
        title: logX ? `${axis.title} (log scale)` : axis.title,
        scale: logX ? { type: 'log', nice: false, padding: 8 } : { zero: false, nice: true, padding: 8 },
        axis: { format: axis.format, tickCount: 6 },
      },
      y: { field: 'value', type: 'quantitative', title: yTitle, scale: { zero: false, nice: true, padding: 6 } },
      color: { field: 'algorithm', type: 'nominal', title: 'algorithm', sort: 'ascending', legend: { orient: 'right' } },
      // Dash and marker both follow the search verifiers; one legend (Vega-Lite would draw two).
      strokeDash: { field: 'verifiers', type: 'nominal', sort: 'ascending', legend: null },
      shape: { field: 'verifiers', type: 'nominal', title: 'search verifiers', sort: 'ascending' },
      detail: { field: 'series', type: 'nominal' },
      order: { field: 'cost', type: 'quantitative' },
    },
  };
}

/** The population metrics' names: FID and IS proper on an image model's pictures, their analogues on the embedded model. */
function populationNames(pictures: boolean) {
  return pictures
    ? { fd: 'FID', fdCaption: 'FID of each cell’s final pictures against the model server’s reference statistics (lower is better)', is: 'Inception Score', isShort: 'IS' }
    : { fd: 'Fréchet distance', fdCaption: 'Fréchet distance of each cell’s final samples to the true distribution (lower is better)', is: 'Inception Score analogue', isShort: 'IS analogue' };
}

const CLIP_FID_CAPTION = "CLIP-FID: Fréchet distance of CLIP image embeddings of each cell's final pictures against the server's reference (lower is better)";

/** Only an image model's server with a CLIP reference computes CLIP-FID: it is shown when some cell has it. */
export function hasClipFd(byCell: Map<string, CellMetricsRecord>): boolean {
  return [...byCell.values()].some((m) => m.clipFrechetDistance !== undefined);
}

interface Metric {
  title: string;
  yTitle: string;
  caption: (against: string) => string;
  value: (g: Group) => number;
}

/**
 * For each metric, its curve against NFEs and, when the searches measured their seconds, beside it the same
 * curve against fleet seconds: NFE-matched comparisons hide what verifiers cost.
 */
export async function scalingFigures(groups: Group[], evalVerifiers: string[], byCell: Map<string, CellMetricsRecord>, pictures: boolean): Promise<Figure[]> {
  const names = populationNames(pictures);
  if (groups.length === 0) return [];
  const metrics: Metric[] = [
    ...evalVerifiers.map((v) => ({
      title: `${v} (evaluation)`,
      yTitle: 'mean final-sample score',
      caption: (against: string) => `Mean <b>${escapeHtml(v)}</b> score of the final samples (higher is better) ${against.replace('NFEs per', 'NFEs (search + final) per')}, one point per budget.`,
      value: (g: Group) => mean(g.records.map((r) => r.evaluation?.[v] ?? NaN)),
    })),
    { title: names.fd, yTitle: `${names.fd} ↓`, caption: (against) => `${names.fdCaption}, ${against}.`, value: (g) => groupMetrics(g, byCell)?.fd ?? NaN },
    {
      title: names.is,
      yTitle: `${names.isShort} ↑`,
      caption: (against) => `${names.is} of each cell’s final samples (higher is better), ${against}.`,
      value: (g) => groupMetrics(g, byCell)?.is ?? NaN,
    },
    ...(hasClipFd(byCell)
      ? [{ title: 'CLIP-FID', yTitle: 'CLIP-FID ↓', caption: (against: string) => `${CLIP_FID_CAPTION}, ${against}.`, value: (g: Group) => groupMetrics(g, byCell)?.clipFd ?? NaN }]
      : []),
  ];
  const axes = [NFE_AXIS, SECONDS_AXIS].map((axis) => {
    const base = groups.map((g) => ({ algorithm: g.algorithm, verifiers: g.verifiers, series: g.series, budget: g.budget, cost: axis.cost(g), n: g.records.length }));
    const costs = base.map((p) => p.cost).filter((v) => Number.isFinite(v) && v > 0);
    return { axis, base, logX: costs.length > 0 && Math.max(...costs) / Math.min(...costs) > 10 };
  });
  const figures: Figure[] = [];
  for (const m of metrics) {
    for (const { axis, base, logX } of axes) {
      const points = groups
        .map((g, i): ScalingPoint => ({ ...base[i], value: m.value(g) }))
        .filter((p) => Number.isFinite(p.value) && Number.isFinite(p.cost) && (!logX || p.cost > 0));
      if (points.length === 0) continue;
      const title = axis === NFE_AXIS ? m.title : `${m.title} · seconds`;
      const label = axis === NFE_AXIS ? `Scaling curve: ${m.title}` : `Scaling curve against fleet seconds: ${m.title}`;
      figures.push(await figure(scalingSpec(title, m.yTitle, points, axis, logX), label, m.caption(axis.against)));
    }
  }
  return figures;
}
