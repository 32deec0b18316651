import type { GraphSession, Tensor } from '../runtime/runtime.js';
import type { DeviceKv, KvPlanRow, KvUpdater } from './device-store.js';
import type { KvShape } from './store.js';

/**
 * Runs the cache update graph (src/model/kv-graph.ts) for device stores: the plan's int64 vectors,
 * and the caches fed as they are (they stay on the device). Where there is no cache yet, or nothing
 * to write, the other input stands in (its rows are never taken), or with neither, one zero row of
 * one slot (host, a few hundred bytes). `fed` sees every input tensor (the host byte counters).
 */
export function kvUpdater(session: GraphSession, s: KvShape, fed: (t: Tensor) => void): KvUpdater {
  const rt = session.runtime;
  const seed = rt.float32(new Float32Array(s.nHead * s.headDim), [1, s.nHead, 1, s.headDim]);
  const tensor = (t: DeviceKv | null, kind: 'k' | 'v', l: number): Tensor => (t ? t[kind][l] : seed);
  return {
    async update(old: DeviceKv | null, f: DeviceKv | null, plan: KvPlanRow[], slots: number): Promise<DeviceKv> {
      const feeds: Record<string, Tensor> = {
        rows: rt.int64(plan.map((p) => p.row)),
        keep: rt.int64(plan.map((p) => p.keep)),
        src: rt.int64(plan.map((p) => p.src)),
        from: rt.int64(plan.map((p) => p.from)),
        count: rt.int64(plan.map((p) => p.count)),
        slots: rt.int64([slots]),
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
        next.k.push(out[`o.${l}.key`] as DeviceKv['k'][number]);
        next.v.push(out[`o.${l}.value`] as DeviceKv['v'][number]);
      }
      return next;
    },
  };
}
