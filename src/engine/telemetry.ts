import { readName } from '../model/hooks.js';
import { l2norm } from '../util/vec.js';
import { siteOf } from './steer.js';
import type { Intervention, TelemetrySummary, TokenTelemetry } from './types.js';

/** KL(p‖q) in nats of two rows of logits given their log-sum-exps, accumulated in float64. */
function klDivergence(p: Float32Array, lseP: number, q: Float32Array, lseQ: number): number {
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const lp = p[i] - lseP;
    if (lp < -745) continue; // exp underflows to 0 in float64: the term is 0
    kl += Math.exp(lp) * (lp - (q[i] - lseQ));
  }
  return Math.max(0, kl); // rounding can leave −1e-17 where the distributions are equal
}

/** Index of the largest value (the first one on ties). */
export function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/** Each direction's unit vector (float64 norm), null for a sequence or a zero vector. */
export function unitVectors(interventions: readonly Intervention[]): (Float32Array | null)[] {
  return interventions.map((iv) => {
    if (iv.rows !== 1) return null;
    const n = l2norm(iv.values);
    return n > 0 ? Float32Array.from(iv.values, (v) => v / n) : null;
  });
}

/** The projection of the row at `from` on u: `x[from .. from+H) · u`, in float64. */
function projectionAt(x: Float32Array, from: number, u: Float32Array): number {
  let s = 0;
  for (let i = 0; i < u.length; i++) s += x[from + i] * u[i];
  return s;
}

/** Running totals of a request's token telemetry. */
export class TelemetryTotals {
  private n = 0;
  private klSum = 0;
  private klMax = 0;
  private flips = 0;
  private delta = 0;

  add(t: TokenTelemetry, logprob: number): void {
    this.n++;
    this.klSum += t.kl;
    this.klMax = Math.max(this.klMax, t.kl);
    if (t.top1_flip) this.flips++;
    this.delta += logprob - t.baseline_logprob;
  }

  summary(): TelemetrySummary {
    return {
      mean_kl: this.n ? this.klSum / this.n : 0,
      max_kl: this.klMax,
      top1_flips: this.flips,
      logprob_delta: this.delta,
    };
  }
}

/**
 * A sampled token's telemetry (docs/architecture.md §4 Steering semantics): the steered row's
 * logits (`logits`, `lse`) against its unsteered twin's (`base`, `baseLse`), and each
 * intervention's hook-point output, read at offset `at` of the pass's reads, projected on its unit
 * vector (null: a sequence).
 */
export function tokenTelemetry(
  id: number,
  logits: Float32Array,
  lse: number,
  base: Float32Array,
  baseLse: number,
  interventions: readonly Intervention[],
  units: readonly (Float32Array | null)[],
  read: ReadonlyMap<string, Float32Array>,
  at: number,
): TokenTelemetry {
  return {
    baseline_logprob: base[id] - baseLse,
    kl: klDivergence(logits, lse, base, baseLse),
    top1_flip: argmax(logits) !== argmax(base),
    projections: units.map((u, i) => {
      const iv = interventions[i];
      return u ? projectionAt(read.get(readName(siteOf(iv), iv.layer))!, at, u) : null;
    }),
  };
}
