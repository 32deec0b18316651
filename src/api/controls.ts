import type { Intervention } from '../engine/types.js';
import { vectorHash } from '../store/vectors.js';
import { Rng, seed32 } from '../util/rng.js';
import type { AppliedIntervention } from './resolve.js';

/**
 * Control arms (docs/architecture.md §4), run in the same batch as the steered request: `baseline` (no
 * interventions), `negated` (every coefficient × −1) and `random` (each vector replaced by a random
 * vector of the same shape whose rows have the original rows' norms, drawn from the request's seed:
 * the same request gives the same random vectors).
 */
export type Arm = 'baseline' | 'negated' | 'random';
export const ARMS: readonly Arm[] = ['baseline', 'negated', 'random'];

export interface ArmRun {
  interventions: Intervention[];
  applied: AppliedIntervention[];
  /** `random`: the vectors drawn. */
  vectors?: { hash: string; norm: number }[];
}

/** A stream of its own for the random arm, apart from the sampler's (which uses seed32(seed)). */
const RANDOM_ARM = 0x5eed_a7d0;

export function controlArm(
  arm: Arm,
  interventions: Intervention[],
  applied: AppliedIntervention[],
  seed: number,
): ArmRun {
  if (arm === 'baseline') return { interventions: [], applied: [] };
  if (arm === 'negated') {
    return {
      interventions: interventions.map((iv) => ({ ...iv, coeff: -iv.coeff })),
      applied: applied.map((a) => ({ ...a, coeff: -a.coeff, applied_coeff: -a.applied_coeff })),
    };
  }
  const rng = new Rng(seed32(seed) ^ RANDOM_ARM);
  const vectors: { hash: string; norm: number }[] = [];
  const drawn = interventions.map((iv, i) => {
    const H = iv.values.length / iv.rows;
    const values = new Float32Array(iv.values.length);
    let total = 0;
    for (let r = 0; r < iv.rows; r++) {
      let want = 0;
      for (let j = r * H; j < (r + 1) * H; j++) want += iv.values[j] * iv.values[j];
      let got = 0;
      for (let j = r * H; j < (r + 1) * H; j++) {
        values[j] = rng.normal();
        got += values[j] * values[j];
      }
      const scale = Math.sqrt(want / got);
      for (let j = r * H; j < (r + 1) * H; j++) values[j] *= scale;
      total += want;
    }
    const hash = vectorHash(applied[i].shape, values);
    vectors.push({ hash, norm: Math.sqrt(total) });
    return { iv: { ...iv, values, hash }, a: { ...applied[i], vector: null, hash } };
  });
  return { interventions: drawn.map((d) => d.iv), applied: drawn.map((d) => d.a), vectors };
}
