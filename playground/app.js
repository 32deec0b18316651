// @ts-check
// The steerd playground: plain DOM, the API on the same origin, Chart.js (served by steerd) for
// sweeps. This module wires the page's controls to the parts that do the work.

import { useKey } from './api.js';
import { clearChat, sendChat } from './chat.js';
import { generate, registerRecipe, renderGeneration, replay } from './generate.js';
import { layerTouched, loadModel, loadOptional, loadVectors, updateHint, vectorChosen } from './model.js';
import { $, busy, field } from './page.js';
import { renderSweep, sweep } from './sweep.js';
import { showToken } from './tokens.js';

/**
 * Enter in these fields runs `fn` with `button` (rather than submitting the form: generating).
 * @param {string[]} ids
 * @param {string} button
 * @param {() => Promise<void>} fn
 */
function onEnter(ids, button, fn) {
  for (const id of ids) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      busy($(button), fn);
    });
  }
}

function wire() {
  const controls = $('controls', HTMLFormElement);
  controls.addEventListener('submit', (e) => {
    e.preventDefault();
    busy($('generate'), generate);
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      controls.requestSubmit();
    }
  });
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy($('chat-send'), sendChat);
  });
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      busy($('chat-send'), sendChat);
    }
  });
  $('chat-clear').addEventListener('click', clearChat);
  onEnter(['recipe-name', 'recipe-positive', 'recipe-negative'], 'recipe-register', registerRecipe);
  onEnter(['sweep-layers', 'sweep-coeffs'], 'sweep', sweep);
  $('recipe-register').addEventListener('click', () => busy($('recipe-register'), registerRecipe));
  $('vectors-refresh').addEventListener('click', () => busy($('vectors-refresh'), () => loadVectors()));
  $('sweep').addEventListener('click', () => busy($('sweep'), sweep));
  $('replay').addEventListener('click', () => busy($('replay'), replay));
  $('colour-by').addEventListener('change', renderGeneration);
  $('sweep-metric').addEventListener('change', renderSweep);
  $('vector').addEventListener('change', vectorChosen);
  $('layer').addEventListener('input', layerTouched);
  for (const id of ['coeff', 'unit']) $(id).addEventListener('input', updateHint);
  for (const id of ['steered-output', 'baseline-output', 'cell']) {
    $(id).addEventListener('mouseover', showToken);
    $(id).addEventListener('click', showToken);
  }
  const keyForm = $('key-form', HTMLFormElement);
  const keySubmit = keyForm.querySelector('button');
  if (!keySubmit) throw new Error('the key form has no button');
  keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    useKey(field('api-key').value.trim());
    busy(keySubmit, start);
  });
}

/** The model card, then the vectors: with the key the server wants, if it wants one. */
async function start() {
  await loadModel();
  await loadVectors();
}

wire();
loadOptional();
busy($('generate'), start);
