import type { Engine } from '../../src/engine/engine.ts';
import type { GenerateEvent, GenerateRequest, Intervention } from '../../src/engine/types.ts';
import type { RefHook, RefModel, RefSteer } from './reference.ts';
import { promptAccuracy, referenceForward } from './reference.ts';

export interface Completion {
  ids: number[];
  logprobs: number[];
  done: Extract<GenerateEvent, { type: 'done' }>;
  text: string;
}

export async function collect(
  events: AsyncIterable<GenerateEvent>,
  onToken?: (n: number) => void,
  /** Each token event (telemetry, top logprobs). */
  onEvent?: (e: Extract<GenerateEvent, { type: 'token' }>) => void,
): Promise<Completion> {
  const ids: number[] = [];
  const logprobs: number[] = [];
  let text = '';
  for await (const e of events) {
    if (e.type === 'token') {
      text += e.text;
      if (e.id >= 0) {
        onEvent?.(e);
        ids.push(e.id);
        logprobs.push(e.logprob);
        onToken?.(ids.length);
      }
    } else return { ids, logprobs, done: e, text };
  }
  throw new Error('stream ended without a done event');
}

export const run = (engine: Engine, req: GenerateRequest, signal?: AbortSignal) =>
  collect(engine.generate(req, { signal }));

/**
 * The steering a list of interventions means, written from docs/architecture.md §4 independently of the
 * engine: all / prompt / generated / front (a sequence row i on prompt position i).
 */
export function refSteer(ivs: Intervention[], promptLength: number, H: number): RefSteer {
  return (layer, pos) => {
    let sum: Float64Array | undefined;
    for (const iv of ivs) {
      if (iv.layer !== layer) continue;
      const mode = iv.positions ?? (iv.rows === 1 ? 'all' : 'front');
      const hit =
        mode === 'all' ||
        (mode === 'prompt' && pos < promptLength) ||
        (mode === 'generated' && pos >= promptLength) ||
        (mode === 'front' && pos < iv.rows);
      if (!hit) continue;
      sum ??= new Float64Array(H);
      const row = iv.rows === 1 ? 0 : pos;
      for (let i = 0; i < H; i++) sum[i] += iv.coeff * iv.values[row * H + i];
    }
    return sum;
  };
}

/**
 * Every intervention as a reference hook, written from docs/architecture.md §4 independently of the engine: at
 * each (site, layer) and position, the adds that apply are summed into the stream, then each
 * ablation (x − (x·u)u) and clamp (x + (c − x·u)u), u the unit direction, in request order.
 */
export function refHooks(ivs: Intervention[], promptLength: number, H: number): RefHook {
  return (site, layer, pos, x) => {
    const mine = ivs.filter((iv) => (iv.site ?? 'resid_pre') === site && iv.layer === layer);
    if (!mine.length) return undefined;
    const hit = (iv: Intervention) => {
      const mode = iv.positions ?? (iv.rows === 1 ? 'all' : 'front');
      return (
        mode === 'all' ||
        (mode === 'prompt' && pos < promptLength) ||
        (mode === 'generated' && pos >= promptLength) ||
        (mode === 'front' && pos < iv.rows)
      );
    };
    const y = Float64Array.from(x);
    for (const iv of mine) {
      if ((iv.op ?? 'add') !== 'add' || !hit(iv)) continue;
      const row = iv.rows === 1 ? 0 : pos;
      for (let i = 0; i < H; i++) y[i] += iv.coeff * iv.values[row * H + i];
    }
    for (const iv of mine) {
      if ((iv.op ?? 'add') === 'add' || !hit(iv)) continue;
      let n = 0;
      for (const v of iv.values) n += v * v;
      const u = Array.from(iv.values, (v) => v / Math.sqrt(n));
      let p = 0;
      for (let i = 0; i < H; i++) p += y[i] * u[i];
      const target = iv.op === 'clamp' ? iv.coeff : 0;
      for (let i = 0; i < H; i++) y[i] += (target - p) * u[i];
    }
    return y;
  };
}

/** Greedy decoding by full recompute with the float64 reference. */
export function referenceGreedy(m: RefModel, prompt: number[], n: number, ivs: Intervention[] = []) {
  const ids = [...prompt];
  const out: number[] = [];
  const logprobs: number[] = [];
  const hook = refHooks(ivs, prompt.length, m.nEmbd);
  for (let i = 0; i < n; i++) {
    const logits = referenceForward(m, ids, undefined, { lastOnly: true, hook }).logits[0];
    let best = 0;
    for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
    const mx = logits[best];
    let z = 0;
    for (const v of logits) z += Math.exp(v - mx);
    logprobs.push(-Math.log(z));
    out.push(best);
    ids.push(best);
  }
  return { ids: out, logprobs };
}

/**
 * Eight greedy tokens after `prompt` with its prompt logprobs, and their accuracy against the float64
 * reference (promptAccuracy: the largest |Δ logprob| and the positions whose most likely token agrees).
 */
export async function greedyAccuracy(engine: Engine, m: RefModel, prompt: number[]) {
  const got = await collect(
    engine.generate({ prompt, max_new_tokens: 8, temperature: 0, stop_at_eos: false, prompt_logprobs: 1 }),
  );
  return { ids: got.ids, ...promptAccuracy(m, prompt, got.done.prompt_logprobs!) };
}
