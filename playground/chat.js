// @ts-check
// A conversation with the model through its chat template (/v1/chat/completions, streamed),
// steered as the form says: shown where the model has a template.

import { ApiError, chatStream } from './api.js';
import { intervention, sampling } from './form.js';
import { $, field } from './page.js';

/** @typedef {import('./api-types.js').ChatMessage} ChatMessage */
/** @typedef {import('./api-types.js').ChatRequest} ChatRequest */

/** @type {ChatMessage[]} the conversation so far, without the system message */
let turns = [];

/**
 * A message of the conversation in the log.
 * @param {ChatMessage['role']} role
 * @param {string} text
 */
function bubble(role, text) {
  const li = document.createElement('li');
  li.dataset.role = role;
  li.dataset.testid = `chat-${role}`;
  li.textContent = text;
  $('chat-log').append(li);
  return li;
}

/** The message box's text sent as the user's turn; the answer shown as it comes, then kept in the conversation. */
export async function sendChat() {
  const input = field('chat-input');
  const text = input.value.trim();
  if (!text) return;
  const system = field('chat-system').value.trim();
  const asked = [...turns, /** @type {ChatMessage} */ ({ role: 'user', content: text })];
  const s = sampling();
  const vector = field('vector').value;
  /** @type {ChatRequest} */
  const body = {
    messages: system ? [{ role: 'system', content: system }, ...asked] : asked,
    ...(s.max_new_tokens !== undefined && { max_tokens: s.max_new_tokens }),
    ...(s.temperature !== undefined && { temperature: s.temperature }),
    ...(s.top_p !== undefined && { top_p: s.top_p }),
    ...(s.seed !== undefined && { seed: s.seed }),
    interventions: vector ? [intervention()] : [],
  };
  const status = $('chat-status');
  status.textContent = 'answering…';
  const mine = bubble('user', text);
  const answer = bubble('assistant', '');
  let reply = '';
  /** @type {string | null} */
  let finish = null;
  try {
    await chatStream(body, (chunk) => {
      for (const c of chunk.choices) {
        reply += c.delta.content ?? '';
        answer.textContent = reply;
        finish = c.finish_reason ?? finish;
      }
    });
    if (!finish) throw new ApiError(0, 'stream', 'the stream ended before the answer did');
  } catch (e) {
    // a refused or broken turn leaves the conversation as it was
    mine.remove();
    answer.remove();
    status.textContent = '';
    throw e;
  }
  turns = [...asked, { role: 'assistant', content: reply }];
  input.value = '';
  status.textContent = finish === 'length' ? 'the answer reached max new tokens' : '';
}

/** Starts a new conversation. */
export function clearChat() {
  turns = [];
  $('chat-log').replaceChildren();
  $('chat-status').textContent = '';
}
