import { Type } from 'typebox';
import type { DoneEvent, TokenEvent } from '../engine/types.js';
import { finishReasonSchema, telemetrySummarySchema, tokenSchema } from './schemas.js';
import type { Service } from './service.js';

/** A completion as the generation routes return it (main run, control arms, sweep cells). */
export const completionProperties = {
  text: Type.String(),
  tokens: Type.Array(tokenSchema),
  finish_reason: finishReasonSchema,
  usage: Type.Partial(Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer() })),
  telemetry: telemetrySummarySchema,
};

/**
 * A token as the API shows it: the engine's, with its telemetry (if any) flattened in, and its
 * most likely alternatives (with `top_logprobs`) with their text. `text` is the token's own text
 * unless given (a stream gives what the token released): decoded only when needed.
 */
export function apiToken(svc: Service, e: TokenEvent, text?: string) {
  const { tokenizer } = svc.engine;
  return {
    id: e.id,
    text: text ?? tokenizer.decode([e.id]),
    logprob: e.logprob,
    ...e.telemetry,
    ...(e.top_logprobs && {
      top_logprobs: e.top_logprobs.map((x) => ({ id: x.id, text: tokenizer.decode([x.id]), logprob: x.logprob })),
    }),
  };
}

export type ApiToken = ReturnType<typeof apiToken>;

/** The response fields of a collected completion. */
export function completionOf(r: { tokens: ApiToken[]; done: DoneEvent }) {
  return {
    text: r.done.text,
    tokens: r.tokens,
    finish_reason: r.done.finish_reason,
    usage: r.done.usage,
    ...(r.done.telemetry && { telemetry: r.done.telemetry }),
  };
}
