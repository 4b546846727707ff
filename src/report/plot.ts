// Vega-Lite specs compiled by vega-lite and rendered to SVG by vega in Node: no canvas, no browser, no
// network. Every plot of the report (and every sample picture) goes through `renderSvg`.
import * as vega from 'vega';
import * as vl from 'vega-lite';

/** A Vega-Lite top-level spec (kept loose: the specs here are built as plain data). */
export type VlSpec = Record<string, unknown>;

export const FONT = 'sans-serif';

/** The same look for every plot: fixed fonts and sizes, light grid, white background. */
export const PLOT_CONFIG = {
  font: FONT,
  background: 'white',
  padding: 6,
  view: { stroke: '#bbbbbb', strokeWidth: 0.8 },
  title: { font: FONT, fontSize: 13, fontWeight: 'bold', anchor: 'start', color: '#222222', offset: 8 },
  axis: {
    labelFont: FONT,
    titleFont: FONT,
    labelFontSize: 10,
    titleFontSize: 11,
    titleFontWeight: 'normal',
    titleColor: '#333333',
    labelColor: '#444444',
    gridColor: '#e8e8e8',
    domainColor: '#888888',
    tickColor: '#888888',
  },
  legend: {
    labelFont: FONT,
    titleFont: FONT,
    labelFontSize: 10,
    titleFontSize: 11,
    titleFontWeight: 'normal',
    symbolSize: 60,
    labelLimit: 220,
  },
  header: { labelFont: FONT, titleFont: FONT },
  range: {
    category: ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2', '#ff9da6', '#9d755d', '#bab0ac', '#eeca3b'],
  },
};

/** Compiles a Vega-Lite spec and renders it to an SVG string (standalone: it keeps its xmlns). */
export async function renderSvg(spec: VlSpec): Promise<string> {
  const full = { $schema: 'https://vega.github.io/schema/vega-lite/v5.json', config: PLOT_CONFIG, ...spec };
  const compiled = vl.compile(full as any).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

let inlineCounter = 0;

/**
 * An SVG made for a file, made fit to sit inline in HTML: no XML namespaces (HTML does not need them, and
 * the document then names no http address at all), element ids prefixed so that several plots' clip paths
 * and gradients cannot collide, a class and an accessible label.
 */
export function inlineSvg(svg: string, cls: string, label: string): string {
  const prefix = `p${++inlineCounter}-`;
  return svg
    .replace(/\s+xmlns(:\w+)?="[^"]*"/g, '')
    .replace(/\bid="([^"]+)"/g, (_m, id: string) => `id="${prefix}${id}"`)
    .replace(/url\(#([^)]+)\)/g, (_m, id: string) => `url(#${prefix}${id})`)
    .replace(/href="#([^"]+)"/g, (_m, id: string) => `href="#${prefix}${id}"`)
    .replace(/^<svg\b([^>]*?)\s+class="[^"]*"/, '<svg$1')
    .replace(/^<svg\b/, `<svg class="${cls}" role="img" aria-label="${escapeHtml(label)}"`);
}

export function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** Rows and columns of the near-square grid a latent of this length is drawn as (4 x 4 for 16). */
export function gridShape(length: number): { rows: number; cols: number } {
  if (length <= 0) return { rows: 1, cols: 1 };
  const cols = Math.ceil(Math.sqrt(length));
  return { rows: Math.ceil(length / cols), cols };
}

export interface SamplePictureOptions {
  /** Colour domain [min, max]; by default symmetric about 0 at the sample's largest magnitude. */
  domain?: [number, number];
  /** Side of the picture in pixels (default 96). */
  size?: number;
}

/**
 * A small standalone SVG picture of one final sample of the embedded model: its latent vector as a
 * near-square heatmap (4 x 4 for the 16-dim latent), cell i at row floor(i / cols), column i mod cols,
 * drawn with a diverging scale centred on 0; a non-finite value is left blank.
 */
export async function samplePicture(sample: number[], title?: string, options: SamplePictureOptions = {}): Promise<string> {
  const { rows, cols } = gridShape(sample.length);
  const values = sample.map((v, i) => ({ i, row: Math.floor(i / cols), col: i % cols, value: Number.isFinite(v) ? v : null }));
  const finite = sample.filter((v) => Number.isFinite(v));
  const magnitude = Math.max(1e-9, ...finite.map((v) => Math.abs(v)));
  const domain = options.domain ?? [-magnitude, magnitude];
  const size = options.size ?? 96;
  const cell = Math.max(4, Math.floor(size / Math.max(rows, cols)));
  const spec: VlSpec = {
    ...(title ? { title: { text: title, fontSize: 10, fontWeight: 'normal', anchor: 'middle', offset: 4, limit: cell * cols + 40 } } : {}),
    padding: 2,
    width: cell * cols,
    height: cell * rows,
    data: { values },
    mark: { type: 'rect', stroke: 'white', strokeWidth: 0.5 },
    encoding: {
      x: { field: 'col', type: 'ordinal', axis: null, scale: { domain: Array.from({ length: cols }, (_, c) => c), paddingInner: 0, paddingOuter: 0 } },
      y: { field: 'row', type: 'ordinal', axis: null, scale: { domain: Array.from({ length: rows }, (_, r) => r), paddingInner: 0, paddingOuter: 0 } },
      color: {
        field: 'value',
        type: 'quantitative',
        legend: null,
        scale: { scheme: 'redblue', reverse: true, domain, domainMid: (domain[0] + domain[1]) / 2, clamp: true },
      },
    },
    config: { ...PLOT_CONFIG, view: { stroke: '#999999', strokeWidth: 0.6 } },
  };
  if (values.length === 0) {
    spec.data = { values: [{ row: 0, col: 0, value: null }] };
    (spec.encoding as any).color = { value: '#eeeeee' };
  }
  return renderSvg(spec);
}

/** A rendered plot and its caption, as the report numbers and lays them out. */
export interface Figure {
  svg: string;
  caption: string;
}

export async function figure(spec: VlSpec, label: string, caption: string): Promise<Figure> {
  return { svg: inlineSvg(await renderSvg(spec), 'plot', label), caption };
}
