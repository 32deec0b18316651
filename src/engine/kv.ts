/**
 * The running batch's KV cache, kept by the engine (not round-tripped through the graph): per layer
 * one [rows, n_head, P, head_dim] buffer whose row r holds its tokens at slots [0, len[r]) and
 * masked free slots after them. A decode step feeds the first n rows as `past` (P = capacity,
 * free slots masked), fetches only the new token's keys and values (`new.{l}.*`), and writes them
 * into slot len[r]: nothing else is copied per step. Rows join by copying their prompt's cache in,
 * leave by moving the last row into their place, and the slot capacity grows in steps of 16 (every step copies and attends over the capacity).
 */
export interface KvShape {
  nLayer: number;
  nHead: number;
  headDim: number;
}

/** Tokens of one row inside a [B, n_head, S, head_dim] buffer per layer: row b, positions [from, from+count). */
export interface KvSource {
  k: Float32Array[];
  v: Float32Array[];
  S: number;
  b: number;
  from: number;
  count: number;
}

const GROW = 16;

export class KvStore {
  k: Float32Array[] = [];
  v: Float32Array[] = [];
  /** Slot capacity per row. */
  P = 0;
  /** Tokens held by each active row. */
  readonly len: number[] = [];

  constructor(
    private readonly s: KvShape,
    /** Rows the buffers hold at most. */
    private readonly capacity: number,
    /** Largest P ever needed (the context). */
    private readonly maxSlots: number,
  ) {}

  /** Active rows. */
  get n(): number {
    return this.len.length;
  }

  /** The active rows as the graph's `past`: [n, n_head, P, head_dim] views, no copy. */
  past(): { k: Float32Array[]; v: Float32Array[]; P: number } {
    const size = this.n * this.s.nHead * this.P * this.s.headDim;
    return { k: this.k.map((a) => a.subarray(0, size)), v: this.v.map((a) => a.subarray(0, size)), P: this.P };
  }

  /**
   * Makes every row able to hold `slots` tokens. P grows in steps of 16 and shrinks when the rows
   * need at most half of it (every step copies and attends over P, so a long request that left
   * must not slow the ones after it).
   */
  reserve(slots: number): void {
    const shrink = slots <= this.P / 2 && this.P > GROW;
    if (slots > this.P || shrink) this.realloc(this.rows, slots);
  }

  /** Rows allocated (grows by doubling up to the capacity, freed when the store empties). */
  private rows = 0;

  private realloc(rows: number, slots: number): void {
    const P = Math.min(this.maxSlots, Math.ceil(slots / GROW) * GROW);
    if (P < slots) throw new Error(`KV cache cannot hold ${slots} tokens (context ${this.maxSlots})`);
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
    this.rows = rows;
  }

  private ensureRow(): void {
    if (this.n >= this.capacity) throw new Error('KV cache is full');
    if (this.n >= this.rows) this.realloc(Math.min(this.capacity, Math.max(1, this.rows * 2)), Math.max(this.P, 1));
  }

  /** Adds a row holding `src`'s tokens; returns its index. */
  push(src: KvSource): number {
    this.ensureRow();
    if (src.count > this.P) this.realloc(this.rows, src.count);
    this.len.push(0);
    this.append(this.n - 1, src);
    return this.n - 1;
  }

  /** Adds an empty row; returns its index. */
  pushEmpty(): number {
    this.ensureRow();
    this.len.push(0);
    return this.n - 1;
  }

  /** Writes `src`'s tokens after row r's last token. */
  append(r: number, src: KvSource): void {
    const { nLayer, nHead, headDim: hd } = this.s;
    const at = this.len[r];
    if (at + src.count > this.P) throw new Error(`row ${r} has no room for ${src.count} more tokens`);
    const n = src.count * hd;
    // a plain loop: this runs for every row, layer and head at every step, and subarray views
    // cost more than the 64 floats they would copy
    for (let l = 0; l < nLayer; l++) {
      const K = this.k[l];
      const Vb = this.v[l];
      const sk = src.k[l];
      const sv = src.v[l];
      for (let h = 0; h < nHead; h++) {
        const from = ((src.b * nHead + h) * src.S + src.from) * hd;
        const to = ((r * nHead + h) * this.P + at) * hd;
        for (let i = 0; i < n; i++) {
          K[to + i] = sk[from + i];
          Vb[to + i] = sv[from + i];
        }
      }
    }
    this.len[r] = at + src.count;
  }

  /**
   * Zeroes row r's keys and values. Masked slots still enter attention (the mask is added to the
   * scores, and a NaN plus the mask's −FLT_MAX is NaN): a row whose values went non-finite must
   * not leave them behind for the next row in its place.
   */
  zero(r: number): void {
    const block = this.s.nHead * this.P * this.s.headDim;
    for (let l = 0; l < this.s.nLayer; l++) {
      this.k[l].fill(0, r * block, (r + 1) * block);
      this.v[l].fill(0, r * block, (r + 1) * block);
    }
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
    if (this.n === 0) {
      // an empty batch gives its memory back
      this.k = [];
      this.v = [];
      this.P = 0;
      this.rows = 0;
    }
    return r !== last ? last : -1;
  }

  /** The attention mask row for row r in a pass that adds T new tokens: slots, then the new ones. */
  maskRow(r: number, T: number): number[] {
    const m = new Array(this.P + T).fill(0);
    for (let i = 0; i < this.len[r]; i++) m[i] = 1;
    for (let i = 0; i < T; i++) m[this.P + i] = 1;
    return m;
  }
}
