// @ts-check
// The playground's client of the API on the same origin: JSON calls, the server-sent events of a
// streamed generation, and the API key (kept in this tab only).

/** @typedef {import('./api-types.js').ChatChunk} ChatChunk */
/** @typedef {import('./api-types.js').ChatRequest} ChatRequest */
/** @typedef {import('./api-types.js').ErrorBody} ErrorBody */
/** @typedef {import('./api-types.js').GenerateEvent} GenerateEvent */
/** @typedef {import('./api-types.js').GenerateRequest} GenerateRequest */
/** @typedef {import('./api-types.js').ModelInfo} ModelInfo */
/** @typedef {import('./api-types.js').OpenApiDocument} OpenApiDocument */
/** @typedef {import('./api-types.js').Receipt} Receipt */
/** @typedef {import('./api-types.js').RecipeRequest} RecipeRequest */
/** @typedef {import('./api-types.js').ReplayResponse} ReplayResponse */
/** @typedef {import('./api-types.js').SweepRequest} SweepRequest */
/** @typedef {import('./api-types.js').SweepResponse} SweepResponse */
/** @typedef {import('./api-types.js').VectorList} VectorList */
/** @typedef {import('./api-types.js').VectorMeta} VectorMeta */

const KEY_STORE = 'steerd-api-key';

/** The API key, sent as a bearer token; '' sends none (a server without STEERD_API_KEYS needs none). */
let key = sessionStorage.getItem(KEY_STORE) ?? '';

/**
 * Sends `value` as the API key from now on; the tab remembers it (sessionStorage), nothing else does.
 * @param {string} value
 */
export function useKey(value) {
  key = value;
  sessionStorage.setItem(KEY_STORE, key);
}

/** An error as the API reported it: its HTTP status (0 when none came), code and message. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** @param {Record<string, string>} headers */
function withKey(headers) {
  if (key) headers.authorization = `Bearer ${key}`;
  return headers;
}

/**
 * A fetch whose failure to get any answer (server down, network gone) is an ApiError.
 * @param {string} path
 * @param {RequestInit} init
 */
async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `no answer from the server: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * The error of a refused request, from its body: the API's own code and message where it sent its
 * error shape, else the body or the status text.
 * @param {Response} res
 * @param {string} text the body
 * @param {ErrorBody | null} data the body parsed, if it was JSON
 */
const refused = (res, text, data) =>
  new ApiError(res.status, data?.error?.code ?? 'error', data?.error?.message ?? (text || res.statusText));

/** @param {string} text */
function parsed(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/**
 * One API call, its answer's JSON; errors carry the API's own `error.message`.
 * @template T what the route answers
 * @param {'GET' | 'POST'} method
 * @param {string} path
 * @param {unknown} [body] sent as JSON
 * @returns {Promise<T>}
 */
async function call(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await send(path, {
    method,
    headers: withKey(headers),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const data = parsed(text);
  if (!res.ok) throw refused(res, text, data);
  return data;
}

/**
 * A POST answered with server-sent events (the body gets `stream: true`): `onEvent` for each event
 * as it comes (OpenAI's closing `data: [DONE]` is no event); an `error` event, or an error status
 * before the stream, throws as call() does.
 * @template {{ event: string, data: unknown }} E the route's events
 * @param {string} path
 * @param {object} body
 * @param {(e: E) => void} onEvent
 */
async function streamed(path, body, onEvent) {
  const headers = withKey({ 'content-type': 'application/json', accept: 'text/event-stream' });
  const res = await send(path, { method: 'POST', headers, body: JSON.stringify({ ...body, stream: true }) });
  if (!res.ok) {
    const text = await res.text();
    throw refused(res, text, parsed(text));
  }
  if (!res.body) throw new ApiError(res.status, 'stream', 'the answer has no body');
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
      if (!data || data === '[DONE]') continue; // a keep-alive comment, or the end of OpenAI's stream
      const payload = JSON.parse(data);
      if (event === 'error') throw new ApiError(0, payload.error?.code ?? 'error', payload.error?.message ?? data);
      onEvent(/** @type {E} */ ({ event, data: payload }));
    }
  }
}

/** @returns {Promise<ModelInfo>} the served model: its size, limits and residual-stream norms */
export const getModel = () => call('GET', '/v1/model');

/** @returns {Promise<VectorList>} the stored vectors */
export const listVectors = () => call('GET', '/v1/vectors');

/**
 * @param {RecipeRequest} body
 * @returns {Promise<VectorMeta>} the vector made and stored
 */
export const registerVector = (body) => call('POST', '/v1/vectors', body);

/**
 * A generation, streamed: its tokens as they come, then the rest of the answer.
 * @param {GenerateRequest} body
 * @param {(e: GenerateEvent) => void} onEvent
 */
export const generateStream = (body, onEvent) => streamed('/v1/generate', body, onEvent);

/**
 * A chat completion, streamed: each chunk as it comes.
 * @param {ChatRequest} body
 * @param {(chunk: ChatChunk) => void} onChunk
 */
export const chatStream = (body, onChunk) =>
  streamed('/v1/chat/completions', body, (/** @type {{ event: string, data: ChatChunk }} */ e) => onChunk(e.data));

/**
 * @param {SweepRequest} body
 * @returns {Promise<SweepResponse>}
 */
export const sweep = (body) => call('POST', '/v1/sweep', body);

/**
 * @param {Receipt} receipt
 * @returns {Promise<ReplayResponse>}
 */
export const replay = (receipt) => call('POST', '/v1/replay', { receipt });

/**
 * The API's OpenAPI document (it needs no key), or undefined where there is none to read: then the
 * page offers only the fields every steerd takes.
 * @returns {Promise<OpenApiDocument | undefined>}
 */
export async function openApiDocument() {
  try {
    const res = await fetch('/openapi.json');
    if (!res.ok) return undefined;
    return await res.json();
  } catch {
    return undefined;
  }
}
