// @ts-check
// The form's fields as the fields of a request: sampling, and the intervention.

import { optionalFields } from './model.js';
import { field, num } from './page.js';

/** @typedef {import('./api-types.js').Intervention} Intervention */
/** @typedef {import('./api-types.js').Sampling} Sampling */

/**
 * The sampling fields that are filled in; an empty one is left to the server's default.
 * @returns {Sampling}
 */
export function sampling() {
  const out = {
    max_new_tokens: num(field('max-new-tokens')),
    temperature: num(field('temperature')),
    top_k: num(field('top-k')),
    top_p: num(field('top-p')),
    seed: num(field('seed')),
  };
  return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined));
}

/**
 * The chosen vector at the chosen layer, as one intervention of /v1/generate.
 * @returns {Intervention}
 */
export function intervention() {
  return {
    vector: field('vector').value,
    layer: num(field('layer')),
    coeff: num(field('coeff')),
    unit: field('unit').value,
    positions: field('positions').value,
    ...optionalFields('generate'),
  };
}
