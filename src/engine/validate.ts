import { BadRequestError, UnprocessableError } from '../errors.js';
import { isSite, maxLayer, SITES, type Site } from '../model/hooks.js';
import { SAMPLING_DEFAULTS as D } from './defaults.js';
import { classOf } from './kv/budget.js';
import type { ActivationsRequest, GenerateRequest, Intervention, ModelInfo } from './types.js';

/**
 * Stop strings a request may give (the API's schemas say the same). The engine takes one more: the
 * end of a chat turn that a `messages` request adds to its own (src/api/chat.ts).
 */
export const MAX_STOP = 16;

/**
 * Checks a request against its documented ranges (400) and against the model (422) before it can
 * reach a batch. Every message names the limit it hit.
 */

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

function checkPrompt(prompt: unknown, info: ModelInfo): number[] {
  if (!Array.isArray(prompt) || prompt.length === 0) throw new BadRequestError('prompt is empty');
  for (const id of prompt) {
    if (!isInt(id) || id < 0 || id >= info.vocab_size) {
      throw new BadRequestError(`prompt token ${JSON.stringify(id)} is not an id in 0..${info.vocab_size - 1}`);
    }
  }
  return prompt;
}

/** A hook site: one of the sites (400), and one the serving graph was built with (422). */
function checkSite(site: unknown, info: ModelInfo, where: string): Site {
  if (site === undefined) return 'resid_pre';
  if (!isSite(site)) throw new BadRequestError(`${where} must be one of ${SITES.join(', ')}`);
  if (!info.hook_sites.includes(site))
    throw new UnprocessableError(
      `${where} ${site} is not enabled on this server (STEERD_HOOK_SITES: ${info.hook_sites.join(', ')})`,
    );
  return site;
}

/** The largest finite float32: the residual stream's type. */
const FLOAT32_MAX = 3.4028234663852886e38;

export function checkInterventions(list: Intervention[] | undefined, promptLength: number, info: ModelInfo): void {
  for (const [i, iv] of (list ?? []).entries()) {
    const where = `interventions[${i}]`;
    const site = checkSite(iv.site, info, `${where}.site`);
    const top = maxLayer(site, info.n_layer);
    if (!isInt(iv.layer) || iv.layer < 0 || iv.layer > top) {
      throw new UnprocessableError(
        `${where}.layer ${iv.layer} is out of range: this model's ${site} hook points are 0..${top}`,
      );
    }
    const op = iv.op ?? 'add';
    if (!['add', 'ablate', 'clamp'].includes(op)) throw new BadRequestError(`${where}.op must be add, ablate or clamp`);
    if (typeof iv.coeff !== 'number' || !Number.isFinite(iv.coeff))
      throw new BadRequestError(`${where}.coeff must be a finite number`);
    if (!isInt(iv.rows) || iv.rows < 1) throw new BadRequestError(`${where} has no vector rows`);
    if (!(iv.values instanceof Float32Array) || iv.values.length !== iv.rows * info.n_embd) {
      throw new UnprocessableError(
        `${where}: vector has ${iv.values?.length ?? 0} values, expected ${iv.rows} × ${info.n_embd} (this model's hidden size)`,
      );
    }
    let peak = 0;
    for (const v of iv.values) {
      if (!Number.isFinite(v)) throw new BadRequestError(`${where}: vector values must be finite (got ${v})`);
      peak = Math.max(peak, Math.abs(v));
    }
    if (peak * Math.abs(iv.coeff) > FLOAT32_MAX) {
      throw new UnprocessableError(
        `${where}: coeff × vector reaches ${(peak * Math.abs(iv.coeff)).toExponential(2)}, beyond float32's range (${FLOAT32_MAX.toExponential(2)})`,
      );
    }
    const positions = iv.positions ?? (iv.rows === 1 ? 'all' : 'front');
    if (!['all', 'prompt', 'generated', 'front'].includes(positions)) {
      throw new BadRequestError(`${where}.positions must be one of all, prompt, generated, front`);
    }
    if (iv.rows > 1 && op !== 'add') {
      throw new UnprocessableError(
        `${where}: ${op} takes a direction; a sequence vector (${iv.rows} rows) can only add`,
      );
    }
    if (op !== 'add' && peak === 0) throw new UnprocessableError(`${where}: ${op} needs a non-zero direction`);
    if (op !== 'add' && positions === 'front')
      throw new UnprocessableError(`${where}: ${op} applies at all, prompt or generated positions, not front`);
    if (iv.rows > 1 && positions !== 'front') {
      throw new UnprocessableError(`${where}: a sequence vector (${iv.rows} rows) applies to the front positions only`);
    }
    if (positions === 'front' && iv.rows > promptLength) {
      throw new UnprocessableError(
        `${where}: a ${iv.rows}-row sequence needs a prompt of at least ${iv.rows} tokens (got ${promptLength})`,
      );
    }
  }
}

/**
 * Requests already checked, by object: a request session checks every run of a request before it
 * posts any (docs/architecture.md §2.1), and the engine it posts them to does not check them again.
 */
const checked = new WeakSet<GenerateRequest>();

/** The engine's rules for a generation request, once per request object. */
export function validateGenerate(req: GenerateRequest, info: ModelInfo, maxContext = info.n_positions): void {
  if (checked.has(req)) return;
  checkGenerate(req, info, maxContext);
  checked.add(req);
}

function checkGenerate(req: GenerateRequest, info: ModelInfo, maxContext: number): void {
  const prompt = checkPrompt(req.prompt, info);
  const n = req.max_new_tokens ?? D.max_new_tokens;
  if (!isInt(n) || n < 0) throw new BadRequestError(`max_new_tokens must be an integer >= 0 (got ${n})`);
  if (prompt.length + n > maxContext) {
    throw new UnprocessableError(
      `prompt (${prompt.length} tokens) + max_new_tokens (${n}) exceeds the context (${maxContext})`,
    );
  }
  for (const key of ['top_logprobs', 'prompt_logprobs'] as const) {
    const v = req[key];
    if (v !== undefined && (!isInt(v) || v < 0 || v > 20))
      throw new BadRequestError(`${key} must be an integer in 0..20 (got ${v})`);
  }
  if (req.telemetry !== undefined && typeof req.telemetry !== 'boolean')
    throw new BadRequestError('telemetry must be a boolean');
  const kv = info.kv_cache;
  if (kv) {
    // telemetry runs an unsteered twin: a second row, and a second reservation of the same class
    const rows = req.telemetry ? 2 : 1;
    const cls = classOf(kv.classes, prompt.length + n);
    if (cls < 0 || rows * kv.classes[cls] > kv.tokens) {
      const needed = cls < 0 ? prompt.length + n : rows * kv.classes[cls];
      throw new UnprocessableError(
        `prompt (${prompt.length} tokens) + max_new_tokens (${n})${rows > 1 ? ', with telemetry (an unsteered twin, twice the reservation),' : ''} needs ${needed} tokens of KV cache, more than the engine holds (kv_cache_tokens: ${kv.tokens})`,
        { kv_cache_tokens: kv.tokens, needed },
      );
    }
    if (rows > kv.max_rows)
      throw new UnprocessableError(
        `telemetry needs two rows of the batch (the unsteered twin); this engine decodes ${kv.max_rows} at most`,
      );
  }
  const t = req.temperature ?? D.temperature;
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0)
    throw new BadRequestError(`temperature must be a finite number >= 0 (got ${t})`);
  const k = req.top_k ?? D.top_k;
  if (!isInt(k) || k < 0) throw new BadRequestError(`top_k must be an integer >= 0 (got ${k})`);
  const p = req.top_p ?? D.top_p;
  if (typeof p !== 'number' || !(p > 0 && p <= 1)) throw new BadRequestError(`top_p must be in (0, 1] (got ${p})`);
  for (const key of ['frequency_penalty', 'presence_penalty'] as const) {
    const v = req[key] ?? D[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < -2 || v > 2)
      throw new BadRequestError(`${key} must be in [-2, 2] (got ${v})`);
  }
  if (req.seed !== undefined && (!isInt(req.seed) || !Number.isSafeInteger(req.seed))) {
    throw new BadRequestError(
      `seed must be an integer in [-(2^53 - 1), 2^53 - 1], the exactly representable ones (got ${req.seed})`,
    );
  }
  if (req.stop !== undefined) {
    if (
      !Array.isArray(req.stop) ||
      req.stop.length > MAX_STOP + 1 ||
      req.stop.some((s) => typeof s !== 'string' || s.length === 0)
    ) {
      throw new BadRequestError(`stop must be a list of at most ${MAX_STOP} non-empty strings`);
    }
  }
  checkInterventions(req.interventions, prompt.length, info);
}

export function validateActivations(req: ActivationsRequest, info: ModelInfo, maxContext = info.n_positions): void {
  const prompt = checkPrompt(req.prompt, info);
  if (prompt.length > maxContext)
    throw new UnprocessableError(`prompt (${prompt.length} tokens) exceeds the context (${maxContext})`);
  if (!Array.isArray(req.layers) || req.layers.length === 0)
    throw new BadRequestError('layers must list at least one hook point');
  const site = checkSite(req.site, info, 'site');
  const top = maxLayer(site, info.n_layer);
  for (const l of req.layers) {
    if (!isInt(l) || l < 0 || l > top) {
      throw new UnprocessableError(`layer ${l} is out of range: this model's ${site} hook points are 0..${top}`);
    }
  }
  if (req.lens !== undefined) {
    if (!(req.lens instanceof Float32Array) || req.lens.length === 0 || req.lens.length % info.n_embd !== 0)
      throw new BadRequestError(`lens must be vectors of ${info.n_embd} values`);
    for (const v of req.lens) if (!Number.isFinite(v)) throw new BadRequestError('lens values must be finite');
  }
  if (req.reduce !== undefined && !['none', 'last', 'mean'].includes(req.reduce)) {
    throw new BadRequestError('reduce must be one of none, last, mean');
  }
  checkInterventions(req.interventions, prompt.length, info);
}
