/**
 * The runtime seam (docs/architecture.md §7 Runtimes): the one place that knows where a tensor
 * lives and how a session runs a pass. The engine builds host tensors through a `Runtime`, feeds
 * them and the device tensors a session returned to `GraphSession.run`, and reads back only host
 * tensors. A binding of ONNX Runtime (ort-node.ts: onnxruntime-node) implements these interfaces;
 * another binding (one with device tensors of its own) goes beside it, and nothing above this
 * folder changes. Nothing here imports the rest of the engine.
 */

/** Element types the serving and cache update graphs take. */
export type TensorType = 'float32' | 'int64' | 'bool';

/** A tensor in host memory: its data can be read. */
export interface HostTensor {
  readonly location: 'cpu';
  readonly type: TensorType;
  readonly dims: readonly number[];
  readonly data: Float32Array | BigInt64Array | Uint8Array;
}

/**
 * A tensor held in memory the execution provider owns: only fed to sessions, never read, and given
 * back with `dispose()`. onnxruntime-node's are WebGPU `gpu-buffer`s; the capi binding's are
 * `ort-value`s, OrtValues it keeps in native memory (CUDA memory on CUDA; on the CPU provider, host
 * memory JS never sees).
 */
export interface DeviceTensor {
  readonly location: 'gpu-buffer' | 'ort-value';
  readonly dims: readonly number[];
  dispose(): void;
}

export type Tensor = HostTensor | DeviceTensor;

export const isHostTensor = (t: Tensor): t is HostTensor => t.location === 'cpu';

/** A host tensor's float32 data (a device tensor cannot be read: an error). */
export function f32(t: Tensor): Float32Array {
  if (!isHostTensor(t)) throw new Error('a device tensor cannot be read on the host');
  return t.data as Float32Array;
}

/** Host bytes a tensor carries through a session run (a device tensor: none). */
export const hostBytesOf = (t: Tensor) => (isHostTensor(t) ? t.data.byteLength : 0);

/** Host bytes passed into and returned from session runs (runner.ts counts them). */
export interface HostBytes {
  input: number;
  output: number;
  /** Session runs (forward passes). */
  runs: number;
  /** Native values the binding holds now (capi: its OrtValues); absent where the binding does not count them. */
  live?: number;
}

/** How a session is opened. */
export interface GraphSessionOptions {
  /** Execution provider: `cpu`, `cuda`, `webgpu`, ... */
  provider: string;
  /** Intra-op threads (the runner resolves 0 to one per CPU: runner.ts). */
  threads: number;
  /** Intra-op threads spin while they wait for work (runner.ts, RunnerOptions.spinning). */
  spinning: boolean;
  /** Outputs the provider keeps in its own memory (device tensors), by name, or `all`. Default none. */
  deviceOutputs?: readonly string[] | 'all';
  /** The binding's own session options, passed as they are (profiling, benchmarks). Default none. */
  bindingOptions?: object;
}

/** An open graph. */
export interface GraphSession {
  /** The runtime that opened it (the one that makes its feeds). */
  readonly runtime: Runtime;
  /** Every output of the graph, in order. */
  readonly outputNames: readonly string[];
  /** One pass: the outputs named in `fetches` (default: every output). */
  run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>>;
  release(): Promise<void>;
}

/** A binding of ONNX Runtime. */
export interface Runtime {
  /** Its name, for messages (`onnxruntime-node`). */
  readonly name: string;
  /** Execution providers this build has. */
  providers(): string[];
  /** Opens a graph from a file path or its bytes. */
  open(model: string | Uint8Array, opts: GraphSessionOptions): Promise<GraphSession>;
  float32(data: Float32Array, dims: readonly number[]): HostTensor;
  /** int64 of `values` (default dims: [values.length]). */
  int64(values: readonly number[] | BigInt64Array, dims?: readonly number[]): HostTensor;
  /** A bool scalar. */
  bool(value: boolean): HostTensor;
  /** Native values the binding holds now, where it counts them (capi: its OrtValues). */
  liveValues?(): number;
}
