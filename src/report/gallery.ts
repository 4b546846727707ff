// The report's gallery. A latent model's final samples are drawn as heatmaps (the best few per algorithm
// and search verifier set); an image model's decoded PNGs are shown per prompt, the no-search baseline
// beside each algorithm and budget. Images are embedded as data: URIs, so the report stays one file that
// opens offline and can be moved or mailed; the gallery is bounded so that the file stays readable.
import type { Baseline, SampleImages } from '../campaign/samples';
import { baselineKey } from '../campaign/samples';
import type { SearchRecord } from '../store/types';
import { fmt } from './format';
import { escapeHtml, inlineSvg, renderSvg, samplePicture } from './plot';

/** What the gallery needs of a grid cell group: its algorithm, search verifiers, budget and searches. */
export interface GalleryGroup {
  algorithm: string;
  verifiers: string;
  budget: number;
  records: SearchRecord[];
}

/** Final samples shown per (algorithm, search verifier set) in a latent model's gallery. */
export const GALLERY_SIZE = 4;
/** Prompts (items) shown in an image model's gallery, and the most image bytes embedded in all. */
export const GALLERY_PROMPTS = 8;
export const MAX_EMBEDDED_BYTES = 48 << 20;
/** Width in CSS pixels of an image in the gallery. */
const TILE_PX = 128;

export async function latentGallery(groups: GalleryGroup[], evalVerifiers: string[]): Promise<string> {
  const largest = new Map<string, number>();
  for (const g of groups) largest.set(g.algorithm, Math.max(largest.get(g.algorithm) ?? -Infinity, g.budget));
  const shown = groups.filter((g) => g.budget === largest.get(g.algorithm));
  const ranking = evalVerifiers[0];
  const picks = shown.map((g) => ({
    group: g,
    records: [...g.records]
      .filter((r) => Array.isArray(r.sample) && r.sample.length > 0)
      .sort((a, b) => {
        const sa = ranking ? a.evaluation?.[ranking] : NaN;
        const sb = ranking ? b.evaluation?.[ranking] : NaN;
        return (Number.isFinite(sb) ? sb! : -Infinity) - (Number.isFinite(sa) ? sa! : -Infinity) || a.itemId.localeCompare(b.itemId) || a.seed - b.seed;
      })
      .slice(0, GALLERY_SIZE),
  }));
  const all = picks.flatMap((p) => p.records.flatMap((r) => r.sample)).filter((v) => Number.isFinite(v));
  if (all.length === 0) return '';
  // One colour scale for the whole gallery, so that the pictures compare.
  const magnitude = Math.max(1e-9, ...all.map((v) => Math.abs(v)));
  const domain: [number, number] = [-magnitude, magnitude];
  const rows: string[] = [];
  for (const p of picks) {
    if (p.records.length === 0) continue;
    const tiles: string[] = [];
    for (const r of p.records) {
      const svg = inlineSvg(await samplePicture(r.sample, undefined, { domain, size: 76 }), 'sample', `final sample for ${r.itemLabel}`);
      const scores = evalVerifiers
        .filter((v) => r.evaluation?.[v] !== undefined)
        .map((v) => `<div class="score${v === ranking ? ' rank' : ''}"><span title="${escapeHtml(v)}">${escapeHtml(v)}</span> ${fmt(r.evaluation[v])}</div>`)
        .join('');
      tiles.push(`<figure class="tile">${svg}<figcaption><div class="item" title="${escapeHtml(r.itemLabel)}">${escapeHtml(r.itemLabel)}</div><div class="cat">${
        r.itemCategory ? `${escapeHtml(r.itemCategory)} · ` : ''
      }seed ${r.seed}</div>${scores}</figcaption></figure>`);
    }
    rows.push(`<div class="gallery-row"><h4>${escapeHtml(p.group.algorithm)} <span class="sep">·</span> ${escapeHtml(p.group.verifiers)} <span class="budget">${fmt(p.group.budget)} NFEs</span></h4><div class="tiles">${tiles.join('')}</div></div>`);
  }
  const legend = inlineSvg(await colourBar(domain), 'colourbar', 'colour scale of the sample pictures');
  return `<div class="gallery">${rows.join('\n')}</div><div class="gallery-legend"><span>latent value</span><span>${fmt(domain[0], 2)}</span>${legend}<span>+${fmt(
    domain[1],
    2,
  )}</span></div>`;
}

async function colourBar(domain: [number, number]): Promise<string> {
  const steps = 41;
  const values = Array.from({ length: steps }, (_, i) => ({ v: domain[0] + ((domain[1] - domain[0]) * i) / (steps - 1) }));
  return renderSvg({
    width: 220,
    height: 10,
    padding: 4,
    data: { values },
    mark: { type: 'rect' },
    encoding: {
      x: { field: 'v', type: 'ordinal', axis: null },
      color: { field: 'v', type: 'quantitative', legend: null, scale: { scheme: 'redblue', reverse: true, domain, domainMid: 0 } },
    },
    config: { view: { stroke: null } },
  });
}

/** A PNG's width and height from its IHDR chunk; null when the bytes are not a PNG. */
export function pngSize(png: Uint8Array): { width: number; height: number } | null {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (png.length < 24 || signature.some((b, i) => png[i] !== b)) return null;
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

function scoreLines(evaluation: Record<string, number>, evalVerifiers: string[]): string {
  const ranking = evalVerifiers[0];
  return evalVerifiers
    .filter((v) => evaluation?.[v] !== undefined)
    .map((v) => `<div class="score${v === ranking ? ' rank' : ''}"><span title="${escapeHtml(v)}">${escapeHtml(v)}</span> ${fmt(evaluation[v])}</div>`)
    .join('');
}

/**
 * An image model's gallery: for each of the first prompts (by item id), at its smallest seed, the
 * no-search baseline and then the final sample of each algorithm, search verifier set and budget.
 */
export function imageGallery(groups: GalleryGroup[], evalVerifiers: string[], images: SampleImages): { html: string; prompts: number; left: number } {
  const pictured = groups.filter((g) => g.records.some((r) => images.searches.has(r.workflowId)));
  const records = pictured.flatMap((g) => g.records.filter((r) => images.searches.has(r.workflowId)));
  const items = [...new Map(records.map((r) => [r.itemId, r])).values()].sort((a, b) => a.itemId.localeCompare(b.itemId));
  const shown = items.slice(0, GALLERY_PROMPTS);
  let embedded = 0;
  let left = 0;
  const picture = (png: Uint8Array, alt: string): string => {
    if (embedded + png.length > MAX_EMBEDDED_BYTES) {
      left++;
      return `<div class="missing" style="width:${TILE_PX}px;height:${TILE_PX}px">not embedded</div>`;
    }
    embedded += png.length;
    const size = pngSize(png);
    const height = size ? Math.round((TILE_PX * size.height) / size.width) : TILE_PX;
    return `<img src="data:image/png;base64,${Buffer.from(png).toString('base64')}" alt="${escapeHtml(alt)}" width="${TILE_PX}" height="${height}">`;
  };
  const rows = shown.map((item) => {
    const seed = Math.min(...records.filter((r) => r.itemId === item.itemId).map((r) => r.seed));
    const tiles: string[] = [];
    const baseline: Baseline | undefined = images.baselines.get(baselineKey(item.itemId, seed));
    tiles.push(
      baseline
        ? `<figure class="pic baseline">${picture(baseline.image, `no search: ${item.itemLabel}`)}<figcaption><div class="head">no search</div><div class="sub">${fmt(baseline.nfe)} NFEs</div>${scoreLines(baseline.evaluation, evalVerifiers)}</figcaption></figure>`
        : `<figure class="pic baseline"><div class="missing" style="width:${TILE_PX}px;height:${TILE_PX}px">no baseline</div><figcaption><div class="head">no search</div></figcaption></figure>`,
    );
    for (const g of pictured) {
      const r = g.records.find((x) => x.itemId === item.itemId && x.seed === seed && images.searches.has(x.workflowId));
      const head = `<div class="head">${escapeHtml(g.algorithm)}</div><div class="sub" title="${escapeHtml(g.verifiers)}">${fmt(g.budget)} NFEs · ${escapeHtml(g.verifiers)}</div>`;
      tiles.push(
        r
          ? `<figure class="pic">${picture(images.searches.get(r.workflowId)!, `${g.algorithm}, ${g.verifiers}, ${g.budget} NFEs: ${item.itemLabel}`)}<figcaption>${head}${scoreLines(r.evaluation, evalVerifiers)}</figcaption></figure>`
          : `<figure class="pic"><div class="missing" style="width:${TILE_PX}px;height:${TILE_PX}px">–</div><figcaption>${head}</figcaption></figure>`,
      );
    }
    return `<div class="pic-row"><h4 title="${escapeHtml(item.itemLabel)}">${escapeHtml(item.itemLabel)} <span class="budget">${item.itemCategory ? `${escapeHtml(item.itemCategory)} · ` : ''}seed ${seed}</span></h4><div class="pics">${tiles.join('')}</div></div>`;
  });
  return { html: rows.length > 0 ? `<div class="gallery">${rows.join('\n')}</div>` : '', prompts: items.length, left };
}

export const GALLERY_CSS = `
.gallery-row { margin: 10px 0 16px; }
.gallery-row h4 .sep { color: var(--muted); }
.gallery-row h4 .budget { color: var(--muted); font-weight: 400; margin-left: 6px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
figure.tile { width: 246px; padding: 8px; border: 1px solid var(--rule); border-radius: 6px; background: white;
  display: flex; gap: 10px; align-items: flex-start; }
figure.tile svg.sample { display: block; flex: none; }
figure.tile figcaption { font-size: 11.5px; line-height: 1.35; flex: 1; min-width: 0; }
figure.tile .item { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
figure.tile .cat { color: var(--muted); margin-bottom: 2px; }
figure.tile .score, figure.pic .score { display: flex; justify-content: space-between; font-variant-numeric: tabular-nums; }
figure.tile .score span, figure.pic .score span { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; margin-right: 4px; }
figure.tile .score.rank, figure.pic .score.rank { font-weight: 700; }
figure.tile .score.rank span, figure.pic .score.rank span { color: var(--ink); font-weight: 400; }
.gallery-legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); }
.pic-row { margin: 10px 0 18px; }
.pic-row h4 { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.pic-row h4 .budget { color: var(--muted); font-weight: 400; margin-left: 6px; }
.pics { display: flex; gap: 10px; overflow-x: auto; padding-bottom: 4px; }
figure.pic { flex: none; width: ${TILE_PX + 12}px; padding: 6px; border: 1px solid var(--rule); border-radius: 6px; background: white; }
figure.pic.baseline { background: var(--soft); }
figure.pic img { display: block; image-rendering: auto; }
figure.pic figcaption { font-size: 11px; line-height: 1.3; margin-top: 4px; }
figure.pic .head { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
figure.pic .sub { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.missing { display: flex; align-items: center; justify-content: center; color: var(--muted); background: var(--soft); font-size: 11px; }
`;
