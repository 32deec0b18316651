import type { DeviceTensor } from '../runtime/runtime.js';

/**
 * The KV cache's store interface and slot arithmetic (docs/architecture.md §6 The KV cache). A
 * store holds the keys and values of up to `rows` rows, per layer one [rows, n_head, P, head_dim]
 * buffer whose row r holds its tokens at slots [0, len[r]); the slots after them are never
 * attended (serve-graph.ts masks them). Two stores implement it: the host one (host-store.ts) and
 * the device one (device-store.ts); the manager (manager.ts) is the one that holds them.
 *
 * The slot count P is a power of two, at least 16, up to the store's class size (see budget.ts):
 * growing copies the store, so it doubles (amortised: each token is copied a bounded number of
 * times) and shrinks when the rows need a quarter of it. P is always a multiple of 16 because ONNX
 * Runtime's kernels handle the last, partial block of a row of scores differently from the full
 * blocks: with P aligned, a row's real slots always fall in full blocks, whatever P the store has
 * (measured: with P equal to a row's length its logits differed in the last bits).
 */
export interface KvShape {
  nLayer: number;
  nHead: number;
  headDim: number;
}

/**
 * Keys or values of one layer, [rows, n_head, slots, head_dim]: a host array, or a tensor that stays
 * on the accelerator (device-store.ts); a store only ever meets its own kind.
 */
export type KvBlock = Float32Array | DeviceTensor;

export type { DeviceTensor };

/** Tokens of one row inside a [B, n_head, S, head_dim] buffer per layer: row b, positions [from, from+count). */
export interface KvSource {
  k: KvBlock[];
  v: KvBlock[];
  S: number;
  b: number;
  from: number;
  count: number;
}

/** The active rows as the graph's `past`: [rows, n_head, P, head_dim] per layer. */
export interface KvPast {
  k: KvBlock[];
  v: KvBlock[];
  P: number;
  rows: number;
}

/**
 * What the manager asks of a store, wherever it keeps the cache (host: HostKvStore; device:
 * DeviceKvStore). Row edits are immediate on the host and planned on the device, where `flush()`
 * runs them (one pass of the cache update graph); `past()` flushes first.
 */
export interface KvStore {
  /** Tokens held by each active row. */
  readonly len: readonly number[];
  /** Active rows. */
  readonly n: number;
  /** Bytes the store holds (host or device memory). */
  readonly bytes: number;
  /** Bytes that compact() would give back. */
  readonly slack: number;
  past(): Promise<KvPast>;
  reserve(slots: number): void;
  compact(): void;
  pushEmpty(slots?: number): number;
  push(src: KvSource): number;
  append(r: number, src: KvSource): void;
  /** Drops row r's tokens, zeroing their slots (a row whose values went non-finite). */
  zero(r: number): void;
  remove(r: number): number;
  /** Applies planned edits (host: nothing to do). */
  flush(): Promise<void>;
  /** Row b's whole cache, as a source for another store (a prefilled prompt joining its class). */
  source(b: number): KvSource;
  /** Gives back what the store holds (device buffers; host arrays are left to the collector). */
  dispose(): void;
}

/** Slot counts and padded lengths are multiples of this (see above). */
export const SLOT_ALIGN = 16;

export const alignUp = (n: number) => Math.ceil(n / SLOT_ALIGN) * SLOT_ALIGN;

/** The slot count for `slots` tokens: a power of two, at least SLOT_ALIGN, at most `max` (aligned). */
export function slotsFor(slots: number, max: number): number {
  let P = SLOT_ALIGN;
  while (P < slots) P *= 2;
  return Math.min(P, alignUp(max));
}

/** The slot count a store holding rows of `len` tokens takes to give every row `slots`: doubles to fit, halves while the rows need a quarter of it. */
export function slotsToReserve(P: number, slots: number, maxSlots: number, len: readonly number[]): number {
  let next = Math.max(P, SLOT_ALIGN);
  if (slots > next) next = slotsFor(slots, maxSlots);
  while (next > SLOT_ALIGN && slots <= next / 4) next /= 2;
  if (next < Math.max(0, ...len)) throw new Error(`KV cache cannot shrink below ${Math.max(...len)} tokens`);
  return next;
}

/** Refuses a new row of `slots` tokens that a store of `n` rows cannot take. */
export function checkNewRow(n: number, capacity: number, slots: number, maxSlots: number): void {
  if (n >= capacity) throw new Error('KV cache is full');
  if (slots > maxSlots) throw new Error(`KV cache cannot hold ${slots} tokens in a row (at most ${maxSlots})`);
}
