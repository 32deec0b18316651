import type { TensorEntry } from './safetensors.js';

/**
 * The forms a graph can multiply the blocks' linear maps in (`STEERD_DTYPE`, `--dtype`). The
 * embeddings, norms, biases, attention, the residual stream, the KV cache and the logits stay
 * float32 in every one.
 *
 * - `float32`: the checkpoint's weights as they are (the default).
 * - `float16`: products in float16 from a float16 copy (half-weights.ts), for GPU providers.
 * - `int8`, `int4`: the linear maps and the unembedding as blocks of 32 weights sharing one float32
 *   scale, from a copy written once (quant-weights.ts), multiplied by ONNX Runtime's `MatMulNBits`
 *   on the CPU provider (docs/architecture.md §3.1).
 */
export const DTYPES = ['float32', 'float16', 'int8', 'int4'] as const;
export type Dtype = (typeof DTYPES)[number];

/** The dtypes stored as integer blocks, and their bits per weight. */
export const QUANT_BITS = { int8: 8, int4: 4 } as const;
export type QuantDtype = keyof typeof QUANT_BITS;

export const isQuantized = (d: Dtype): d is QuantDtype => d in QUANT_BITS;

/** The providers each dtype runs on (undefined: every one). */
export function dtypeProviders(d: Dtype): readonly string[] | undefined {
  return isQuantized(d) ? ['cpu'] : undefined;
}

/** The graph file's suffix for a dtype (`model.serve.onnx`, `model.serve.q8.onnx`). */
export const DTYPE_SUFFIX: Record<Dtype, string> = { float32: '', float16: '.f16', int8: '.q8', int4: '.q4' };

/** A copy of the weights in another dtype that a graph reads (beside the checkpoint): its file and where each tensor is. */
export interface WeightsCopy {
  dtype: Exclude<Dtype, 'float32'>;
  file: string;
  entries: Map<string, TensorEntry>;
}
