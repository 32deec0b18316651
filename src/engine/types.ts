/**
 * The engine's request and event types. Requests reaching the engine are already validated
 * (`validate.ts`): prompts are token ids and vectors are float32 values of the model's width.
 */

import type { Site } from '../model/hooks.js';

/** Where an intervention applies (docs/architecture.md §4). */
export type Positions = 'all' | 'prompt' | 'generated' | 'front';

/** What an intervention does at its hook (docs/architecture.md §4). */
export type Op = 'add' | 'ablate' | 'clamp';

/**
 * One intervention at a hook point: `add` adds `coeff × vector`; `ablate` removes the stream's
 * component along the vector's direction u (x − (x·u)u); `clamp` sets it to `coeff`
 * (x + (coeff − x·u)u). At one hook the adds are summed first, then ablations and clamps in
 * request order.
 */
export interface Intervention {
  /** [H] (a direction) or [k × H] row-major (a sequence of k vectors). */
  values: Float32Array;
  /** 1 for a direction; k for a sequence. */
  rows: number;
  /** Hook point's layer: 0..n_layer for `resid_pre`, 0..n_layer − 1 for the other sites. */
  layer: number;
  /** Where in the layer (hooks.ts). Default `resid_pre`: the residual stream entering block `layer`. */
  site?: Site;
  /** Default `add`; ablate and clamp take directions only. */
  op?: Op;
  /** `add`: the multiplier; `clamp`: the projection's target; `ablate`: unused. */
  coeff: number;
  /** Default: `all` for a direction, `front` for a sequence. */
  positions?: Positions;
  /** Content hash of `values` where known (a registered vector); the engine does not read it. */
  hash?: string;
}

/** The defaults named below are decided in defaults.ts. */
export interface SamplingParams {
  /**
   * Tokens to generate at most. Default 64. 0: the prompt's pass alone (its scores, with
   * `prompt_logprobs`), which needs the prompt's positions only.
   */
  max_new_tokens?: number;
  /** 0 is greedy. Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 keeps all. Default 0. */
  top_k?: number;
  /** Nucleus sampling: keep the smallest set whose probability reaches top_p, in (0, 1]. Default 1. */
  top_p?: number;
  /** Subtract `frequency_penalty × count` from each generated token's logit. Default 0. */
  frequency_penalty?: number;
  /** Subtract `presence_penalty` from every token generated at least once. Default 0. */
  presence_penalty?: number;
  /** Seed of this request's generator; the same seed gives the same tokens. Default: random. */
  seed?: number;
  /** Stop before the first occurrence of any of these strings (not included). Default none. */
  stop?: string[];
  /** Stop at `<|endoftext|>`. Default true. */
  stop_at_eos?: boolean;
}

export interface GenerateRequest extends SamplingParams {
  /** Prompt token ids (at least one). */
  prompt: number[];
  interventions?: Intervention[];
  /**
   * Per-token telemetry against an unsteered twin run as another row of the same batch
   * (telemetry.ts): it takes a second row and a second KV reservation. Default false.
   */
  telemetry?: boolean;
  /** Each token event carries this many of the most likely tokens with their logprobs (0–20). Default 0. */
  top_logprobs?: number;
  /**
   * The done event carries every prompt token's logprob given the tokens before it (the first: null)
   * and this many most likely alternatives at each position (0–20). Default: none.
   */
  prompt_logprobs?: number;
}

/** A token and its logprob under the model's distribution. */
export interface TokenLogprob {
  id: number;
  logprob: number;
}

export interface PromptLogprob {
  id: number;
  /** null for the first token: nothing comes before it. */
  logprob: number | null;
  top_logprobs: TokenLogprob[];
}

export type FinishReason = 'length' | 'eos' | 'stop' | 'cancelled';

export interface TokenEvent {
  type: 'token';
  id: number;
  /** Text released by this token (may be empty while a UTF-8 character or a stop string is incomplete). */
  text: string;
  /** log p(token) under the model's distribution (before temperature, penalties and truncation). */
  logprob: number;
  /** With `telemetry`: the token against the unsteered model. */
  telemetry?: TokenTelemetry;
  /** With `top_logprobs`: the most likely tokens at this position, most likely first. */
  top_logprobs?: TokenLogprob[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

export interface Timings {
  /** Milliseconds from submission to the start of its prefill. */
  queue_ms: number;
  /** Milliseconds from submission to the first token. */
  first_token_ms: number;
  /** Milliseconds from submission to the end. */
  total_ms: number;
}

export interface DoneEvent {
  type: 'done';
  finish_reason: FinishReason;
  /** The whole completion text (stop string excluded). */
  text: string;
  /** The seed the sampler used (drawn at random when the request had none). */
  seed: number;
  usage: Usage;
  /** With `telemetry`: the totals over the generated tokens. */
  telemetry?: TelemetrySummary;
  /** With `prompt_logprobs`: the prompt's tokens, scored. */
  prompt_logprobs?: PromptLogprob[];
  /**
   * With finish_reason `eos`: the end-of-text token that ended the run (no token event carries
   * it), its logprob and, with `top_logprobs`, the most likely tokens at its position.
   */
  eos?: { id: number; logprob: number; top_logprobs?: TokenLogprob[] };
  timings: Timings;
}

export type GenerateEvent = TokenEvent | DoneEvent;

export type Reduce = 'none' | 'last' | 'mean';

export interface ActivationsRequest {
  prompt: number[];
  /** Layers to read at `site`: 0..n_layer for `resid_pre`, 0..n_layer − 1 for the others. */
  layers: number[];
  /** Where in each layer (hooks.ts). Default `resid_pre`. */
  site?: Site;
  /** `none`: every position [T × H]; `last`: the last position [H]; `mean`: the mean over positions [H]. */
  reduce?: Reduce;
  /** Applied as in a prompt pass (`generated` interventions do nothing here). */
  interventions?: Intervention[];
  /** Also the logit lens of these vectors ([N × H]): each through ln_f alone, then the unembedding. */
  lens?: Float32Array;
}

export interface ActivationsResult {
  tokens: number[];
  /** layer → values ([T × H] row-major for `none`, else [H]). */
  activations: Record<number, Float32Array>;
  /** Positions per layer: T for `none`, 1 otherwise. */
  rows: number;
  /** With `lens`: [N × V] logits. */
  lens?: Float32Array;
}

export interface ModelInfo {
  /** The model family (`gpt2`, `llama`: src/model/families.ts) and config.json's `model_type`. */
  architecture: string;
  model_type: string;
  /** The family's normalisation (ModelFamily.norm). */
  norm: 'layernorm' | 'rmsnorm';
  n_layer: number;
  n_embd: number;
  n_head: number;
  /** Key/value heads (fewer than n_head with grouped-query attention). */
  n_kv_head: number;
  n_positions: number;
  vocab_size: number;
  /** The first of `eos_token_ids`. */
  eos_token_id: number;
  /** Every token that ends a generation (unless `stop_at_eos: false`). */
  eos_token_ids: number[];
  /** The checkpoint's layout fingerprint (config + safetensors header). */
  fingerprint: string;
  /** sha256 of the serving graph (model.serve.onnx): what a receipt ran. */
  graph_hash: string;
  /** Hook sites the serving graph takes steering at and reads (hooks.ts). */
  hook_sites: Site[];
  /** Execution provider in use. */
  provider: string;
  /** The binding of ONNX Runtime that runs the graphs (`queue`: the workers', in Redis mode). */
  binding: 'node' | 'capi' | 'queue';
  /** The blocks' weights: float32, float16 (multiplied in float16), int8 or int4 (blocks of integers, the unembedding too); the rest float32. */
  dtype: 'float32' | 'float16' | 'int8' | 'int4';
  /** The engine's KV cache (absent where no engine runs: an API process in Redis mode). */
  kv_cache?: KvCacheInfo;
}

export interface KvCacheInfo {
  /** Tokens of keys and values held at once, all rows together (the budget). */
  tokens: number;
  /** Bytes of keys and values per token, all layers. */
  bytes_per_token: number;
  /** `host` (fed to every session run) or `device` (kept on the accelerator). */
  location: 'host' | 'device';
  /** Size classes a request's prompt + max_new_tokens is rounded up to when it is admitted. */
  classes: number[];
  /** Rows decoded together at most (the batch capacity). */
  max_rows: number;
}

/**
 * Per-token telemetry of a steered generation (docs/architecture.md §4): what the steering did to the token
 * the steered row chose, measured against its unsteered twin — another row of the same batch, with
 * no interventions, fed the steered row's tokens (teacher-forced) — at the same position.
 */
export interface TokenTelemetry {
  /** log p(token) under the unsteered model, given the same prefix. */
  baseline_logprob: number;
  /** KL(steered ‖ unsteered) between the two next-token distributions, nats. */
  kl: number;
  /** Whether the two distributions' most likely tokens differ. */
  top1_flip: boolean;
  /**
   * Per intervention, in request order: the residual stream at its hook (after all steering there),
   * at the position whose logits chose the token, dotted with the intervention's unit vector;
   * null for a sequence vector.
   */
  projections: (number | null)[];
}

export interface TelemetrySummary {
  mean_kl: number;
  max_kl: number;
  /** Positions where the steered and unsteered argmaxes differ. */
  top1_flips: number;
  /** Σ (logprob − baseline_logprob) over the generated tokens. */
  logprob_delta: number;
}
