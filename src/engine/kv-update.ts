import ort from 'onnxruntime-node';
import type { DeviceKv, KvPlanRow, KvUpdater } from './device-kv.js';
import type { KvShape } from './kv.js';

/** int64 [n] of a list of numbers. */
export const i64v = (v: number[]) => new ort.Tensor('int64', BigInt64Array.from(v, BigInt), [v.length]);

/**
 * Runs the cache update graph (kv-graph.ts) for device stores: the plan's int64 vectors, and the
 * caches fed as they are (they stay on the device). Where there is no cache yet, or nothing to
 * write, the other input stands in (its rows are never taken), or with neither, one zero row of
 * one slot (host, a few hundred bytes). `fed` sees every input tensor (the host byte counters).
 */
export function kvUpdater(session: ort.InferenceSession, s: KvShape, fed: (t: ort.Tensor) => void): KvUpdater {
  const seed = new ort.Tensor('float32', new Float32Array(s.nHead * s.headDim), [1, s.nHead, 1, s.headDim]);
  const tensor = (t: DeviceKv | null, kind: 'k' | 'v', l: number) => (t ? (t[kind][l] as unknown as ort.Tensor) : seed);
  return {
    async update(old: DeviceKv | null, f: DeviceKv | null, plan: KvPlanRow[], slots: number): Promise<DeviceKv> {
      const feeds: Record<string, ort.Tensor> = {
        rows: i64v(plan.map((p) => p.row)),
        keep: i64v(plan.map((p) => p.keep)),
        src: i64v(plan.map((p) => p.src)),
        from: i64v(plan.map((p) => p.from)),
        count: i64v(plan.map((p) => p.count)),
        slots: i64v([slots]),
      };
      for (let l = 0; l < s.nLayer; l++) {
        feeds[`s.${l}.key`] = tensor(old ?? f, 'k', l);
        feeds[`s.${l}.value`] = tensor(old ?? f, 'v', l);
        feeds[`f.${l}.key`] = tensor(f ?? old, 'k', l);
        feeds[`f.${l}.value`] = tensor(f ?? old, 'v', l);
      }
      const out = await session.run(feeds);
      for (const t of Object.values(feeds)) fed(t);
      const next: DeviceKv = { k: [], v: [] };
      for (let l = 0; l < s.nLayer; l++) {
        next.k.push(out[`o.${l}.key`] as unknown as DeviceKv['k'][number]);
        next.v.push(out[`o.${l}.value`] as unknown as DeviceKv['v'][number]);
      }
      return next;
    },
  };
}
