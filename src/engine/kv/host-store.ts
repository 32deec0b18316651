import {
  alignUp,
  checkNewRow,
  type KvPast,
  type KvShape,
  type KvSource,
  type KvStore,
  slotsFor,
  slotsToReserve,
} from './store.js';

/**
 * The host store: KV cache storage kept by the engine (not round-tripped through the graph). A store holds the
 * keys and values of up to `rows` rows, per layer one [rows, n_head, P, head_dim] buffer whose row r
 * holds its tokens at slots [0, len[r]); the slots after them are never attended (serve-graph.ts
 * masks them). A pass feeds the first n rows as a view (no copy), fetches only the new tokens'
 * keys and values, and the store writes them after each row's last token: nothing else is copied
 * per step. Rows join by copying their prompt's cache in and leave by moving the last row into
 * their place. Slot counts: store.ts.
 *
 * Buffers hold the rows the store has needed since it was last allocated (`allocated`, doubling
 * up to `capacity` as rows join), and keep them when rows leave, so that the next rows write to
 * pages already committed. Allocating every row the store may hold instead cost a zero-filled
 * buffer per layer of that size at each growth of P: 40–800 ms pauses for one row of GPT-2 small
 * at a capacity of 32 (measured). `compact()` reallocates to the rows it holds now (the manager
 * keeps the stores' total within the KV budget).
 */
export class HostKvStore implements KvStore {
  k: Float32Array[] = [];
  v: Float32Array[] = [];
  /** Slot capacity per row. */
  P = 0;
  /** Tokens held by each active row. */
  readonly len: number[] = [];
  /** Rows the buffers have room for. */
  private allocated = 0;

  constructor(
    private readonly s: KvShape,
    /** Rows the store holds at most. */
    private readonly capacity: number,
    /** Largest P ever needed: the store's class size (tokens a row may hold). */
    private readonly maxSlots: number,
  ) {}

  /** Active rows. */
  get n(): number {
    return this.len.length;
  }

  /** Host bytes the store holds: the rows its buffers have room for, at the current P. */
  get bytes(): number {
    return this.allocated * this.rowBytes(this.P);
  }

  /** Bytes that compact() would give back. */
  get slack(): number {
    return (this.allocated - this.n) * this.rowBytes(this.P);
  }

  private rowBytes(P: number): number {
    return 2 * this.s.nLayer * this.s.nHead * P * this.s.headDim * 4;
  }

  /** The active rows as the graph's `past`: [n, n_head, P, head_dim] views, no copy. */
  async past(): Promise<KvPast> {
    return this.view();
  }

  view(): { k: Float32Array[]; v: Float32Array[]; P: number; rows: number } {
    const size = this.n * this.s.nHead * this.P * this.s.headDim;
    return {
      k: this.k.map((a) => a.subarray(0, size)),
      v: this.v.map((a) => a.subarray(0, size)),
      P: this.P,
      rows: this.n,
    };
  }

  async flush(): Promise<void> {}

  source(b: number): KvSource {
    return { k: this.k, v: this.v, S: this.P, b, from: 0, count: this.len[b] };
  }

  dispose(): void {}

  /** Makes every row able to hold `slots` tokens: P doubles to fit, and halves while the rows need a quarter of it. */
  reserve(slots: number): void {
    const P = slotsToReserve(this.P, slots, this.maxSlots, this.len);
    if (P !== this.P) this.realloc(P, this.allocated);
  }

  /** Gives back the pages of rows that left (reallocates to the rows held now; an empty store frees all). */
  compact(): void {
    if (this.n === 0) {
      this.k = [];
      this.v = [];
      this.P = 0;
      this.allocated = 0;
    } else if (this.allocated > this.n) this.realloc(this.P, this.n);
  }

  /** New buffers of `rows` rows of P slots, the active rows copied in. */
  private realloc(P: number, rows: number): void {
    if (P < Math.max(0, ...this.len)) throw new Error(`KV cache cannot shrink below ${Math.max(...this.len)} tokens`);
    if (P > alignUp(this.maxSlots)) throw new Error(`KV cache cannot hold ${P} tokens (at most ${this.maxSlots})`);
    const { nLayer, nHead, headDim: hd } = this.s;
    const move = (old: Float32Array[]) =>
      Array.from({ length: nLayer }, (_, l) => {
        const a = new Float32Array(rows * nHead * P * hd);
        for (let r = 0; r < this.n; r++) {
          for (let h = 0; h < nHead; h++) {
            const from = (r * nHead + h) * this.P * hd;
            a.set(old[l].subarray(from, from + this.len[r] * hd), (r * nHead + h) * P * hd);
          }
        }
        return a;
      });
    this.k = move(this.k);
    this.v = move(this.v);
    this.P = P;
    this.allocated = rows;
  }

  /** Adds an empty row able to hold `slots` tokens; returns its index. */
  pushEmpty(slots = 1): number {
    checkNewRow(this.n, this.capacity, slots, this.maxSlots);
    const P = slots > this.P || this.k.length === 0 ? Math.max(this.P, slotsFor(slots, this.maxSlots)) : this.P;
    const rows = this.n < this.allocated ? this.allocated : Math.min(this.capacity, Math.max(1, 2 * this.allocated));
    if (P !== this.P || rows !== this.allocated) this.realloc(P, rows);
    this.len.push(0);
    return this.n - 1;
  }

  /** Adds a row holding `src`'s tokens; returns its index. */
  push(src: KvSource): number {
    const r = this.pushEmpty(src.count);
    this.append(r, src);
    return r;
  }

  /** Writes `src`'s tokens after row r's last token. */
  append(r: number, src: KvSource): void {
    const { nLayer, nHead, headDim: hd } = this.s;
    const at = this.len[r];
    if (at + src.count > this.P) throw new Error(`row ${r} has no room for ${src.count} more tokens`);
    const n = src.count * hd;
    for (let l = 0; l < nLayer; l++) {
      const K = this.k[l];
      const Vb = this.v[l];
      const sk = src.k[l] as Float32Array;
      const sv = src.v[l] as Float32Array;
      for (let h = 0; h < nHead; h++) {
        const from = ((src.b * nHead + h) * src.S + src.from) * hd;
        const to = ((r * nHead + h) * this.P + at) * hd;
        if (n > 256) {
          K.set(sk.subarray(from, from + n), to);
          Vb.set(sv.subarray(from, from + n), to);
          continue;
        }
        // a decode step appends one token per row, layer and head (64 floats): a plain loop, four
        // at a time, runs several times faster than subarray views (bench: per step at 32 rows)
        let i = 0;
        for (; i + 4 <= n; i += 4) {
          K[to + i] = sk[from + i];
          K[to + i + 1] = sk[from + i + 1];
          K[to + i + 2] = sk[from + i + 2];
          K[to + i + 3] = sk[from + i + 3];
          Vb[to + i] = sv[from + i];
          Vb[to + i + 1] = sv[from + i + 1];
          Vb[to + i + 2] = sv[from + i + 2];
          Vb[to + i + 3] = sv[from + i + 3];
        }
        for (; i < n; i++) {
          K[to + i] = sk[from + i];
          Vb[to + i] = sv[from + i];
        }
      }
    }
    this.len[r] = at + src.count;
  }

  /**
   * Drops row r's tokens: its keys and values are zeroed and it holds none. Masked slots still
   * enter attention (the mask is added to the scores, and a NaN plus the mask's −FLT_MAX is NaN): a
   * row whose values went non-finite must not leave them behind for the next row in its place.
   */
  zero(r: number): void {
    const block = this.s.nHead * this.P * this.s.headDim;
    for (let l = 0; l < this.s.nLayer; l++) {
      this.k[l].fill(0, r * block, (r + 1) * block);
      this.v[l].fill(0, r * block, (r + 1) * block);
    }
    this.len[r] = 0;
  }

  /** Removes row r by moving the last row into its place; returns the index that moved there, or -1. */
  remove(r: number): number {
    const last = this.n - 1;
    if (r !== last) {
      const block = this.s.nHead * this.P * this.s.headDim;
      for (let l = 0; l < this.s.nLayer; l++) {
        this.k[l].copyWithin(r * block, last * block, (last + 1) * block);
        this.v[l].copyWithin(r * block, last * block, (last + 1) * block);
      }
      this.len[r] = this.len[last];
    }
    this.len.pop();
    // an empty store keeps its buffers: the pages it has written are reused by the next rows instead
    // of being faulted in again (measured: a tenth of a decode step at 32 rows); compact() frees them
    return r !== last ? last : -1;
  }
}
