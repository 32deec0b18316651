import type { ModelInfo } from '../engine/types.js';
import type { StoredVector } from '../store/types.js';
import { dot, sumSquares } from '../util/vec.js';
import type { Service } from './service.js';

/**
 * What a steering vector is likely to do, before it is used (docs/architecture.md §9):
 *
 * - `ln_erased_fraction` = H·mean(v)² / ‖v‖²: the share of the vector along the all-ones direction,
 *   which every LayerNorm subtracts (a constant vector does nothing to the next block's input); null
 *   for a model whose norm is RMSNorm (Llama), which subtracts nothing;
 * - `logit_lens`: the tokens the vector promotes and suppresses, W_U · ln_f(v) (ln_f with its weight
 *   and bias, applied to v alone, then the unembedding);
 * - `similar`: the registered vectors of the same model and shape closest by |cosine|;
 * - `pair_consistency`: for pair recipes, the mean cosine between each pair's difference and the
 *   mean difference (kept from the recipe).
 *
 * A sequence [k, H] is reported as a whole: `norm` and `ln_erased_fraction` over all its rows
 * (Σ H·mean(row)² / Σ ‖row‖²), the logit lens of the sum of its rows (what it adds in total).
 */

/** The share of a vector (all its rows) that LayerNorm removes. */
export function lnErasedFraction(values: Float32Array, H: number): number {
  let along = 0;
  let total = 0;
  for (let r = 0; r < values.length / H; r++) {
    let sum = 0;
    for (let i = r * H; i < (r + 1) * H; i++) {
      sum += values[i];
      total += values[i] * values[i];
    }
    along += (sum * sum) / H;
  }
  return total > 0 ? along / total : 0;
}

/** A vector's share erased by LayerNorm beyond which registering it warns. */
export const ERASED_WARNING = 0.5;

export function registrationWarnings(values: Float32Array, info: ModelInfo): string[] {
  if (info.norm !== 'layernorm') return [];
  const f = lnErasedFraction(values, info.n_embd);
  return f > ERASED_WARNING
    ? [
        `${(100 * f).toFixed(0)} % of this vector lies along the all-ones direction, which every LayerNorm subtracts: that part steers nothing (ln_erased_fraction ${f.toFixed(3)})`,
      ]
    : [];
}

const cosine = (a: Float32Array, b: Float32Array) => {
  const aa = sumSquares(a);
  const bb = sumSquares(b);
  return aa > 0 && bb > 0 ? dot(a, b) / Math.sqrt(aa * bb) : 0;
};

export async function diagnostics(svc: Service, v: StoredVector) {
  const { engine } = svc;
  const H = engine.info.n_embd;
  const total = new Float32Array(H);
  for (let i = 0; i < v.values.length; i++) total[i % H] += v.values[i];
  const lens = (
    await engine.activations({ prompt: [engine.tokenizer.bosId], layers: [0], reduce: 'last', lens: total })
  ).lens!;
  const order = [...lens.keys()].sort((a, b) => lens[b] - lens[a] || a - b);
  const token = (id: number) => ({ id, text: engine.tokenizer.decode([id]), score: lens[id] });
  const similar: { name: string; cosine: number }[] = [];
  for (const m of await svc.store.list()) {
    if (m.name === v.name || m.model.id !== v.model.id || m.shape.join('x') !== v.shape.join('x')) continue;
    similar.push({ name: m.name, cosine: cosine(v.values, (await svc.store.get(m.name)).values) });
  }
  similar.sort((a, b) => Math.abs(b.cosine) - Math.abs(a.cosine) || a.name.localeCompare(b.name));
  return {
    name: v.name,
    hash: v.hash,
    shape: v.shape,
    norm: v.norm,
    ln_erased_fraction: engine.info.norm === 'layernorm' ? lnErasedFraction(v.values, H) : null,
    logit_lens: { top: order.slice(0, 10).map(token), bottom: order.slice(-10).reverse().map(token) },
    similar: similar.slice(0, 5),
    ...(v.pair_consistency !== undefined && v.pair_consistency !== null && { pair_consistency: v.pair_consistency }),
  };
}
