import type { LlamaConfig } from './config.js';

/**
 * RoPE's inverse frequencies [head_dim / 2], as Hugging Face computes them for the config:
 * θ^(−2i/d), then the `rope_scaling` (none, linear, or Llama 3.1's).
 */
export function invFreq(c: LlamaConfig): number[] {
  const d = c.head_dim;
  const base = Array.from({ length: d / 2 }, (_, i) => 1 / c.rope_theta ** ((2 * i) / d));
  const s = c.rope_scaling;
  if (!s) return base;
  if (s.type === 'linear') return base.map((f) => f / s.factor);
  // llama3: wavelengths longer than the original context / low_freq_factor are stretched by
  // `factor`, shorter than / high_freq_factor are kept, and the band between is interpolated.
  const longest = s.original_max_position_embeddings / s.low_freq_factor;
  const shortest = s.original_max_position_embeddings / s.high_freq_factor;
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < shortest) return f;
    if (wavelen > longest) return f / s.factor;
    const smooth =
      (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}
