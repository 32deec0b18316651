// @ts-check
// Sweeps: the chosen vector at layers × coeffs in one call, drawn as one line per layer against the
// coefficient (Chart.js, served by steerd) and as a heatmap of the same numbers.

import { ApiError, sweep as sweepCall } from './api.js';
import { sampling } from './form.js';
import { optionalFields } from './model.js';
import { $, field, fmt, numbers, offerReceipt } from './page.js';
import { renderTokens, scaleOf } from './tokens.js';

/** @typedef {import('./api-types.js').SweepCell} SweepCell */
/** @typedef {import('./api-types.js').SweepRequest} SweepRequest */
/** @typedef {import('./api-types.js').SweepResponse} SweepResponse */
/** @typedef {{ x: number, y: number | null, cell: SweepCell | undefined }} CellPoint a coeff's point on a layer's line */
/** @typedef {import('chart.js').Chart<'line', CellPoint[]>} LineChart */
/** @typedef {import('chart.js').ChartConfiguration<'line', CellPoint[]>} LineChartConfig */

/** @type {{ request: SweepRequest, response: SweepResponse } | null} the last sweep */
let current = null;
/** @type {LineChart | null} the chart drawn for it */
let chart = null;

/** @typedef {{ label: string, of: (c: SweepCell) => number | undefined }} Metric */

/** @type {Record<string, Metric>} what the chart and the heatmap can show, by the Plot list's values */
const METRICS = {
  mean_kl: { label: 'mean KL (nats)', of: (c) => c.telemetry?.mean_kl },
  logprob_delta: { label: 'logprob delta', of: (c) => c.telemetry?.logprob_delta },
  projection: {
    label: 'mean projection',
    of: (c) => {
      const p = (c.tokens ?? []).map((t) => t.projections?.[0]).filter((x) => typeof x === 'number');
      return p.length ? p.reduce((a, b) => a + b, 0) / p.length : undefined;
    },
  },
  top1_flips: { label: 'top-1 flips', of: (c) => c.telemetry?.top1_flips },
};
/** A tooltip's point: one of the chart's own (Chart.js types it as unknown). */
const point = (/** @type {unknown} */ raw) => /** @type {CellPoint} */ (raw);
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

/** Sweeps the chosen vector at the layers × coeffs typed, with the form's sampling. */
export async function sweep() {
  const vector = field('vector').value;
  if (!vector) throw new ApiError(0, 'invalid_input', 'choose or register a vector to sweep');
  const { seed, ...rest } = sampling();
  /** @type {SweepRequest} */
  const body = {
    prompt: field('prompt').value,
    vector,
    layers: numbers(field('sweep-layers'), 'layers', true),
    coeffs: numbers(field('sweep-coeffs'), 'coeffs', false),
    unit: field('unit').value,
    positions: field('positions').value,
    ...rest,
    ...(seed !== undefined && { seed }),
    ...optionalFields('sweep'),
  };
  const status = $('sweep-status');
  status.textContent = `sweeping ${body.layers.length} × ${body.coeffs.length} cells…`;
  try {
    current = { request: body, response: await sweepCall(body) };
  } catch (e) {
    status.textContent = '';
    throw e;
  }
  renderSweep();
}

/**
 * The sweep's cells per (layer, coeff), averaged over seeds.
 * @param {SweepResponse} res
 * @param {string} metric
 */
function grid(res, metric) {
  const layers = [...new Set(res.cells.map((c) => c.layer))].sort((a, b) => a - b);
  const coeffs = [...new Set(res.cells.map((c) => c.coeff))].sort((a, b) => a - b);
  /**
   * @param {number} layer
   * @param {number} coeff
   */
  const at = (layer, coeff) => {
    const cells = res.cells.filter((c) => c.layer === layer && c.coeff === coeff);
    const vals = cells.map(METRICS[metric].of).filter((v) => typeof v === 'number');
    return { cells, value: vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null };
  };
  return { layers, coeffs, at };
}

/**
 * A heatmap cell's background: red and blue either side of zero where the values are, else one
 * orange from the least to the most.
 * @param {number | null} v
 * @param {number} min
 * @param {number} max
 */
function heatColour(v, min, max) {
  if (v === null) return '';
  if (min < 0 && max > 0) {
    const m = Math.max(-min, max);
    const a = Math.min(1, Math.abs(v) / m) * 0.75;
    return v >= 0 ? `rgba(214, 39, 40, ${a})` : `rgba(31, 119, 180, ${a})`;
  }
  const a = max === min ? 0.35 : ((v - min) / (max - min)) * 0.75;
  return `rgba(235, 120, 0, ${a})`;
}

/** The last sweep, as the chosen metric: the chart, the heatmap and its receipt. */
export function renderSweep() {
  const s = current;
  if (!s) return;
  const metric = field('sweep-metric').value;
  const { layers, coeffs, at } = grid(s.response, metric);
  const unit = s.request.unit;

  const datasets = layers.map((layer, i) => ({
    label: `layer ${layer}`,
    data: coeffs.map((coeff) => {
      const { cells, value } = at(layer, coeff);
      return { x: coeff, y: value, cell: cells[0] };
    }),
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length],
    pointRadius: 4,
    pointHoverRadius: 6,
  }));
  const canvas = $('sweep-chart', HTMLCanvasElement);
  chart?.destroy();
  /** @type {LineChartConfig} */
  const config = {
    type: 'line',
    data: { datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'nearest', intersect: true },
      scales: {
        x: { type: 'linear', title: { display: true, text: `coeff (${unit})` } },
        y: { title: { display: true, text: METRICS[metric].label } },
      },
      plugins: {
        tooltip: {
          callbacks: {
            label: (ctx) => `${ctx.dataset.label}, coeff ${point(ctx.raw).x}: ${fmt(point(ctx.raw).y)}`,
            afterLabel: (ctx) => {
              const text = point(ctx.raw).cell?.text ?? '';
              return text.length > 80 ? `${text.slice(0, 80)}…` : text;
            },
          },
        },
      },
      onClick: (_event, elements) => {
        const e = elements[0];
        if (e) showCell(datasets[e.datasetIndex].data[e.index].cell);
      },
    },
  };
  // Chart.js's UMD build, loaded before the page's modules, is a global
  const { Chart } = /** @type {{ Chart: typeof import('chart.js').Chart }} */ (/** @type {unknown} */ (window));
  chart = new Chart(canvas, config);
  canvas.setAttribute('aria-label', `${METRICS[metric].label} against coeff, one line per layer`);

  const values = layers.flatMap((l) => coeffs.map((c) => at(l, c).value)).filter((v) => v !== null);
  const min = Math.min(...values);
  const max = Math.max(...values);
  const table = $('heatmap', HTMLTableElement);
  table.replaceChildren();
  const caption = table.createCaption();
  caption.textContent = `${METRICS[metric].label}: layers × coeffs (click a cell for its text)`;
  const head = table.createTHead().insertRow();
  const corner = document.createElement('th');
  corner.textContent = 'layer \\ coeff';
  head.append(corner);
  for (const c of coeffs) {
    const th = document.createElement('th');
    th.scope = 'col';
    th.textContent = String(c);
    head.append(th);
  }
  const body = table.createTBody();
  for (const layer of layers) {
    const row = body.insertRow();
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = String(layer);
    row.append(th);
    for (const coeff of coeffs) {
      const { cells, value } = at(layer, coeff);
      const td = row.insertCell();
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'cell';
      b.textContent = fmt(value, 2);
      b.title = cells[0]?.text ?? '';
      b.style.backgroundColor = heatColour(value, min, max);
      b.setAttribute('aria-label', `layer ${layer}, coeff ${coeff}: ${fmt(value)}`);
      b.addEventListener('click', () => showCell(cells[0]));
      td.append(b);
    }
  }
  const r = s.response;
  $('sweep-status').textContent = `${r.cells.length} cells; baseline: “${r.baseline?.text ?? ''}”`;
  if (r.receipt) {
    offerReceipt('sweep-download', 'sweep-download-slot', r.receipt, `receipt-${r.id ?? 'sweep'}.json`);
    $('sweep-receipt-row').hidden = false;
  }
}

/**
 * One cell's numbers and text, its tokens coloured by KL.
 * @param {SweepCell | undefined} cell
 */
function showCell(cell) {
  if (!cell || !current) return;
  const box = $('cell');
  box.replaceChildren();
  const h = document.createElement('p');
  const t = cell.telemetry;
  h.textContent = `layer ${cell.layer}, coeff ${cell.coeff}, seed ${cell.seed}${t ? `: mean KL ${fmt(t.mean_kl, 4)}, logprob delta ${fmt(t.logprob_delta)}, top-1 flips ${t.top1_flips}` : ''}`;
  const out = document.createElement('div');
  out.className = 'tokens';
  renderTokens(out, current.request.prompt, cell.tokens, 'kl', scaleOf(cell.tokens ?? [], 'kl'));
  box.append(h, out);
}
