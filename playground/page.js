// @ts-check
// What every part of the page shares: its elements and fields, how it shows numbers, the error box,
// busy buttons and receipt downloads.

import { ApiError } from './api.js';

/** @typedef {import('./api-types.js').Receipt} Receipt */
/** @typedef {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement} Field */

/**
 * The page's element with this id, of this kind (by default any element): one missing, or of
 * another kind, is a mistake in index.html, so it throws.
 * @template {typeof HTMLElement} [K=typeof HTMLElement]
 * @param {string} id
 * @param {K} [kind]
 * @returns {InstanceType<K>}
 */
export function $(id, kind) {
  const el = document.getElementById(id);
  if (!(el instanceof (kind ?? HTMLElement))) throw new Error(`the page has no ${kind?.name ?? 'element'} #${id}`);
  return /** @type {InstanceType<K>} */ (el);
}

/**
 * The form field (input, select or text area) with this id.
 * @param {string} id
 * @returns {Field}
 */
export function field(id) {
  const el = $(id);
  if (el instanceof HTMLInputElement || el instanceof HTMLSelectElement || el instanceof HTMLTextAreaElement) return el;
  throw new Error(`#${id} is not a form field`);
}

/** A number as the page shows it, or – for none. */
export const fmt = (/** @type {unknown} */ x, digits = 3) =>
  typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '–';

/** A number field's value, or undefined when it is empty (the server's default then). */
export const num = (/** @type {Field} */ el) => (el.value.trim() === '' ? undefined : Number(el.value));

/**
 * Comma- or space-separated numbers; integers where asked. Anything else is an error shown as the
 * API's are, before any request.
 * @param {Field} el
 * @param {string} what the field's name, for the message
 * @param {boolean} integer
 */
export function numbers(el, what, integer) {
  const parts = el.value.split(/[\s,]+/).filter(Boolean);
  const out = parts.map(Number);
  const bad = parts.find((_p, i) => !Number.isFinite(out[i]) || (integer && !Number.isInteger(out[i])));
  if (bad !== undefined || !out.length)
    throw new ApiError(0, 'invalid_input', `${what}: "${bad ?? ''}" is not ${integer ? 'an integer' : 'a number'}`);
  return out;
}

/**
 * Shows an error (the API's status, code and message), or hides the box for none. A 401 asks for the key.
 * @param {{ status?: number, code?: string, message: string } | null} e
 */
export function showError(e) {
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

export function askForKey() {
  $('key-panel').hidden = false;
  $('api-key').focus();
}

/**
 * Runs `fn` once at a time per button, its errors shown. The button stays enabled (a disabled
 * button would lose the keyboard focus): marked busy, and a press while busy does nothing.
 * @param {HTMLElement} button
 * @param {() => Promise<void>} fn
 */
export async function busy(button, fn) {
  if (button.getAttribute('aria-busy') === 'true') return;
  button.setAttribute('aria-busy', 'true');
  try {
    showError(null);
    await fn();
  } catch (e) {
    // what the page's own code throws is an Error (an ApiError for what the API refused)
    showError(/** @type {Error} */ (e));
  } finally {
    button.removeAttribute('aria-busy');
  }
}

/** @type {Map<string, string>} object URLs of the receipts offered for download, by link id (revoked when replaced) */
const downloadUrls = new Map();

/**
 * A link that saves `{receipt}` as a JSON file, in place of the element `slot` (or the link made before).
 * @param {string} linkId
 * @param {string} slot
 * @param {Receipt | undefined} receipt
 * @param {string} filename
 */
export function offerReceipt(linkId, slot, receipt, filename) {
  const old = downloadUrls.get(linkId);
  if (old) URL.revokeObjectURL(old);
  const blob = new Blob([`${JSON.stringify({ receipt }, null, 2)}\n`], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  downloadUrls.set(linkId, url);
  const made = document.getElementById(linkId);
  let a = made instanceof HTMLAnchorElement ? made : null;
  if (!a) {
    a = document.createElement('a');
    a.id = linkId;
    a.dataset.testid = `${linkId}-receipt`;
    a.className = 'button secondary';
    a.textContent = 'Download receipt (JSON)';
    $(slot).replaceWith(a);
  }
  a.href = url;
  a.download = filename;
}
