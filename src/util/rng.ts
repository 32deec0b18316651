/**
 * Deterministic PRNG (splitmix32) with Box–Muller normals; not for cryptography. Used for generated
 * checkpoints and for per-request sampling, where a seed must give the same stream on any machine.
 */
export class Rng {
  private s: number;
  private spare: number | undefined;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x9e3779b9) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  }
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    const u = 1 - this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** Folds a safe integer (up to 53 bits) into a 32-bit seed, mixing the high word (murmur3's fmix32). */
export function seed32(seed: number): number {
  const lo = seed >>> 0;
  let h = (Math.floor(seed / 2 ** 32) + 1) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (lo ^ h ^ (h >>> 16)) >>> 0;
}
