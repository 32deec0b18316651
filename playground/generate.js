// @ts-check
// A generation, steered and compared with its unsteered twin: a new vector from two prompts, the
// streamed generation, its telemetry and receipt, and the receipt replayed.

import { ApiError, generateStream, registerVector, replay as replayReceipt } from './api.js';
import { intervention, sampling } from './form.js';
import { loadVectors } from './model.js';
import { $, field, fmt, num, offerReceipt } from './page.js';
import { renderTokens, scaleOf, tokenSpan } from './tokens.js';

/** @typedef {import('./api-types.js').GenerateRequest} GenerateRequest */
/** @typedef {import('./api-types.js').GenerateResponse} GenerateResponse */
/** @typedef {import('./api-types.js').Token} Token */
/** @typedef {import('./tokens.js').ColourBy} ColourBy */

/** @type {{ request: GenerateRequest, response: GenerateResponse } | null} the last generation */
let generation = null;

/** Registers a vector from the recipe's two prompts, at the form's layer, and chooses it. */
export async function registerRecipe() {
  const name = field('recipe-name').value.trim();
  const body = {
    name,
    recipe: {
      kind: /** @type {const} */ ('diff'),
      layer: num(field('layer')),
      positive: field('recipe-positive').value,
      negative: field('recipe-negative').value,
      normalize: $('recipe-normalize', HTMLInputElement).checked,
    },
  };
  const status = $('recipe-status');
  status.textContent = 'registering…';
  try {
    const v = await registerVector(body);
    await loadVectors(v.name);
    status.textContent = `registered ${v.name} (layer ${v.layer}, norm ${fmt(v.norm, 2)})`;
  } catch (e) {
    status.textContent = '';
    throw e;
  }
}

export async function generate() {
  const vector = field('vector').value;
  /** @type {GenerateRequest} */
  const body = {
    prompt: field('prompt').value,
    ...sampling(),
    interventions: vector ? [intervention()] : [],
    telemetry: true,
    compare: true,
  };
  const status = $('gen-status');
  status.textContent = 'generating…';
  // the steered tokens shown as they come; the baseline, telemetry and receipt with the last event
  const out = $('steered-output');
  renderTokens(out, body.prompt, [], 'kl', 0);
  $('baseline-output').replaceChildren();
  /** @type {Token[]} */
  const tokens = [];
  // set by the callback (the cast keeps the checker from taking it for null ever after)
  let done = /** @type {GenerateResponse | null} */ (null);
  try {
    await generateStream(body, (e) => {
      if (e.event === 'token') {
        tokens.push(e.data);
        out.append(tokenSpan(e.data, 'kl', 0));
        status.textContent = `generating… ${tokens.length} tokens`;
      } else if (e.event === 'text') {
        const last = tokens.at(-1);
        if (!last || !out.lastChild) return;
        // text held back (part of a character) released at the end
        last.text += e.data.text;
        out.lastChild.textContent = last.text;
      } else if (e.event === 'done') done = e.data;
    });
    if (!done) throw new ApiError(0, 'stream', 'the stream ended before the generation did');
  } catch (e) {
    status.textContent = '';
    throw e;
  }
  generation = { request: body, response: { ...done, tokens } };
  renderGeneration();
}

/** Runs the last generation's receipt again: the same tokens, or where they diverged. */
export async function replay() {
  const receipt = generation?.response?.receipt;
  if (!receipt) return;
  const result = $('replay-result');
  result.textContent = 'replaying…';
  try {
    const r = await replayReceipt(receipt);
    result.textContent = r.identical
      ? `identical: the same ${r.tokens.length} tokens again`
      : `diverged at token ${r.first_divergence}`;
    result.dataset.identical = String(r.identical);
  } catch (e) {
    result.textContent = '';
    throw e;
  }
}

/** The last generation: steered and baseline tokens on one colour scale, its telemetry, its receipt. */
export function renderGeneration() {
  const g = generation;
  if (!g) return;
  const r = g.response;
  const by = /** @type {ColourBy} */ (field('colour-by').value);
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
  const result = $('replay-result');
  result.textContent = '';
  delete result.dataset.identical;
  $('receipt-row').hidden = !r.receipt;
}
