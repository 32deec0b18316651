import type { HostBytes } from '../runtime/runtime.js';
import type { KvCacheInfo } from '../types.js';
import { bytesPerToken, classOf, type KvBudgetOptions, kvBudget, sizeClasses } from './budget.js';
import { type DeviceKv, DeviceKvStore, disposeKv, type KvUpdater } from './device-store.js';
import { HostKvStore } from './host-store.js';
import { KvLease } from './lease.js';
import { type KvBlock, type KvPast, type KvShape, type KvStore, SLOT_ALIGN } from './store.js';

/** What the manager needs of the model runner: the cache's shape, and on the device its updater. */
export interface KvMemory {
  readonly kv: KvShape;
  /** Runs the cache update graph where the cache is on the device (updater.ts); none: host stores. */
  readonly updater?: KvUpdater;
  /** The memory a fractional budget is a share of, in bytes (budget.ts kvBudget). Default: the host's. */
  readonly available?: () => number;
}

export interface KvManagerOptions extends KvBudgetOptions {
  /** Rows held at once at most (the scheduler's batch capacity). */
  rows: number;
  /** The model's context (n_positions): the largest size class, and with `rows` the budget's ceiling. */
  context: number;
  /** Cache groups of the serving graph: one per size class at most. */
  groups: number;
}

/** What the scheduler reports of its KV cache. */
export interface KvUsage {
  /** Tokens reserved by admitted requests (their size classes). */
  used: number;
  /** The budget. */
  tokens: number;
  /** Bytes the stores hold now (host or device memory: the runner's `location`). */
  bytes: number;
  /** Host bytes passed into and returned from session runs so far (runner.ts). */
  hostBytes: HostBytes;
}

/** What /metrics sums over engines (a Redis worker's report: queue/jobs.ts). */
export type KvReport = Pick<KvUsage, 'used' | 'tokens'> & Partial<Pick<KvUsage, 'hostBytes'>>;

/** The rows the decode pass runs, in batch order, and the cache it runs on: one group per class. */
export interface KvBatch<R> {
  rows: R[];
  groups: KvPast[];
  /** Tokens each row holds already (its new token's position). */
  pastLen: number[];
}

/** The rows of one size class and the store that holds their cache: row r of `store` is `rows[r]`. */
interface ClassRows<R> {
  store: KvStore;
  rows: { lease: KvLease<R>; row: R }[];
}

/**
 * The KV cache's owner (docs/architecture.md §6 The KV cache), as vLLM's KV cache manager is its
 * scheduler's: the budget and size classes (budget.ts), admission against them, one store per
 * class (host or device), the staging caches of chunked prompts, compaction, the zero caches of
 * passes with nothing cached, and the usage reported. The scheduler holds one lease per request
 * and asks: admit, stage, join, release, end the step; it never touches a store.
 */
export class KvManager<R> {
  /** The budget in tokens, all rows together, and its size classes (ascending). */
  readonly tokens: number;
  readonly classes: number[];
  private used = 0;
  /** Rows admitted (a telemetry request is two: itself and its twin). */
  private rowsUsed = 0;
  private byClass: ClassRows<R>[];
  /** Leases whose prompt's cache is ready to join, in the order they became ready. */
  private ready: KvLease<R>[] = [];
  /** Leases not given back (their staging stores, at a reset). */
  private readonly live = new Set<KvLease<R>>();
  /** Stores whose rows left for their class's store this step (a prompt's staging), given back after it. */
  private retired: KvStore[] = [];
  /** Caches of zeros (SLOT_ALIGN masked slots) for passes with nothing cached, by rows; on the device. */
  private readonly zeroCaches = new Map<number, DeviceKv>();

  constructor(
    private readonly memory: KvMemory,
    private readonly opts: KvManagerOptions,
  ) {
    this.tokens = kvBudget(opts, memory.kv, opts.rows * opts.context, memory.available);
    // one class per cache group of the graph (a graph with one group holds every row in one store)
    const top = Math.min(opts.context, this.tokens);
    this.classes = opts.groups === 1 ? [top] : sizeClasses(top);
    if (this.classes.length > opts.groups)
      throw new Error(`${this.classes.length} size classes, the graph has ${opts.groups} groups`);
    this.byClass = this.emptyClasses();
  }

  private newStore(capacity: number, maxSlots: number): KvStore {
    const { kv, updater } = this.memory;
    return updater ? new DeviceKvStore(kv, updater, capacity, maxSlots) : new HostKvStore(kv, capacity, maxSlots);
  }

  private emptyClasses(): ClassRows<R>[] {
    return this.classes.map((cap) => ({
      store: this.newStore(Math.min(this.opts.rows, Math.floor(this.tokens / cap)), cap),
      rows: [],
    }));
  }

  /** Reserved, budget and bytes held (the host byte counters are the runner's). */
  usage(hostBytes: HostBytes): KvUsage {
    return {
      used: this.used,
      tokens: this.tokens,
      bytes: this.byClass.reduce((a, c) => a + c.store.bytes, 0),
      hostBytes: { ...hostBytes },
    };
  }

  /** The cache as clients see it (ModelInfo.kv_cache). */
  get info(): KvCacheInfo {
    return {
      tokens: this.tokens,
      bytes_per_token: bytesPerToken(this.memory.kv),
      location: this.memory.updater ? 'device' : 'host',
      classes: this.classes,
      max_rows: this.opts.rows,
    };
  }

  /** A lease for `rows` rows of `tokens` tokens each (prompt + max_new_tokens), not admitted yet. */
  lease(rows: readonly R[], tokens: number): KvLease<R> {
    // validation refused requests that can never fit (validate.ts)
    const cls = classOf(this.classes, tokens);
    if (cls < 0) throw new Error(`request of ${tokens} tokens beyond the KV budget`);
    const lease = new KvLease(cls, this.classes[cls], rows);
    this.live.add(lease);
    return lease;
  }

  /** Reserves the lease's class for each of its rows, if the rows and the tokens fit. */
  admit(lease: KvLease<R>): boolean {
    const n = lease.rows.length;
    if (this.rowsUsed + n > this.opts.rows || this.used + lease.tokens * n > this.tokens) return false;
    lease.admitted = true;
    this.used += lease.tokens * n;
    this.rowsUsed += n;
    return true;
  }

  /** Gives back the lease's reservation and its prompt's cache; its rows leave their store at the next join. */
  release(lease: KvLease<R>): void {
    if (lease.released) return;
    if (lease.admitted) {
      this.used -= lease.tokens * lease.rows.length;
      this.rowsUsed -= lease.rows.length;
    }
    lease.released = true;
    lease.sources = undefined;
    if (lease.staging) this.retired.push(lease.staging);
    lease.staging = undefined;
    this.ready = this.ready.filter((l) => l !== lease);
    this.live.delete(lease);
  }

  /** Releases a lease whose values went non-finite: its rows' cache is zeroed first (it may hold NaNs). */
  abort(lease: KvLease<R>): void {
    const c = this.byClass[lease.cls];
    for (const [r, e] of c.rows.entries()) if (e.lease === lease) c.store.zero(r);
    this.release(lease);
  }

  /** The cache of `rows` rows with nothing cached (on the device, SLOT_ALIGN masked zero slots kept there). */
  async empty(rows: number): Promise<KvPast> {
    const updater = this.memory.updater;
    if (!updater) return { k: [], v: [], P: 0, rows };
    const P = SLOT_ALIGN;
    let z = this.zeroCaches.get(rows);
    if (!z) {
      const none = { row: 0, keep: 0, src: 0, from: 0, count: 0 };
      z = await updater.update(null, null, new Array(rows).fill(none), P);
      this.zeroCaches.set(rows, z);
    }
    return { k: z.k, v: z.v, P, rows };
  }

  /** A whole prompt's pass wrote the lease's rows at rows b, b + 1, ... of `fresh` ([B, n_head, T, head_dim]). */
  prefilled(lease: KvLease<R>, fresh: { k: KvBlock[]; v: KvBlock[] }, T: number, b: number, count: number): void {
    lease.sources = lease.rows.map((_, i) => ({ k: fresh.k, v: fresh.v, S: T, b: b + i, from: 0, count }));
    this.ready.push(lease);
  }

  /** The cache so far of a prompt prefilled in chunks (its staging store, made for `promptLen` tokens). */
  async stage(lease: KvLease<R>, promptLen: number): Promise<KvPast> {
    if (!lease.staging) {
      lease.staging = this.newStore(lease.rows.length, lease.tokens);
      for (const _ of lease.rows) lease.staging.pushEmpty(promptLen);
    }
    return lease.staging.past();
  }

  /**
   * A chunk's pass (the lease's rows only) wrote `count` tokens per row: they join the staging
   * store; after the last chunk (`done`) its rows are the prompt's cache, ready to join.
   */
  async staged(lease: KvLease<R>, fresh: { k: KvBlock[]; v: KvBlock[] }, T: number, count: number, done: boolean) {
    const staging = lease.staging!;
    for (const b of lease.rows.keys()) staging.append(b, { k: fresh.k, v: fresh.v, S: T, b, from: 0, count });
    await staging.flush();
    if (!done) return;
    lease.sources = lease.rows.map((_, b) => staging.source(b));
    this.retired.push(staging);
    lease.staging = undefined;
    this.ready.push(lease);
  }

  /**
   * Rows given back leave their class's store, ready prompts join theirs, and every store makes
   * room for one more token: the decode pass's rows and cache (no rows: null).
   */
  async join(): Promise<KvBatch<R> | null> {
    for (const c of this.byClass) {
      for (let r = c.rows.length - 1; r >= 0; r--) {
        if (!c.rows[r].lease.released) continue;
        if (c.store.remove(r) >= 0) c.rows[r] = c.rows[c.rows.length - 1];
        c.rows.pop();
      }
    }
    this.limitMemory();
    for (const lease of this.ready) {
      const c = this.byClass[lease.cls];
      for (const [i, row] of lease.rows.entries()) {
        c.store.push(lease.sources![i]);
        c.rows.push({ lease, row });
      }
      lease.sources = undefined;
    }
    this.ready = [];
    const rows = this.byClass.flatMap((c) => c.rows.map((e) => e.row));
    if (!rows.length) return null;
    const groups: KvPast[] = [];
    const pastLen: number[] = [];
    for (const c of this.byClass) {
      if (c.rows.length) c.store.reserve(Math.max(...c.store.len) + 1);
      groups.push(c.rows.length ? await c.store.past() : { k: [], v: [], P: 0, rows: 0 });
      pastLen.push(...c.store.len);
    }
    return { rows, groups, pastLen };
  }

  /** The decode pass wrote one token per row (in join()'s batch order): each store appends its rows'. */
  async append(fresh: { k: KvBlock[]; v: KvBlock[] }): Promise<void> {
    let b = 0;
    for (const c of this.byClass) {
      for (const [r] of c.rows.entries())
        c.store.append(r, { k: fresh.k, v: fresh.v, S: 1, b: b++, from: 0, count: 1 });
      await c.store.flush();
    }
  }

  /**
   * Keeps the pages the stores commit within the budget: rows that left leave their pages written
   * until a store is reallocated, so the stores with the most such slack are compacted first.
   */
  private limitMemory(): void {
    const limit = this.tokens * bytesPerToken(this.memory.kv);
    const stores = this.byClass.map((c) => c.store);
    let bytes = stores.reduce((a, st) => a + st.bytes, 0);
    for (const st of [...stores].sort((a, b) => b.slack - a.slack)) {
      if (bytes <= limit || st.slack === 0) break;
      bytes -= st.slack;
      st.compact();
    }
  }

  /** After a step: the staging stores whose rows joined their class's (or were given back) go. */
  endStep(): void {
    this.disposeRetired();
    // on the device, an idle manager holds nothing: the rows left (they would leave at the next
    // join) and the zero caches are given back, so that device memory and the binding's live values
    // (capi.ts) return to zero between bursts of requests
    if (this.memory.updater && this.live.size === 0) this.reset();
  }

  private disposeRetired(): void {
    for (const st of this.retired) st.dispose();
    this.retired = [];
  }

  /** Forgets every lease and empties every store and zero cache (after a failed pass; when idle on the device). */
  reset(): void {
    for (const lease of this.live) lease.staging?.dispose();
    this.live.clear();
    this.ready = [];
    this.used = 0;
    this.rowsUsed = 0;
    for (const c of this.byClass) c.store.dispose();
    this.disposeRetired();
    this.byClass = this.emptyClasses();
    for (const z of this.zeroCaches.values()) disposeKv(z);
    this.zeroCaches.clear();
  }

  /** Gives back everything the manager holds. */
  close(): void {
    this.reset();
  }
}
