// @ts-check
// Tokens as text spans, coloured by KL or by logprob delta, with their numbers on hover or click.

import { $, fmt } from './page.js';

/** @typedef {import('./api-types.js').Token} Token */
/** @typedef {'kl' | 'delta'} ColourBy what a token's colour shows: its KL, or its logprob's change */

/** Each token span's token, for its details on hover. */
const tokenOf = /** @type {WeakMap<Element, Token>} */ (new WeakMap());

/** The token's logprob less its baseline logprob, where it has both. */
const delta = (/** @type {Token} */ t) =>
  typeof t.logprob === 'number' && typeof t.baseline_logprob === 'number' ? t.logprob - t.baseline_logprob : null;

/**
 * A token's background: stronger the nearer its KL (or |delta|) is to `scale`, the strongest shown.
 * @param {Token} t
 * @param {ColourBy} by
 * @param {number} scale
 */
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

/** @param {Token} t */
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

/**
 * @param {Token} t
 * @param {ColourBy} by
 * @param {number} scale
 */
export function tokenSpan(t, by, scale) {
  const s = document.createElement('span');
  s.className = t.top1_flip ? 'tok flip' : 'tok';
  s.textContent = t.text;
  s.dataset.kl = String(typeof t.kl === 'number' ? t.kl : 0);
  s.dataset.logprob = String(t.logprob);
  if (typeof t.baseline_logprob === 'number') s.dataset.baselineLogprob = String(t.baseline_logprob);
  s.title = tokenDetails(t);
  s.style.backgroundColor = tokenColour(t, by, scale);
  tokenOf.set(s, t);
  return s;
}

/**
 * The prompt, then its tokens, in `el`.
 * @param {HTMLElement} el
 * @param {string} prompt
 * @param {Token[] | undefined} tokens
 * @param {ColourBy} by
 * @param {number} scale
 */
export function renderTokens(el, prompt, tokens, by, scale) {
  el.replaceChildren();
  const p = document.createElement('span');
  p.className = 'prompt';
  p.textContent = prompt;
  el.append(p);
  for (const t of tokens ?? []) el.append(tokenSpan(t, by, scale));
}

/**
 * The strongest KL (or |delta|) of these tokens: the full colour.
 * @param {Token[]} tokens
 * @param {ColourBy} by
 */
export function scaleOf(tokens, by) {
  const vals = tokens.map((t) => (by === 'delta' ? Math.abs(delta(t) ?? 0) : (t.kl ?? 0)));
  return Math.max(0, ...vals);
}

/**
 * A token's numbers, for the token under the pointer (or clicked).
 * @param {Event} event
 */
export function showToken(event) {
  const s = event.target instanceof Element ? event.target.closest('.tok') : null;
  const t = s && tokenOf.get(s);
  if (t) $('token-info').textContent = tokenDetails(t);
}
