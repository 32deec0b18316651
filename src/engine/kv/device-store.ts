import {
  checkNewRow,
  type DeviceTensor,
  type KvBlock,
  type KvPast,
  type KvShape,
  type KvSource,
  type KvStore,
  slotsFor,
  slotsToReserve,
} from './store.js';

/** Keys and values of every layer, on the device. */
export interface DeviceKv {
  k: DeviceTensor[];
  v: DeviceTensor[];
}

/** One row of a cache update (src/model/kv-graph.ts): which old row it continues, how much it keeps, what is written after. */
export interface KvPlanRow {
  row: number;
  keep: number;
  src: number;
  from: number;
  count: number;
}

/** What a device store needs of the runtime: one run of the cache update graph (updater.ts). */
export interface KvUpdater {
  /**
   * A new cache of `plan.length` rows and `slots` slots from `s` (null: no rows yet) and the tokens
   * in `f` (null: nothing written). Inputs are left alone: the caller disposes them.
   */
  update(s: DeviceKv | null, f: DeviceKv | null, plan: KvPlanRow[], slots: number): Promise<DeviceKv>;
}

const asDevice = (b: KvBlock[]) => b as DeviceTensor[];

/** A row of the store as the next update will make it. */
interface PlannedRow {
  /** Its row in the device cache now (-1: new). */
  row: number;
  /** Tokens kept from it. */
  keep: number;
  /** Tokens to write after them. */
  write?: KvSource;
}

export const disposeKv = (t: DeviceKv | null | undefined) => {
  if (!t) return;
  for (const x of [...t.k, ...t.v]) x.dispose();
};

/**
 * The KV cache kept on the accelerator (docs/architecture.md §6 The KV cache, and §7 Runtimes):
 * the same rows, slots and semantics as the host store (host-store.ts), but nothing is copied
 * through host memory. Edits are planned
 * on the host (a few numbers per row) and `flush()` makes them one run of the cache update graph
 * per source of new tokens (kv-graph.ts), which writes a new cache of exactly the rows held: no
 * slack to compact, and the old buffers are given back at once.
 */
export class DeviceKvStore implements KvStore {
  private t: DeviceKv | null = null;
  /** Slot count of `t`. */
  private tP = 0;
  /** Slot count after the next flush. */
  P = 0;
  readonly len: number[] = [];
  private plan: PlannedRow[] = [];
  /** An edit is planned (flush() has work). */
  private dirty = false;

  constructor(
    private readonly s: KvShape,
    private readonly updater: KvUpdater,
    /** Rows the store holds at most. */
    private readonly capacity: number,
    /** Largest P ever needed: the store's class size. */
    private readonly maxSlots: number,
  ) {}

  get n(): number {
    return this.len.length;
  }

  /** Device bytes of the cache as it is now. */
  get bytes(): number {
    const rows = this.t ? this.t.k[0].dims[0] : 0;
    return rows * 2 * this.s.nLayer * this.s.nHead * this.tP * this.s.headDim * 4;
  }

  get slack(): number {
    return 0;
  }

  async past(): Promise<KvPast> {
    await this.flush();
    if (!this.t) throw new Error('the device KV cache holds no rows');
    return { k: this.t.k, v: this.t.v, P: this.tP, rows: this.n };
  }

  reserve(slots: number): void {
    const P = slotsToReserve(this.P, slots, this.maxSlots, this.len);
    if (P !== this.P) this.dirty = true;
    this.P = P;
  }

  compact(): void {}

  pushEmpty(slots = 1): number {
    checkNewRow(this.n, this.capacity, slots, this.maxSlots);
    this.P = Math.max(this.P, slotsFor(slots, this.maxSlots));
    this.len.push(0);
    this.plan.push({ row: -1, keep: 0 });
    this.dirty = true;
    return this.n - 1;
  }

  push(src: KvSource): number {
    const r = this.pushEmpty(src.count);
    this.append(r, src);
    return r;
  }

  append(r: number, src: KvSource): void {
    if (this.len[r] + src.count > this.P) throw new Error(`row ${r} has no room for ${src.count} more tokens`);
    const p = this.plan[r];
    if (p.write) throw new Error(`row ${r} has a write planned already`);
    p.write = src;
    this.len[r] += src.count;
    this.dirty = true;
  }

  zero(r: number): void {
    this.plan[r] = { row: this.plan[r].row, keep: 0 };
    this.len[r] = 0;
    this.dirty = true;
  }

  remove(r: number): number {
    const last = this.n - 1;
    if (r !== last) {
      this.len[r] = this.len[last];
      this.plan[r] = this.plan[last];
    }
    this.len.pop();
    this.plan.pop();
    this.dirty = true;
    return r !== last ? last : -1;
  }

  source(b: number): KvSource {
    if (!this.t || this.dirty) throw new Error('flush the store first');
    return { k: this.t.k, v: this.t.v, S: this.tP, b, from: 0, count: this.len[b] };
  }

  /** The planned edits, one update per distinct source of new tokens (a step has one or two). */
  async flush(): Promise<void> {
    if (!this.dirty) return;
    if (this.n === 0) {
      disposeKv(this.t);
      this.t = null;
      this.tP = 0;
      this.P = 0;
      this.dirty = false;
      return;
    }
    const sources: KvSource[][] = [];
    for (const p of this.plan) {
      if (!p.write) continue;
      const same = sources.find((g) => g[0].k === p.write!.k);
      if (same) same.push(p.write);
      else sources.push([p.write]);
    }
    // first run: rows move, drop tokens (zero) and the slot count changes; each run writes one source
    let held = this.plan.map((p) => (p.row < 0 ? 0 : p.keep));
    for (let i = 0; i < Math.max(1, sources.length); i++) {
      const group = sources[i] ?? [];
      const plan: KvPlanRow[] = this.plan.map((p, r) => {
        const w = p.write && group.includes(p.write) ? p.write : undefined;
        return {
          row: i === 0 ? Math.max(0, p.row) : r,
          keep: held[r],
          src: w?.b ?? 0,
          from: w?.from ?? 0,
          count: w?.count ?? 0,
        };
      });
      const f = group.length ? { k: asDevice(group[0].k), v: asDevice(group[0].v) } : null;
      const next = await this.updater.update(this.t, f, plan, this.P);
      disposeKv(this.t);
      this.t = next;
      this.tP = this.P;
      held = plan.map((p) => p.keep + p.count);
    }
    this.plan = this.plan.map((_, r) => ({ row: r, keep: this.len[r] }));
    this.dirty = false;
  }

  dispose(): void {
    disposeKv(this.t);
    this.t = null;
    this.tP = 0;
    this.plan = this.plan.map(() => ({ row: -1, keep: 0 }));
  }
}
