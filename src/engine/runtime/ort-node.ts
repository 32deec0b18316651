import ort from 'onnxruntime-node';
import type { GraphSession, GraphSessionOptions, HostTensor, Runtime, Tensor } from './runtime.js';

/**
 * The onnxruntime-node binding (docs/architecture.md §7 Runtimes). Host tensors are its own
 * `ort.Tensor`s; device tensors are the `gpu-buffer` tensors a session returns where the provider
 * keeps outputs (WebGPU), fed back as they are.
 */

/** A session of this binding: the runtime's, plus what only this binding has. */
export interface OrtNodeSession extends GraphSession {
  /** Ends a profile started with the session option `enableProfiling` (scripts/profile-step.ts). */
  endProfiling(): void;
}

/** A session of onnxruntime-node behind the runtime's interface (tests wrap one they opened). */
export function wrapSession(session: ort.InferenceSession): OrtNodeSession {
  return {
    runtime: ortNode,
    outputNames: session.outputNames,
    async run(feeds, fetches) {
      const f = feeds as unknown as ort.InferenceSession.FeedsType;
      const out = fetches ? await session.run(f, [...fetches]) : await session.run(f);
      return out as unknown as Record<string, Tensor>;
    },
    release: () => session.release(),
    endProfiling: () => session.endProfiling(),
  };
}

const host = (t: ort.Tensor) => t as unknown as HostTensor;

export const ortNode: Runtime = {
  name: 'onnxruntime-node',
  providers: () => ort.listSupportedBackends().map((b) => b.name),

  async open(model: string | Uint8Array, o: GraphSessionOptions): Promise<GraphSession> {
    const preferredOutputLocation: ort.InferenceSession.SessionOptions['preferredOutputLocation'] | undefined =
      o.deviceOutputs === 'all'
        ? 'gpu-buffer'
        : o.deviceOutputs && Object.fromEntries(o.deviceOutputs.map((n) => [n, 'gpu-buffer' as const]));
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: [o.provider],
      intraOpNumThreads: o.threads,
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
      extra: { session: { intra_op: { allow_spinning: o.spinning ? '1' : '0' } } },
      ...o.bindingOptions,
      // an output goes where this says only when every output is fetched (runner.ts forward())
      ...(preferredOutputLocation && { preferredOutputLocation }),
    };
    const session =
      typeof model === 'string'
        ? await ort.InferenceSession.create(model, options)
        : await ort.InferenceSession.create(model, options);
    return wrapSession(session);
  },

  float32: (data, dims) => host(new ort.Tensor('float32', data, [...dims])),
  int64: (values, dims) =>
    host(
      new ort.Tensor(
        'int64',
        values instanceof BigInt64Array ? values : BigInt64Array.from(values, BigInt),
        dims ? [...dims] : [values.length],
      ),
    ),
  bool: (value) => host(new ort.Tensor('bool', Uint8Array.of(value ? 1 : 0), [])),
};
