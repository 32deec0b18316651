import { randomBytes, randomInt } from 'node:crypto';
import { encode } from 'gpt-3-encoder';
import { vectorHash } from '../store/content.js';
import { Rng } from '../util/rng.js';
import type { LoadTestOptions } from './options.js';

export type Endpoint = '/v1/generate' | '/v1/completions';
/** No intervention, an inline vector (`{values}`), or the vector registered for the run (by name). */
export type Steering = 'none' | 'inline' | 'named';

/** What the load test needs of GET /v1/model. */
export interface ModelInfo {
  id: string;
  name: string;
  n_layer: number;
  n_embd: number;
  limits: { max_new_tokens: number };
  /** null while the server has not measured them (Redis mode: no worker has answered yet). */
  resid_norms: { layers: { layer: number; median: number }[] } | null;
}

/** The vector registered for the run. */
export interface NamedVector {
  name: string;
  hash: string;
}

/** An intervention as /v1/generate must echo it. */
export interface ExpectedIntervention {
  vector: string | null;
  hash: string;
  layer: number;
  coeff: number;
}

/** One request to send, and what its answer must say. */
export interface Planned {
  index: number;
  endpoint: Endpoint;
  stream: boolean;
  steering: Steering;
  /** The greedy probe (prompt and interventions) this request repeats, if it is one. */
  probe?: string;
  body: Record<string, unknown>;
  seed: number;
  /** The prompt's length in GPT-2 tokens. */
  promptTokens: number;
  maxTokens: number;
  interventions: ExpectedIntervention[];
}

/** Prompts of the greedy probes: each is sent again and again, unsteered and steered, and must get the same answer every time. */
export const PROBE_PROMPTS = [
  'The capital of France is',
  'Once upon a time, there was a',
  'I think dogs are',
  'The best way to learn a language is',
  'In 1969, the first man on the moon',
  'My favourite food is',
];

/** A random direction of unit norm: the values of an inline vector, or of the registered one. */
export function randomDirection(rng: Rng, n: number): number[] {
  const v = Array.from({ length: n }, () => rng.normal());
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
}

interface Intervention {
  body: { vector: string | { values: number[] }; layer: number; coeff: number };
  expect: ExpectedIntervention;
}

/**
 * Draws the requests of a run from a seeded generator: endpoint (half each), streaming, steering
 * and probe by the options' fractions. Every request has a prompt and a sampling seed of its own
 * (probes share their prompt, not their seed), so that an answer can be told from any other's.
 */
export class Workload {
  private readonly rng: Rng;
  private readonly seedBase: number;
  private readonly probeVectors: number[][];

  constructor(
    private readonly opts: Pick<
      LoadTestOptions,
      'seed' | 'maxNewTokens' | 'steeredFraction' | 'streamFraction' | 'probeFraction'
    >,
    private readonly model: ModelInfo,
    /** Tells this run's prompts from another's. */
    private readonly runId: string,
    private readonly named?: NamedVector,
  ) {
    this.rng = new Rng(opts.seed);
    this.seedBase = Math.floor(this.rng.next() * 2 ** 31);
    this.probeVectors = PROBE_PROMPTS.map(() => randomDirection(this.rng, this.model.n_embd));
  }

  next(index: number): Planned {
    const r = this.rng;
    const endpoint: Endpoint = r.next() < 0.5 ? '/v1/generate' : '/v1/completions';
    const stream = r.next() < this.opts.streamFraction;
    const probe = r.next() < this.opts.probeFraction ? Math.floor(r.next() * PROBE_PROMPTS.length) : undefined;
    const steering: Steering =
      r.next() >= this.opts.steeredFraction ? 'none' : this.named && r.next() < 0.5 ? 'named' : 'inline';
    const interventions = steering === 'none' ? [] : [this.intervention(steering, probe)];
    const prompt = probe === undefined ? this.prompt(index) : PROBE_PROMPTS[probe];
    const seed = this.seedBase + index;
    const maxTokens = this.opts.maxNewTokens;
    const body = {
      prompt,
      [endpoint === '/v1/generate' ? 'max_new_tokens' : 'max_tokens']: maxTokens,
      ...(probe === undefined ? { temperature: 1, top_p: 0.9 } : { temperature: 0 }),
      seed,
      stream,
      ...(interventions.length && { interventions: interventions.map((i) => i.body) }),
    };
    return {
      index,
      endpoint,
      stream,
      steering,
      probe: probe === undefined ? undefined : `${probe}/${steering}`,
      body,
      seed,
      promptTokens: encode(prompt).length,
      maxTokens,
      interventions: interventions.map((i) => i.expect),
    };
  }

  /**
   * A prompt no other request of any run has, whose length in tokens the requests around it seldom
   * share (about 3 % of pairs): it carries an unguessable nonce of random length, which tokenizes
   * unpredictably, and 0 to 15 filler phrases. An answer swapped with another request's then
   * mostly shows in its usage.prompt_tokens.
   */
  private prompt(index: number): string {
    const nonce = randomBytes(randomInt(4, 17)).toString('base64url');
    return `Load test ${this.runId}, request ${index}, nonce ${nonce}: the story so far is that${' and then'.repeat(randomInt(16))}`;
  }

  /**
   * An intervention at a random layer, or at its probe's; with a coefficient the size of the
   * residual stream there (its median norm).
   */
  private intervention(steering: 'inline' | 'named', probe: number | undefined): Intervention {
    const hooks = this.model.n_layer + 1;
    const layer = probe === undefined ? Math.floor(this.rng.next() * hooks) : probe % hooks;
    const coeff = Number(this.model.resid_norms!.layers[layer].median.toFixed(3));
    if (steering === 'named') {
      const { name, hash } = this.named!;
      return { body: { vector: name, layer, coeff }, expect: { vector: name, hash, layer, coeff } };
    }
    const values = probe === undefined ? randomDirection(this.rng, this.model.n_embd) : this.probeVectors[probe];
    const hash = vectorHash([values.length], Float32Array.from(values));
    return { body: { vector: { values }, layer, coeff }, expect: { vector: null, hash, layer, coeff } };
  }
}
