/**
 * KV cache rows. Caches live in [B, n_head, P, head_dim] float32 buffers (the graph's past/present
 * layout) with each row's real tokens right-aligned (left padding, masked). A row is referred to by
 * the buffers that hold it, its batch index and its length, so rows can be moved from a prefill's
 * output or from the running batch into a new batch without intermediate copies.
 */
export interface RowRef {
  /** Per layer: key and value buffers of shape [B, n_head, P, head_dim]. */
  k: Float32Array[];
  v: Float32Array[];
  /** The P of those buffers. */
  P: number;
  /** Row index inside them. */
  b: number;
  /** Real tokens held (right-aligned: positions P - len .. P - 1). */
  len: number;
}

export interface KvShape {
  nLayer: number;
  nHead: number;
  headDim: number;
}

/** Copies rows into fresh [rows.length, n_head, P, head_dim] buffers, right-aligned, zero padding. */
export function assemble(rows: readonly RowRef[], P: number, s: KvShape): { k: Float32Array[]; v: Float32Array[] } {
  const B = rows.length;
  const { nLayer, nHead, headDim: hd } = s;
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let l = 0; l < nLayer; l++) {
    const K = new Float32Array(B * nHead * P * hd);
    const Vb = new Float32Array(B * nHead * P * hd);
    for (let r = 0; r < B; r++) {
      const src = rows[r];
      if (src.len > P) throw new Error(`row of ${src.len} tokens does not fit P = ${P}`);
      for (let h = 0; h < nHead; h++) {
        const from = ((src.b * nHead + h) * src.P + src.P - src.len) * hd;
        const to = ((r * nHead + h) * P + P - src.len) * hd;
        const n = src.len * hd;
        K.set(src.k[l].subarray(from, from + n), to);
        Vb.set(src.v[l].subarray(from, from + n), to);
      }
    }
    k.push(K);
    v.push(Vb);
  }
  return { k, v };
}
