// The steerd playground: plain DOM, the API on the same origin, Chart.js (served by steerd) for sweeps.

const $ = (id) => document.getElementById(id);
const KEY_STORE = 'steerd-api-key';

const state = {
  key: sessionStorage.getItem(KEY_STORE) ?? '',
  model: null,
  vectors: [],
  /** the optional intervention fields each endpoint takes (from the OpenAPI document), and their values */
  optional: { generate: {}, sweep: {} },
  generation: null,
  sweep: null,
  chart: null,
  /** object URLs of the receipts offered for download, by link id */
  downloadUrls: {},
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One API call; errors carry the API's own `error.message`. */
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', `no answer from the server: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = data?.error;
    throw new ApiError(res.status, err?.code ?? 'error', err?.message ?? (text || res.statusText));
  }
  return data;
}

/**
 * A POST answered with server-sent events (the body gets `stream: true`): `onEvent(name, data)` for
 * each event as it comes; an `error` event, or an error status before the stream, throws as api() does.
 */
async function streamed(path, body, onEvent) {
  const headers = { 'content-type': 'application/json', accept: 'text/event-stream' };
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  let res;
  try {
    res = await fetch(path, { method: 'POST', headers, body: JSON.stringify({ ...body, stream: true }) });
  } catch (e) {
    throw new ApiError(0, 'network', `no answer from the server: ${e.message}`);
  }
  if (!res.ok) {
    const text = await res.text();
    let err = null;
    try {
      err = JSON.parse(text)?.error;
    } catch {
      err = null;
    }
    throw new ApiError(res.status, err?.code ?? 'error', err?.message ?? (text || res.statusText));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trimStart();
      }
      if (!data) continue; // a keep-alive comment
      const parsed = JSON.parse(data);
      if (event === 'error') throw new ApiError(0, parsed.error?.code ?? 'error', parsed.error?.message ?? data);
      onEvent(event, parsed);
    }
  }
}

function showError(e) {
  const box = $('error');
  if (!e) {
    box.hidden = true;
    return;
  }
  $('error-code').textContent = e.status ? `${e.status} ${e.code}` : (e.code ?? 'error');
  $('error-message').textContent = e.message;
  box.hidden = false;
  if (e.status === 401) askForKey();
}

function askForKey() {
  $('key-panel').hidden = false;
  $('api-key').focus();
}

/**
 * Runs `fn` once at a time per button, its errors shown. The button stays enabled (a disabled
 * button would lose the keyboard focus): marked busy, and a press while busy does nothing.
 */
async function busy(button, fn) {
  if (button.getAttribute('aria-busy') === 'true') return;
  button.setAttribute('aria-busy', 'true');
  try {
    showError(null);
    await fn();
  } catch (e) {
    showError(e);
  } finally {
    button.removeAttribute('aria-busy');
  }
}

const fmt = (x, digits = 3) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '–');
const num = (el) => (el.value.trim() === '' ? undefined : Number(el.value));

// ---------------------------------------------------------------------------------------------
// The model card, the vectors, and what the API accepts.

async function loadModel() {
  const m = await api('GET', '/v1/model');
  state.model = m;
  $('key-panel').hidden = true;
  const rows = [
    ['id', m.id],
    ['name', m.name],
    ['layers', `${m.n_layer} (hook points 0..${m.n_layer})`],
    ['hidden size', m.n_embd],
    ['heads', m.n_head],
    ['context', m.n_positions],
    ['provider', m.provider],
    ['max new tokens', m.limits?.max_new_tokens],
  ];
  const card = $('model-card');
  card.replaceChildren();
  for (const [k, v] of rows) {
    if (v === undefined || v === null) continue;
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = String(v);
    dd.dataset.field = k;
    const pair = document.createElement('div');
    pair.append(dt, dd);
    card.append(pair);
  }
  $('random-warning').hidden = !m.random_weights;
  const layer = $('layer');
  layer.max = String(m.n_layer);
  if (!layer.dataset.touched) layer.value = String(Math.floor(m.n_layer / 2));
  if (m.limits?.max_new_tokens) $('max-new-tokens').max = String(m.limits.max_new_tokens);
  if (!$('sweep-layers').value) {
    const picks = [1, Math.floor(m.n_layer / 2), m.n_layer - 1].filter((l) => l >= 0 && l <= m.n_layer);
    $('sweep-layers').value = [...new Set(picks)].join(', ');
  }
  updateHint();
}

async function loadVectors(select) {
  const { data } = await api('GET', '/v1/vectors');
  state.vectors = data ?? [];
  const el = $('vector');
  const keep = select ?? el.value;
  el.replaceChildren(new Option('(none: unsteered)', ''));
  for (const v of state.vectors) {
    const where = v.layer === null || v.layer === undefined ? '' : `, layer ${v.layer}`;
    el.append(new Option(`${v.name} (${v.kind}${where}, norm ${fmt(v.norm, 2)})`, v.name));
  }
  el.value = state.vectors.some((v) => v.name === keep) ? keep : '';
  updateHint();
}

/**
 * Intervention fields that not every steerd takes, with their defaults: offered only where the API's
 * OpenAPI document lists them (for /v1/sweep: where its body does), and sent only when not the default.
 */
const OPTIONAL = { site: 'resid_pre', op: 'add' };

async function loadOptional() {
  let spec;
  try {
    const res = await fetch('/openapi.json');
    if (!res.ok) return;
    spec = await res.json();
  } catch {
    return;
  }
  const intervention = spec.components?.schemas?.Intervention?.properties ?? {};
  const sweepBody =
    spec.paths?.['/v1/sweep']?.post?.requestBody?.content?.['application/json']?.schema?.properties ?? {};
  for (const [field, fallback] of Object.entries(OPTIONAL)) {
    const values = intervention[field]?.enum;
    if (!Array.isArray(values) || !values.length) continue;
    state.optional.generate[field] = values;
    if (sweepBody[field]) state.optional.sweep[field] = values;
    const select = $(field);
    select.replaceChildren(...values.map((v) => new Option(v, v)));
    select.value = values.includes(fallback) ? fallback : values[0];
    $(`${field}-label`).hidden = false;
  }
}

/** The optional fields `where` (generate or sweep) takes, where they differ from their defaults. */
function optionalFields(where) {
  const out = {};
  for (const [field, fallback] of Object.entries(OPTIONAL)) {
    const value = $(field).value;
    if (state.optional[where][field] && value && value !== fallback) out[field] = value;
  }
  return out;
}

function updateHint() {
  const m = state.model;
  const layer = num($('layer'));
  const coeff = Number($('coeff').value);
  const hint = $('coeff-hint');
  if ($('unit').value === 'resid_norm') {
    const norm = m?.resid_norms?.layers?.find((l) => l.layer === layer)?.median;
    hint.textContent =
      norm === undefined
        ? 'resid_norm: coeff × the median residual-stream norm at this layer.'
        : `resid_norm: added norm ≈ ${fmt(coeff * norm, 2)} (median norm at layer ${layer}: ${fmt(norm, 2)}).`;
  } else {
    const v = state.vectors.find((x) => x.name === $('vector').value);
    hint.textContent = v
      ? `absolute: coeff × the stored values, an added norm of ${fmt(Math.abs(coeff) * v.norm, 2)}.`
      : 'absolute: coeff multiplies the stored values.';
  }
}

// ---------------------------------------------------------------------------------------------
// Requests from the form.

function sampling() {
  const out = {
    max_new_tokens: num($('max-new-tokens')),
    temperature: num($('temperature')),
    top_k: num($('top-k')),
    top_p: num($('top-p')),
    seed: num($('seed')),
  };
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined));
}

function intervention() {
  return {
    vector: $('vector').value,
    layer: num($('layer')),
    coeff: num($('coeff')),
    unit: $('unit').value,
    positions: $('positions').value,
    ...optionalFields('generate'),
  };
}

async function registerRecipe() {
  const name = $('recipe-name').value.trim();
  const body = {
    name,
    recipe: {
      kind: 'diff',
      layer: num($('layer')),
      positive: $('recipe-positive').value,
      negative: $('recipe-negative').value,
      normalize: $('recipe-normalize').checked,
    },
  };
  $('recipe-status').textContent = 'registering…';
  try {
    const v = await api('POST', '/v1/vectors', body);
    await loadVectors(v.name);
    $('recipe-status').textContent = `registered ${v.name} (layer ${v.layer}, norm ${fmt(v.norm, 2)})`;
  } catch (e) {
    $('recipe-status').textContent = '';
    throw e;
  }
}

async function generate() {
  const vector = $('vector').value;
  const body = {
    prompt: $('prompt').value,
    ...sampling(),
    interventions: vector ? [intervention()] : [],
    telemetry: true,
    compare: true,
  };
  $('gen-status').textContent = 'generating…';
  // the steered tokens shown as they come; the baseline, telemetry and receipt with the last event
  const out = $('steered-output');
  renderTokens(out, body.prompt, [], 'kl', 0);
  $('baseline-output').replaceChildren();
  const tokens = [];
  let done = null;
  try {
    await streamed('/v1/generate', body, (event, data) => {
      if (event === 'token') {
        tokens.push(data);
        out.append(tokenSpan(data, 'kl', 0));
        $('gen-status').textContent = `generating… ${tokens.length} tokens`;
      } else if (event === 'text' && tokens.length) {
        // text held back (part of a character) released at the end
        tokens.at(-1).text += data.text;
        out.lastChild.textContent = tokens.at(-1).text;
      } else if (event === 'done') done = data;
    });
    if (!done) throw new ApiError(0, 'stream', 'the stream ended before the generation did');
  } catch (e) {
    $('gen-status').textContent = '';
    throw e;
  }
  state.generation = { request: body, response: { ...done, tokens } };
  renderGeneration();
}

async function replay() {
  const receipt = state.generation?.response?.receipt;
  if (!receipt) return;
  $('replay-result').textContent = 'replaying…';
  try {
    const r = await api('POST', '/v1/replay', { receipt });
    $('replay-result').textContent = r.identical
      ? `identical: the same ${r.tokens.length} tokens again`
      : `diverged at token ${r.first_divergence}`;
    $('replay-result').dataset.identical = String(r.identical);
  } catch (e) {
    $('replay-result').textContent = '';
    throw e;
  }
}

/** Comma- or space-separated numbers; integers where asked. */
function numbers(el, what, integer) {
  const parts = el.value.split(/[\s,]+/).filter(Boolean);
  const out = parts.map(Number);
  const bad = parts.find((_p, i) => !Number.isFinite(out[i]) || (integer && !Number.isInteger(out[i])));
  if (bad !== undefined || !out.length)
    throw new ApiError(0, 'invalid_input', `${what}: "${bad ?? ''}" is not ${integer ? 'an integer' : 'a number'}`);
  return out;
}

async function sweep() {
  const vector = $('vector').value;
  if (!vector) throw new ApiError(0, 'invalid_input', 'choose or register a vector to sweep');
  const { seed, ...rest } = sampling();
  const body = {
    prompt: $('prompt').value,
    vector,
    layers: numbers($('sweep-layers'), 'layers', true),
    coeffs: numbers($('sweep-coeffs'), 'coeffs', false),
    unit: $('unit').value,
    positions: $('positions').value,
    ...rest,
    ...(seed !== undefined && { seed }),
    ...optionalFields('sweep'),
  };
  $('sweep-status').textContent = `sweeping ${body.layers.length} × ${body.coeffs.length} cells…`;
  try {
    state.sweep = { request: body, response: await api('POST', '/v1/sweep', body) };
  } catch (e) {
    $('sweep-status').textContent = '';
    throw e;
  }
  renderSweep();
}

// ---------------------------------------------------------------------------------------------
// Tokens, coloured by KL or by logprob delta.

const delta = (t) =>
  typeof t.logprob === 'number' && typeof t.baseline_logprob === 'number' ? t.logprob - t.baseline_logprob : null;

function tokenColour(t, by, scale) {
  if (by === 'delta') {
    const d = delta(t);
    if (d === null || scale <= 0) return '';
    const a = Math.min(1, Math.abs(d) / scale) * 0.7;
    return d >= 0 ? `rgba(16, 150, 72, ${a})` : `rgba(214, 39, 40, ${a})`;
  }
  if (typeof t.kl !== 'number' || scale <= 0) return '';
  return `rgba(235, 120, 0, ${Math.min(1, t.kl / scale) * 0.75})`;
}

function tokenDetails(t) {
  const parts = [`“${t.text}”`, `logprob ${fmt(t.logprob)}`];
  if (typeof t.baseline_logprob === 'number') parts.push(`baseline ${fmt(t.baseline_logprob)}`);
  if (delta(t) !== null) parts.push(`Δ ${fmt(delta(t))}`);
  if (typeof t.kl === 'number') parts.push(`KL ${fmt(t.kl, 4)}`);
  if (t.top1_flip) parts.push('top-1 flip');
  const proj = (t.projections ?? []).filter((p) => typeof p === 'number');
  if (proj.length) parts.push(`projection ${proj.map((p) => fmt(p, 2)).join(', ')}`);
  return parts.join(' · ');
}

function tokenSpan(t, by, scale) {
  const s = document.createElement('span');
  s.className = t.top1_flip ? 'tok flip' : 'tok';
  s.textContent = t.text;
  s.dataset.kl = String(typeof t.kl === 'number' ? t.kl : 0);
  s.dataset.logprob = String(t.logprob);
  if (typeof t.baseline_logprob === 'number') s.dataset.baselineLogprob = String(t.baseline_logprob);
  s.title = tokenDetails(t);
  s.style.backgroundColor = tokenColour(t, by, scale);
  s.tokenData = t;
  return s;
}

function renderTokens(el, prompt, tokens, by, scale) {
  el.replaceChildren();
  const p = document.createElement('span');
  p.className = 'prompt';
  p.textContent = prompt;
  el.append(p);
  for (const t of tokens ?? []) el.append(tokenSpan(t, by, scale));
}

/** A link that saves `{receipt}` as a JSON file, in place of the element `slot` (or the link made before). */
function offerReceipt(linkId, slot, receipt, filename) {
  if (state.downloadUrls[linkId]) URL.revokeObjectURL(state.downloadUrls[linkId]);
  const blob = new Blob([`${JSON.stringify({ receipt }, null, 2)}\n`], { type: 'application/json' });
  state.downloadUrls[linkId] = URL.createObjectURL(blob);
  let a = $(linkId);
  if (!a) {
    a = document.createElement('a');
    a.id = linkId;
    a.dataset.testid = `${linkId}-receipt`;
    a.className = 'button secondary';
    a.textContent = 'Download receipt (JSON)';
    $(slot).replaceWith(a);
  }
  a.href = state.downloadUrls[linkId];
  a.download = filename;
}

function scaleOf(tokens, by) {
  const vals = tokens.map((t) => (by === 'delta' ? Math.abs(delta(t) ?? 0) : (t.kl ?? 0)));
  return Math.max(0, ...vals);
}

function renderGeneration() {
  const g = state.generation;
  if (!g) return;
  const r = g.response;
  const by = $('colour-by').value;
  const all = [...(r.tokens ?? []), ...(r.baseline?.tokens ?? [])];
  const scale = scaleOf(all, by);
  renderTokens($('steered-output'), g.request.prompt, r.tokens, by, scale);
  renderTokens($('baseline-output'), g.request.prompt, r.baseline?.tokens, by, scale);
  const t = r.telemetry;
  const applied = (r.interventions ?? [])
    .map(
      (i) =>
        `${i.vector ?? 'inline'} at layer ${i.layer}, coeff ${i.coeff} ${i.unit}${i.site && i.site !== 'resid_pre' ? ` at ${i.site}` : ''}${i.op && i.op !== 'add' ? ` (${i.op})` : ''} → applied coeff ${fmt(i.applied_coeff)}, norm ${fmt(i.applied_norm, 2)}`,
    )
    .join('; ');
  $('summary').textContent = [
    t &&
      `mean KL ${fmt(t.mean_kl, 4)} · max KL ${fmt(t.max_kl, 4)} · top-1 flips ${t.top1_flips} · logprob delta ${fmt(t.logprob_delta)}`,
    applied ? `applied: ${applied}` : 'no intervention',
    `seed ${r.seed}`,
    `colour: ${by === 'delta' ? 'logprob − baseline logprob (green up, red down)' : 'KL(steered ‖ unsteered)'}, strongest = ${fmt(scale, 3)}`,
  ]
    .filter(Boolean)
    .join('. ');
  $('gen-status').textContent = `${r.tokens?.length ?? 0} tokens, ${fmt(r.timings?.total_ms, 0)} ms.`;
  offerReceipt('download', 'download-slot', r.receipt, `receipt-${r.id ?? 'steerd'}.json`);
  $('replay-result').textContent = '';
  delete $('replay-result').dataset.identical;
  $('receipt-row').hidden = !r.receipt;
}

function showToken(event) {
  const s = event.target.closest?.('.tok');
  if (s?.tokenData) $('token-info').textContent = tokenDetails(s.tokenData);
}

// ---------------------------------------------------------------------------------------------
// Sweeps: one line per layer against the coefficient, and a heatmap of the same numbers.

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
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

/** The sweep's cells per (layer, coeff), averaged over seeds. */
function grid(res, metric) {
  const layers = [...new Set(res.cells.map((c) => c.layer))].sort((a, b) => a - b);
  const coeffs = [...new Set(res.cells.map((c) => c.coeff))].sort((a, b) => a - b);
  const at = (layer, coeff) => {
    const cells = res.cells.filter((c) => c.layer === layer && c.coeff === coeff);
    const vals = cells.map(METRICS[metric].of).filter((v) => typeof v === 'number');
    return { cells, value: vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null };
  };
  return { layers, coeffs, at };
}

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

function renderSweep() {
  const s = state.sweep;
  if (!s) return;
  const metric = $('sweep-metric').value;
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
  const canvas = $('sweep-chart');
  state.chart?.destroy();
  state.chart = new window.Chart(canvas, {
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
            label: (ctx) => `${ctx.dataset.label}, coeff ${ctx.raw.x}: ${fmt(ctx.raw.y)}`,
            afterLabel: (ctx) => {
              const text = ctx.raw.cell?.text ?? '';
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
  });
  canvas.setAttribute('aria-label', `${METRICS[metric].label} against coeff, one line per layer`);

  const values = layers.flatMap((l) => coeffs.map((c) => at(l, c).value)).filter((v) => v !== null);
  const min = Math.min(...values);
  const max = Math.max(...values);
  const table = $('heatmap');
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

function showCell(cell) {
  if (!cell) return;
  const box = $('cell');
  box.replaceChildren();
  const h = document.createElement('p');
  const t = cell.telemetry;
  h.textContent = `layer ${cell.layer}, coeff ${cell.coeff}, seed ${cell.seed}${t ? `: mean KL ${fmt(t.mean_kl, 4)}, logprob delta ${fmt(t.logprob_delta)}, top-1 flips ${t.top1_flips}` : ''}`;
  const out = document.createElement('div');
  out.className = 'tokens';
  renderTokens(out, state.sweep.request.prompt, cell.tokens, 'kl', scaleOf(cell.tokens ?? [], 'kl'));
  box.append(h, out);
}

// ---------------------------------------------------------------------------------------------

function wire() {
  $('controls').addEventListener('submit', (e) => {
    e.preventDefault();
    busy($('generate'), generate);
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $('controls').requestSubmit();
    }
  });
  // Enter in the recipe's fields registers the vector rather than generating
  for (const id of ['recipe-name', 'recipe-positive', 'recipe-negative']) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      busy($('recipe-register'), registerRecipe);
    });
  }
  // Enter in the sweep's fields sweeps
  for (const id of ['sweep-layers', 'sweep-coeffs']) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      busy($('sweep'), sweep);
    });
  }
  $('recipe-register').addEventListener('click', () => busy($('recipe-register'), registerRecipe));
  $('vectors-refresh').addEventListener('click', () => busy($('vectors-refresh'), () => loadVectors()));
  $('sweep').addEventListener('click', () => busy($('sweep'), sweep));
  $('replay').addEventListener('click', () => busy($('replay'), replay));
  $('colour-by').addEventListener('change', renderGeneration);
  $('sweep-metric').addEventListener('change', renderSweep);
  $('vector').addEventListener('change', () => {
    const v = state.vectors.find((x) => x.name === $('vector').value);
    if (typeof v?.layer === 'number') {
      $('layer').value = String(v.layer);
      $('layer').dataset.touched = 'true';
    }
    updateHint();
  });
  $('layer').addEventListener('input', () => {
    $('layer').dataset.touched = 'true';
    updateHint();
  });
  for (const id of ['coeff', 'unit']) $(id).addEventListener('input', updateHint);
  for (const id of ['steered-output', 'baseline-output', 'cell']) {
    $(id).addEventListener('mouseover', showToken);
    $(id).addEventListener('click', showToken);
  }
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.key = $('api-key').value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    busy($('key-form').querySelector('button'), start);
  });
}

async function start() {
  await loadModel();
  await loadVectors();
}

wire();
loadOptional();
busy($('generate'), start);
