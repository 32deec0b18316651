import type { Test } from 'tap';
import { loadConfig } from '../../src/config.ts';
import { Engine, type EngineOptions } from '../../src/engine/engine.ts';
import { serveShape } from '../../src/engine/model-info.ts';
import { defaultRuntime, parseRuntime } from '../../src/engine/runtime/names.ts';

/**
 * The execution provider the engine and API suites run on: `cpu` unless STEERD_TEST_PROVIDER says
 * otherwise (CI runs the engine suites again with `webgpu` on a software Vulkan device: README, Tests).
 */
export const provider = process.env.STEERD_TEST_PROVIDER ?? 'cpu';

/**
 * The binding of ONNX Runtime the engine suites run through: the provider's default unless
 * STEERD_TEST_BINDING says otherwise (CI runs the engine suites again with `capi`, whose KV cache
 * stays on the device: on the CPU provider, OrtValues in native memory).
 */
export const binding = process.env.STEERD_TEST_BINDING
  ? parseRuntime(process.env.STEERD_TEST_BINDING, 'STEERD_TEST_BINDING')
  : defaultRuntime(provider);

/**
 * An engine on the suite's provider and binding, with the intra-op threads the environment asks for as a served
 * engine would have (STEERD_THREADS: `npm test` runs each engine on one, three test files at a time).
 */
export const startEngine = (o: EngineOptions) =>
  Engine.start({ provider, runtime: binding, threads: loadConfig().threads, ...o });

/** The provider's serving graph holds every row in one size class (WebGPU, capi: model-info.ts). */
export const oneClass = serveShape(provider, 1024, binding).groups === 1;

/** Every number of a and b within tol of each other, the rest equal. */
function near(a: unknown, b: unknown, tol: number): boolean {
  if (typeof a === 'number' && typeof b === 'number') return Object.is(a, b) || Math.abs(a - b) <= tol;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => near(x, b[i], tol));
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a);
    const rb = b as Record<string, unknown>;
    return ka.length === Object.keys(b).length && ka.every((k) => near((a as Record<string, unknown>)[k], rb[k], tol));
  }
  return Object.is(a, b);
}

/**
 * The same request run alone and beside others: the same bits on the CPU provider (batch
 * invariance); on others, whose kernels round a row differently with other rows beside it (README,
 * Limits), the same tokens and every number within 1e-5.
 */
export function sameRun(t: Test, got: unknown, want: unknown, msg: string) {
  if (provider === 'cpu' || !near(got, want, 1e-5)) return t.same(got, want, msg);
  return t.pass(`${msg} (within 1e-5 on ${provider})`);
}
