import type { Tokenizer } from '../model/tokenizer.js';
import { seed32 } from '../util/rng.js';
import { SAMPLING_DEFAULTS as D, drawSeed } from './defaults.js';
import { TextStream } from './detok.js';
import type { KvLease } from './kv/lease.js';
import { Sampler } from './sampler.js';
import type { RowSteering } from './steer.js';
import { TelemetryTotals, unitVectors } from './telemetry.js';
import type { DoneEvent, FinishReason, GenerateRequest, PromptLogprob } from './types.js';

export type State = 'waiting' | 'prefill' | 'decoding' | 'done';

/** A request in flight: llama.cpp's slot, with explicit states. */
export interface Slot {
  id: number;
  req: GenerateRequest;
  state: State;
  steering: RowSteering;
  sampler: Sampler;
  text: TextStream;
  seed: number;
  maxNew: number;
  /** Its hold on the KV cache, for its rows (itself, then its twin): the KV manager's (kv/manager.ts). */
  lease?: KvLease<Slot>;
  /** Prompt tokens already in the cache (chunked prefill). */
  prefilled: number;
  /** Generated tokens (EOS excluded). */
  generated: number[];
  /** The token to feed at the next decode step. */
  next?: number;
  cancelled: boolean;
  finish?: FinishReason;
  submitted: number;
  started?: number;
  firstToken?: number;
  /**
   * With telemetry: the unsteered twin, a row of its own in the same passes (no interventions),
   * fed this slot's tokens; it emits nothing. On the twin: `of` is the slot it shadows.
   */
  twin?: Slot;
  of?: Slot;
  /** With telemetry: the interventions' unit vectors (null: a sequence) and the running totals. */
  units?: (Float32Array | null)[];
  totals?: TelemetryTotals;
  /** With `prompt_logprobs`: the prompt's tokens scored so far (chunk by chunk). */
  promptLogprobs?: PromptLogprob[];
}

const now = () => performance.timeOrigin + performance.now();

/** A new slot for a request (its seed drawn when it has none), with its twin when it asks for telemetry. */
export function newSlot(id: number, req: GenerateRequest, tokenizer: Tokenizer, vocab: number): Slot {
  const seed = req.seed ?? drawSeed();
  const interventions = req.interventions ?? [];
  const slot: Slot = {
    id,
    req,
    state: 'waiting',
    steering: { interventions, promptLength: req.prompt.length },
    sampler: new Sampler(
      {
        temperature: req.temperature ?? D.temperature,
        top_k: req.top_k ?? D.top_k,
        top_p: req.top_p ?? D.top_p,
        frequency_penalty: req.frequency_penalty ?? D.frequency_penalty,
        presence_penalty: req.presence_penalty ?? D.presence_penalty,
      },
      seed32(seed),
      vocab,
    ),
    text: new TextStream(tokenizer, req.stop ?? []),
    seed,
    maxNew: req.max_new_tokens ?? D.max_new_tokens,
    prefilled: 0,
    generated: [],
    cancelled: false,
    submitted: now(),
  };
  if (req.telemetry) {
    slot.units = unitVectors(interventions);
    slot.totals = new TelemetryTotals();
    const { units: _u, totals: _t, ...shared } = slot;
    slot.twin = {
      ...shared,
      steering: { interventions: [], promptLength: req.prompt.length },
      generated: [],
      of: slot,
    };
  }
  return slot;
}

/** A slot's rows in a pass: itself, then its twin. */
export const rowsOf = (s: Slot): Slot[] => (s.twin ? [s, s.twin] : [s]);

/** The slot's last event: why it finished, its text, usage, telemetry totals, prompt scores and timings. */
export function doneEvent(s: Slot, reason: FinishReason, eos?: DoneEvent['eos']): DoneEvent {
  const end = now();
  return {
    type: 'done',
    finish_reason: reason,
    text: s.text.text,
    seed: s.seed,
    usage: { prompt_tokens: s.req.prompt.length, completion_tokens: s.generated.length },
    ...(s.totals && { telemetry: s.totals.summary() }),
    ...(s.promptLogprobs && { prompt_logprobs: s.promptLogprobs }),
    ...(eos && { eos }),
    timings: {
      queue_ms: (s.started ?? end) - s.submitted,
      first_token_ms: (s.firstToken ?? end) - s.submitted,
      total_ms: end - s.submitted,
    },
  };
}
