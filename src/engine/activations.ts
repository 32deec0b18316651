import { readName } from '../model/hooks.js';
import type { KvPast } from './kv/store.js';
import { alignUp } from './kv/store.js';
import { type Pass, padRows } from './pass.js';
import { buildSteer } from './steer.js';
import type { ActivationsRequest, ActivationsResult } from './types.js';

/**
 * An activations request: one pass over the prompt (no cache kept, nothing sampled), its
 * hook-point outputs at the layers asked, reduced over positions as asked, and the logit lens of
 * its vectors. It shares only the pass with generation; the scheduler runs one between its steps.
 * `empty` is the cache of rows with nothing cached (kv/manager.ts).
 */
export async function activations(
  pass: Pass,
  empty: (rows: number) => Promise<KvPast>,
  req: ActivationsRequest,
): Promise<ActivationsResult> {
  const T = req.prompt.length;
  const H = pass.info.n_embd;
  const positions = [req.prompt.map((_, i) => i)];
  const steering = { interventions: req.interventions ?? [], promptLength: T };
  const layers = [...new Set(req.layers)];
  const site = req.site ?? 'resid_pre';
  const Tp = alignUp(T);
  const padded = [[...positions[0], ...new Array(Tp - T).fill(-1)]];
  const out = await pass.forward({
    ...padRows([req.prompt], positions, Tp),
    newLen: [T],
    pastLen: [0],
    groups: [await empty(1)],
    steer: buildSteer([steering], padded, H),
    read: layers.map((l) => readName(site, l)),
    lens: req.lens,
  });
  const reduce = req.reduce ?? 'none';
  const activations: Record<number, Float32Array> = {};
  for (const l of layers) {
    const all = out.read.get(readName(site, l))!.subarray(0, T * H); // [1, T, H] of [1, Tp, H]
    if (reduce === 'none') activations[l] = all.slice();
    else if (reduce === 'last') activations[l] = all.slice((T - 1) * H, T * H);
    else {
      const sum = new Float64Array(H);
      for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) sum[i] += all[t * H + i];
      activations[l] = Float32Array.from(sum, (v) => v / T);
    }
  }
  return {
    tokens: req.prompt,
    activations,
    rows: reduce === 'none' ? T : 1,
    ...(out.lens && { lens: out.lens }),
  };
}
