/**
 * The names of the bindings of ONNX Runtime (bindings.ts holds the bindings themselves): what
 * configuration and the API speak of, without loading either binding.
 */
export const RUNTIMES = ['node', 'capi'] as const;

/** `node`: onnxruntime-node (ort-node.ts); `capi`: ONNX Runtime's C API through I/O binding (capi.ts). */
export type RuntimeName = (typeof RUNTIMES)[number];

/**
 * The binding a provider runs on unless told otherwise: `capi` on CUDA (onnxruntime-node cannot
 * keep a tensor on a CUDA device, so its cache would cross PCIe every step), `node` elsewhere (its
 * WebGPU path keeps the cache on the device already; on the CPU provider both compute the same bits,
 * and `npm run bench` measures their per-pass cost).
 */
export const defaultRuntime = (provider: string): RuntimeName => (provider === 'cuda' ? 'capi' : 'node');

/** A binding's name from configuration, or an error naming the choices. */
export function parseRuntime(name: string, where: string): RuntimeName {
  if ((RUNTIMES as readonly string[]).includes(name)) return name as RuntimeName;
  throw new Error(`${where} must be one of ${RUNTIMES.join(', ')}, not "${name}"`);
}
