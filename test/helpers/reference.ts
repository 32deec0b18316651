/**
 * The oracle: a plain float64 GPT-2 forward pass written from the model's equations, independent of
 * steerd's graph builder and checkpoint reader. It reads the checkpoint files itself.
 *
 *   x_0   = wte[token] + wpe[position]
 *   x_l  += steer_l                                   (hook l, l = 0..n_layer)
 *   x_l+1 = x_l + attn(LN_1(x_l)) ; x_l+1 += mlp(LN_2(x_l+1))
 *   logits = LN_f(x_L) · wte^T   (or lm_head^T when the checkpoint has one)
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface RefModel {
  nLayer: number;
  nEmbd: number;
  nHead: number;
  vocab: number;
  eps: number;
  w: Map<string, Float64Array>;
}

/**
 * A checkpoint's config.json and its weights in float64, by name as stored (read here, not by
 * steerd): `model.safetensors`, or the shards `model.safetensors.index.json` names; F32, BF16 (the
 * upper 16 bits of a float32) or F16 (IEEE binary16), decoded from the formats' definitions.
 */
export function readCheckpoint64(dir: string): { cfg: ReturnType<typeof JSON.parse>; w: Map<string, Float64Array> } {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const files = existsSync(join(dir, 'model.safetensors'))
    ? ['model.safetensors']
    : [
        ...new Set(
          Object.values(
            JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')).weight_map as Record<
              string,
              string
            >,
          ),
        ),
      ];
  const w = new Map<string, Float64Array>();
  for (const f of files) {
    const buf = readFileSync(join(dir, f));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    for (const [key, v] of Object.entries(header)) {
      if (key === '__metadata__') continue;
      const { dtype, data_offsets } = v as { dtype: string; data_offsets: [number, number] };
      const at = 8 + n + data_offsets[0];
      const count = (data_offsets[1] - data_offsets[0]) / (dtype === 'F32' ? 4 : 2);
      const out = new Float64Array(count);
      for (let i = 0; i < count; i++) {
        if (dtype === 'F32') out[i] = buf.readFloatLE(at + 4 * i);
        else if (dtype === 'BF16') out[i] = bf16(buf.readUInt16LE(at + 2 * i));
        else if (dtype === 'F16') out[i] = f16(buf.readUInt16LE(at + 2 * i));
        else throw new Error(`reference reads F32, BF16 and F16 only (${key} is ${dtype})`);
      }
      w.set(key, out);
    }
  }
  return { cfg, w };
}

/** bfloat16: sign, 8 exponent bits (bias 127), 7 mantissa bits. */
function bf16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 7) & 0xff;
  const man = h & 0x7f;
  if (exp === 0xff) return man ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return exp === 0 ? sign * man * 2 ** -133 : sign * (1 + man / 128) * 2 ** (exp - 127);
}

/** binary16: sign, 5 exponent bits (bias 15), 10 mantissa bits. */
function f16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0x1f) return man ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return exp === 0 ? sign * man * 2 ** -24 : sign * (1 + man / 1024) * 2 ** (exp - 15);
}

export function loadReference(dir: string): RefModel {
  const { cfg, w: stored } = readCheckpoint64(dir);
  const w = new Map([...stored].map(([key, v]) => [key.replace(/^transformer\./, ''), v]));
  return {
    nLayer: cfg.n_layer,
    nEmbd: cfg.n_embd,
    nHead: cfg.n_head,
    vocab: cfg.vocab_size,
    eps: cfg.layer_norm_epsilon,
    w,
  };
}

/** Steering: the vector added at hook `layer` for position `pos`, or undefined. */
export type RefSteer = (layer: number, pos: number) => ArrayLike<number> | undefined;

/** The hook sites, in the order a block meets them (see src/model/hooks.ts for their meaning). */
export type RefSite = 'resid_pre' | 'ln1' | 'attn_out' | 'resid_mid' | 'ln2' | 'mlp_out';

/** Any transformation of the activation at (site, layer) for position `pos` (after `steer` at resid_pre). */
export type RefHook = (site: RefSite, layer: number, pos: number, x: Float64Array) => Float64Array | undefined;

export interface RefOutput {
  /** logits[t] = Float64Array(V) */
  logits: Float64Array[];
  /** resid[l][t] = Float64Array(H), the stream at hook l after steering */
  resid: Float64Array[][];
  /** sites[site][l][t]: the activation at each hook site, after its hook */
  sites: Record<RefSite, Float64Array[][]>;
}

function layerNorm(x: Float64Array, g: Float64Array, b: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (x[i] - mean) ** 2;
  v /= n;
  const s = 1 / Math.sqrt(v + eps);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (x[i] - mean) * s * g[i] + b[i];
  return out;
}

/** x [in] times W [in, out] (row-major) plus bias [out]. */
function affine(x: Float64Array, W: Float64Array, bias: Float64Array): Float64Array {
  const nOut = bias.length;
  const out = Float64Array.from(bias);
  for (let i = 0; i < x.length; i++) {
    const xi = x[i];
    const row = i * nOut;
    for (let j = 0; j < nOut; j++) out[j] += xi * W[row + j];
  }
  return out;
}

const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** With `lastOnly`, `logits` holds the last position's logits alone (the vocabulary projection is the slow part). */
export function referenceForward(
  m: RefModel,
  ids: number[],
  steer?: RefSteer,
  opts: { lastOnly?: boolean; hook?: RefHook } = {},
): RefOutput {
  const H = m.nEmbd;
  const hd = H / m.nHead;
  const T = ids.length;
  const W = (k: string) => {
    const v = m.w.get(k);
    if (!v) throw new Error(`reference: no ${k}`);
    return v;
  };
  const wte = W('wte.weight');
  const wpe = W('wpe.weight');
  let x: Float64Array[] = ids.map((id, t) => {
    const v = new Float64Array(H);
    for (let i = 0; i < H; i++) v[i] = wte[id * H + i] + wpe[t * H + i];
    return v;
  });
  const resid: Float64Array[][] = [];
  const sites = { resid_pre: resid, ln1: [], attn_out: [], resid_mid: [], ln2: [], mlp_out: [] } as RefOutput['sites'];
  /** The hook at (site, l) over every position: the caller's transformation, recorded. */
  const at = (site: RefSite, l: number, xs: Float64Array[]) => {
    const out = xs.map((v, t) => opts.hook?.(site, l, t, v) ?? v);
    sites[site].push(out.map((v) => Float64Array.from(v)));
    return out;
  };
  const hook = (l: number) => {
    x = x.map((v, t) => {
      const s = steer?.(l, t);
      if (!s) return v;
      const o = Float64Array.from(v);
      for (let i = 0; i < H; i++) o[i] += s[i];
      return o;
    });
    x = at('resid_pre', l, x);
  };
  for (let l = 0; l < m.nLayer; l++) {
    hook(l);
    const p = `h.${l}.`;
    const a = at(
      'ln1',
      l,
      x.map((v) => layerNorm(v, W(`${p}ln_1.weight`), W(`${p}ln_1.bias`), m.eps)),
    );
    const qkv = a.map((v) => affine(v, W(`${p}attn.c_attn.weight`), W(`${p}attn.c_attn.bias`)));
    const att = x.map(() => new Float64Array(H));
    for (let h = 0; h < m.nHead; h++) {
      for (let t = 0; t < T; t++) {
        const scores: number[] = [];
        for (let s = 0; s <= t; s++) {
          let d = 0;
          for (let i = 0; i < hd; i++) d += qkv[t][h * hd + i] * qkv[s][H + h * hd + i];
          scores.push(d / Math.sqrt(hd));
        }
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= t; s++) {
          for (let i = 0; i < hd; i++) att[t][h * hd + i] += (e[s] / z) * qkv[s][2 * H + h * hd + i];
        }
      }
    }
    const y = at(
      'attn_out',
      l,
      att.map((v) => affine(v, W(`${p}attn.c_proj.weight`), W(`${p}attn.c_proj.bias`))),
    );
    const r = at(
      'resid_mid',
      l,
      x.map((v, t) => v.map((a, i) => a + y[t][i])),
    );
    const n2 = at(
      'ln2',
      l,
      r.map((v) => layerNorm(v, W(`${p}ln_2.weight`), W(`${p}ln_2.bias`), m.eps)),
    );
    const o = at(
      'mlp_out',
      l,
      n2.map((v) => {
        const f = affine(v, W(`${p}mlp.c_fc.weight`), W(`${p}mlp.c_fc.bias`)).map(gelu);
        return affine(f, W(`${p}mlp.c_proj.weight`), W(`${p}mlp.c_proj.bias`));
      }),
    );
    x = r.map((v, t) => v.map((a, i) => a + o[t][i]));
  }
  hook(m.nLayer);
  const head = m.w.get('lm_head.weight') ?? wte;
  const logits = (opts.lastOnly ? x.slice(-1) : x).map((v) => {
    const h = layerNorm(v, W('ln_f.weight'), W('ln_f.bias'), m.eps);
    const out = new Float64Array(m.vocab);
    for (let j = 0; j < m.vocab; j++) {
      let d = 0;
      for (let i = 0; i < H; i++) d += h[i] * head[j * H + i];
      out[j] = d;
    }
    return out;
  });
  return { logits, resid, sites };
}

/** log-softmax of a float64 row. */
export function logSoftmax(row: Float64Array): Float64Array {
  let m = -Infinity;
  for (const v of row) m = Math.max(m, v);
  let z = 0;
  for (const v of row) z += Math.exp(v - m);
  const lse = m + Math.log(z);
  return row.map((v) => v - lse);
}

/**
 * A prompt's scores (prompt_logprobs, the first token unscored) against the reference's: the largest
 * logprob difference, and at how many positions the most likely token is the reference's.
 */
export function promptAccuracy(
  ref: RefModel,
  prompt: number[],
  scored: { logprob: number | null; top_logprobs: { id: number }[] }[],
): { max: number; top: number } {
  const want = referenceForward(ref, prompt).logits.map(logSoftmax);
  let max = 0;
  let top = 0;
  for (const [i, x] of scored.slice(1).entries()) {
    max = Math.max(max, Math.abs(x.logprob! - want[i][prompt[i + 1]]));
    if (x.top_logprobs[0].id === want[i].reduce((b, v, j) => (v > want[i][b] ? j : b), 0)) top++;
  }
  return { max, top };
}
