// @ts-check
// The model card, the vectors, and what the API accepts: what the form offers, and the coefficient's
// meaning at the chosen layer.

import { getModel, listVectors, openApiDocument } from './api.js';
import { $, field, fmt, num } from './page.js';

/** @typedef {import('./api-types.js').ModelInfo} ModelInfo */
/** @typedef {import('./api-types.js').OptionalFields} OptionalFields */
/** @typedef {import('./api-types.js').VectorMeta} VectorMeta */
/** @typedef {'generate' | 'sweep'} Endpoint */

/** @type {ModelInfo | null} the served model, once loaded */
let model = null;
/** @type {VectorMeta[]} the stored vectors, as last listed */
let vectors = [];

/**
 * Intervention fields that not every steerd takes, with their defaults: offered only where the API's
 * OpenAPI document lists them (for /v1/sweep: where its body does), and sent only when not the default.
 * @type {Record<keyof OptionalFields, string>}
 */
const OPTIONAL = { site: 'resid_pre', op: 'add' };

/** @type {Record<Endpoint, Partial<Record<keyof OptionalFields, unknown[]>>>} the optional fields each endpoint takes, and their values */
const optional = { generate: {}, sweep: {} };

/**
 * An object's own entries, typed by its keys.
 * @template {string} K
 * @template V
 * @param {Record<K, V>} o
 * @returns {[K, V][]}
 */
const entries = (o) => /** @type {[K, V][]} */ (Object.entries(o));

/** The model card; the layer and token limits of the form from the model's size. */
export async function loadModel() {
  const m = await getModel();
  model = m;
  $('key-panel').hidden = true;
  /** @type {[string, unknown][]} */
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
  $('chat-panel').hidden = !m.chat_template;
  const layer = $('layer', HTMLInputElement);
  layer.max = String(m.n_layer);
  if (!layer.dataset.touched) layer.value = String(Math.floor(m.n_layer / 2));
  if (m.limits?.max_new_tokens) $('max-new-tokens', HTMLInputElement).max = String(m.limits.max_new_tokens);
  const sweepLayers = field('sweep-layers');
  if (!sweepLayers.value) {
    const picks = [1, Math.floor(m.n_layer / 2), m.n_layer - 1].filter((l) => l >= 0 && l <= m.n_layer);
    sweepLayers.value = [...new Set(picks)].join(', ');
  }
  updateHint();
}

/**
 * The vector list, keeping the chosen one (or choosing `select`) where it is still there.
 * @param {string} [select]
 */
export async function loadVectors(select) {
  const { data } = await listVectors();
  vectors = data ?? [];
  const el = field('vector');
  const keep = select ?? el.value;
  el.replaceChildren(new Option('(none: unsteered)', ''));
  for (const v of vectors) {
    const where = v.layer === null || v.layer === undefined ? '' : `, layer ${v.layer}`;
    el.append(new Option(`${v.name} (${v.kind}${where}, norm ${fmt(v.norm, 2)})`, v.name));
  }
  el.value = vectors.some((v) => v.name === keep) ? keep : '';
  updateHint();
}

/** The optional intervention fields, offered where the API's document lists them. */
export async function loadOptional() {
  const spec = await openApiDocument();
  if (!spec) return;
  const intervention = spec.components?.schemas?.Intervention?.properties ?? {};
  const sweepBody =
    spec.paths?.['/v1/sweep']?.post?.requestBody?.content?.['application/json']?.schema?.properties ?? {};
  for (const [name, fallback] of entries(OPTIONAL)) {
    const values = intervention[name]?.enum;
    if (!Array.isArray(values) || !values.length) continue;
    optional.generate[name] = values;
    if (sweepBody[name]) optional.sweep[name] = values;
    const select = $(name, HTMLSelectElement);
    select.replaceChildren(...values.map((v) => new Option(String(v), String(v))));
    select.value = values.includes(fallback) ? fallback : String(values[0]);
    $(`${name}-label`).hidden = false;
  }
}

/**
 * The optional fields `where` takes, where they differ from their defaults.
 * @param {Endpoint} where
 * @returns {OptionalFields}
 */
export function optionalFields(where) {
  /** @type {OptionalFields} */
  const out = {};
  for (const [name, fallback] of entries(OPTIONAL)) {
    const value = field(name).value;
    if (optional[where][name] && value && value !== fallback) out[name] = value;
  }
  return out;
}

/** What the coefficient means at the chosen layer: the norm it adds. */
export function updateHint() {
  const layer = num(field('layer'));
  const coeff = Number(field('coeff').value);
  const hint = $('coeff-hint');
  if (field('unit').value === 'resid_norm') {
    const norm = model?.resid_norms?.layers?.find((l) => l.layer === layer)?.median;
    hint.textContent =
      norm === undefined
        ? 'resid_norm: coeff × the median residual-stream norm at this layer.'
        : `resid_norm: added norm ≈ ${fmt(coeff * norm, 2)} (median norm at layer ${layer}: ${fmt(norm, 2)}).`;
  } else {
    const v = vectors.find((x) => x.name === field('vector').value);
    hint.textContent = v
      ? `absolute: coeff × the stored values, an added norm of ${fmt(Math.abs(coeff) * v.norm, 2)}.`
      : 'absolute: coeff multiplies the stored values.';
  }
}

/** A vector chosen: the layer it was made at becomes the form's (as if typed there). */
export function vectorChosen() {
  const v = vectors.find((x) => x.name === field('vector').value);
  if (typeof v?.layer === 'number') {
    const layer = field('layer');
    layer.value = String(v.layer);
    layer.dataset.touched = 'true';
  }
  updateHint();
}

/** A layer typed: the model's default no longer replaces it. */
export function layerTouched() {
  field('layer').dataset.touched = 'true';
  updateHint();
}
