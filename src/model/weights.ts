import { basename } from 'node:path';
import type { WeightsCopy } from './dtypes.js';
import { isQuantized, QUANT_BITS } from './dtypes.js';
import type { Checkpoint } from './family.js';
import { DataType } from './onnx-proto.js';
import { type GraphWriter, int, ints } from './onnx-writer.js';
import { type LinearLayout, QUANT_BLOCK } from './quantize.js';

/** A forward pass's weights, each registered in the graph on first use. */
export interface Weights {
  /** A parameter, by canonical name: an external initializer pointing into model.safetensors. */
  W(name: string): string;
  /**
   * x·W for a linear map stored as `layout`: [.., K] → [.., N] float32, no bias. In float32 from the
   * checkpoint, or from the copy where it holds the map: float16 (the input cast to float16 and the
   * product back), or 8/4-bit blocks through `MatMulNBits`.
   */
  matmul(input: string, name: string, layout: LinearLayout, output?: string): string;
  /**
   * x·W + b: `matmul` and then the bias, where one is named. Quantized, the bias is `MatMulNBits`'
   * own input, as ONNX Runtime fuses it only where the product has one consumer: two graphs of the
   * same model (with and without hook outputs) would otherwise round differently.
   */
  linear(input: string, name: string, layout: LinearLayout, bias?: string): string;
  /** [.., H] → [.., V] through the unembedding `name` ([V, H]), quantized where the copy holds it; `output` names the result. */
  unembedding(name: string): (input: string, output?: string) => string;
}

export function weights(
  g: GraphWriter,
  ck: Checkpoint,
  /** A copy of the weights in another dtype, beside the graph (dtypes.ts). Default none. */
  copy?: WeightsCopy,
): Weights {
  const location = basename(ck.weightsFile);
  const registered = new Set<string>();
  const W = (name: string) => {
    if (registered.has(name)) return name;
    const e = ck.params.get(name);
    if (!e) throw new Error(`missing parameter ${name}`);
    registered.add(name);
    return g.external(name, e.shape, location, e.offset, e.length);
  };
  /** The copy's tensor `key`, registered as `name`; undefined where the copy lacks it. */
  const C = (key: string, name: string, dataType: number) => {
    const e = copy?.entries.get(key);
    if (!e) return undefined;
    if (!registered.has(name)) {
      registered.add(name);
      g.external(name, e.shape, copy!.file, e.offset, e.length, dataType);
    }
    return name;
  };
  const transposed = (w: string) => g.op1('Transpose', [w], [ints('perm', [1, 0])]); // folded at load
  /** The map's 8/4-bit blocks and scales where the copy holds them. */
  const blocks = (name: string) => {
    if (!copy || !isQuantized(copy.dtype)) return undefined;
    const q = C(`${name}.q`, `${name}.q`, DataType.UINT8);
    const scales = C(`${name}.scales`, `${name}.scales`, DataType.FLOAT);
    return q && scales ? { q, scales, bits: QUANT_BITS[copy.dtype] } : undefined;
  };
  // accuracy level 4: the input is quantized to int8 per block of the row and multiplied in integers
  // (VNNI on x86); each row's blocks on their own, so a row's bits do not depend on its neighbours
  // (test/quant.test.ts, the invariance suite)
  const nbits = (
    input: string,
    name: string,
    layout: LinearLayout,
    b: NonNullable<ReturnType<typeof blocks>>,
    bias?: string,
    output?: string,
  ) => {
    const [rows, cols] = ck.params.get(name)!.shape;
    const [K, N] = layout === 'in_out' ? [rows, cols] : [cols, rows];
    const attrs = [
      int('K', K),
      int('N', N),
      int('bits', b.bits),
      int('block_size', QUANT_BLOCK),
      int('accuracy_level', 4),
    ];
    const inputs = bias ? [input, b.q, b.scales, '', '', W(bias)] : [input, b.q, b.scales];
    return g.contrib('MatMulNBits', inputs, attrs, output); // [.., N] float32
  };
  const matmul = (input: string, name: string, layout: LinearLayout, output?: string) => {
    const b = blocks(name);
    if (b) return nbits(input, name, layout, b, undefined, output);
    const w16 = copy?.dtype === 'float16' ? C(name, `${name}.f16`, DataType.FLOAT16) : undefined;
    if (w16) {
      const x16 = g.op1('Cast', [input], [int('to', DataType.FLOAT16)]); // [.., K] float16
      const y = g.op1('MatMul', [x16, layout === 'in_out' ? w16 : transposed(w16)]); // [.., N] float16
      return g.op1('Cast', [y], [int('to', DataType.FLOAT)], output); // [.., N] float32
    }
    return g.op1('MatMul', [input, layout === 'in_out' ? W(name) : transposed(W(name))], [], output); // [.., N]
  };
  return {
    W,
    matmul,
    linear(input, name, layout, bias) {
      const b = bias && blocks(name);
      if (b) return nbits(input, name, layout, b, bias); // [.., N] with the bias
      const y = matmul(input, name, layout); // [.., N]
      return bias ? g.op1('Add', [y, W(bias)]) : y;
    },
    unembedding(name) {
      if (blocks(name)) return (input, output) => matmul(input, name, 'out_in', output);
      // a MatMul on the transposed unembedding: ONNX Runtime folds the Transpose into a copy at load
      // and prepacks it; a decode step's projection runs 20 % faster than Gemm with transB (measured
      // at 32 rows; the copy costs the size of the unembedding once)
      let headT: string | undefined;
      return (input, output) => {
        headT ??= transposed(W(name)); // [H, V]
        return g.op1('MatMul', [input, headT], [], output); // [.., V]
      };
    },
  };
}
