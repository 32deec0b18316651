import { randomInt } from 'node:crypto';
import type { GenerateRequest, SamplingParams } from './types.js';

/**
 * What a generation request that leaves a sampling field out gets (types.ts documents each field).
 * Decided here once: the API applies them when it resolves a request (so that its receipt records
 * what ran), and the engine and the queue read them for a request that arrives without.
 */
export const SAMPLING_DEFAULTS = {
  max_new_tokens: 64,
  temperature: 1,
  top_k: 0,
  top_p: 1,
  frequency_penalty: 0,
  presence_penalty: 0,
  stop_at_eos: true,
} as const;

/** A seed for a request that has none: any 32-bit value (the sampler's generator takes 32 bits). */
export const drawSeed = (): number => randomInt(0, 2 ** 32);

/** A generation request with every sampling field given (the seed drawn when it had none). */
export type ResolvedRequest = GenerateRequest & Required<Omit<SamplingParams, 'stop'>> & { stop: string[] };

/** Fills in the fields a request left out, the seed among them: a request's defaults, applied once. */
export function withDefaults(req: GenerateRequest): ResolvedRequest {
  return {
    ...req,
    max_new_tokens: req.max_new_tokens ?? SAMPLING_DEFAULTS.max_new_tokens,
    temperature: req.temperature ?? SAMPLING_DEFAULTS.temperature,
    top_k: req.top_k ?? SAMPLING_DEFAULTS.top_k,
    top_p: req.top_p ?? SAMPLING_DEFAULTS.top_p,
    frequency_penalty: req.frequency_penalty ?? SAMPLING_DEFAULTS.frequency_penalty,
    presence_penalty: req.presence_penalty ?? SAMPLING_DEFAULTS.presence_penalty,
    seed: req.seed ?? drawSeed(),
    stop: req.stop ?? [],
    stop_at_eos: req.stop_at_eos ?? SAMPLING_DEFAULTS.stop_at_eos,
  };
}
