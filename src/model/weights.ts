import { basename } from 'node:path';
import type { Checkpoint } from './family.js';
import { DataType } from './onnx-proto.js';
import type { GraphWriter } from './onnx-writer.js';
import type { TensorEntry } from './safetensors.js';

/** A forward pass's weights, each registered in the graph on first use. */
export interface Weights {
  /** A parameter, by canonical name: an external initializer pointing into model.safetensors. */
  W(name: string): string;
  /** The float16 copy of a parameter (half-weights.ts), or undefined where the graph keeps it in float32. */
  W16(name: string): string | undefined;
}

export function weights(
  g: GraphWriter,
  ck: Checkpoint,
  /** The float16 copy's file and entries, beside the graph. Default none. */
  half?: { file: string; entries: Map<string, TensorEntry> },
): Weights {
  const location = basename(ck.weightsFile);
  const registered = new Set<string>();
  return {
    W(name) {
      if (registered.has(name)) return name;
      const e = ck.params.get(name);
      if (!e) throw new Error(`missing parameter ${name}`);
      registered.add(name);
      return g.external(name, e.shape, location, e.offset, e.length);
    },
    W16(name) {
      const e = half?.entries.get(name);
      if (!e) return undefined;
      const w16 = `${name}.f16`;
      if (!registered.has(w16)) {
        registered.add(w16);
        g.external(w16, e.shape, half!.file, e.offset, e.length, DataType.FLOAT16);
      }
      return w16;
    },
  };
}
