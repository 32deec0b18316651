/**
 * The Llama family (docs/architecture.md §8) against an independent float64 reference written
 * here from the model's definitions (RMSNorm, rotate-half RoPE with the config's frequencies,
 * causal softmax attention with grouped-query heads, SwiGLU), not from the graph code: logits and
 * every hook point through the contract graph, steered and ablated, grouped-query ratios 1, 2 and
 * 4, biases, tied and untied heads, every RoPE scaling; incremental decoding through the cache; the
 * serving graph; the registry and what it refuses.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import t, { type Test } from 'tap';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import { CheckpointError } from '../src/errors.ts';
import { writeChatTemplate } from '../src/model/chat-templates.ts';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { familyOf, loadTokenizer } from '../src/model/families.ts';
import { ensureFloat32Weights } from '../src/model/float32-weights.ts';
import { Gpt2Tokenizer } from '../src/model/gpt2/tokenizer.ts';
import { buildGraph } from '../src/model/graph.ts';
import { ensureHalfWeights } from '../src/model/half-weights.ts';
import { SITES, type Site } from '../src/model/hooks.ts';
import { LLAMA } from '../src/model/llama/family.ts';
import { type TinyLlamaOptions, writeTinyLlamaCheckpoint } from '../src/model/llama/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { harness, post } from './helpers/api.ts';
import { collect } from './helpers/engine-util.ts';
import { fillHooks } from './helpers/graph-run.ts';
import { startEngine } from './helpers/provider.ts';
import { readCheckpoint64 } from './helpers/reference.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-llama-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// The reference: plain float64 loops over the checkpoint files, read here.

interface Ref {
  L: number;
  H: number;
  nh: number;
  nkv: number;
  hd: number;
  V: number;
  eps: number;
  invFreq: number[];
  w: Map<string, Float64Array>;
}

/** RoPE frequencies from the definitions: θ^(−2i/d), then the scaling the config names. */
function refInvFreq(cfg: Record<string, unknown>, d: number): number[] {
  const theta = (cfg.rope_theta as number) ?? 10000;
  const s = cfg.rope_scaling as Record<string, number | string> | null;
  const out: number[] = [];
  for (let i = 0; i < d; i += 2) {
    const f = theta ** (-i / d);
    const type = s?.rope_type ?? s?.type;
    if (!s || type === undefined) out.push(f);
    else if (type === 'linear') out.push(f / (s.factor as number));
    else {
      // Llama 3.1: by wavelength against the original context
      const [factor, lo, hi, old] = [
        s.factor,
        s.low_freq_factor,
        s.high_freq_factor,
        s.original_max_position_embeddings,
      ] as number[];
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > old / lo) out.push(f / factor);
      else if (wavelen < old / hi) out.push(f);
      else {
        const a = (old / wavelen - lo) / (hi - lo);
        out.push(a * f + ((1 - a) * f) / factor);
      }
    }
  }
  return out;
}

function loadRef(dir: string): Ref {
  const { cfg, w } = readCheckpoint64(dir);
  const nh = cfg.num_attention_heads;
  const hd = cfg.head_dim ?? cfg.hidden_size / nh;
  return {
    L: cfg.num_hidden_layers,
    H: cfg.hidden_size,
    nh,
    nkv: cfg.num_key_value_heads ?? nh,
    hd,
    V: cfg.vocab_size,
    eps: cfg.rms_norm_eps,
    invFreq: refInvFreq(cfg, hd),
    w,
  };
}

/** y = x Wᵀ + b for W [out, in] (Hugging Face's nn.Linear layout); b absent when the file has none. */
function lin(x: Float64Array, W: Float64Array, b: Float64Array | undefined, out: number): Float64Array {
  const inn = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < inn; i++) s += x[i] * W[o * inn + i];
    y[o] = s;
  }
  return y;
}

function rmsNorm(x: Float64Array, g: Float64Array, eps: number): Float64Array {
  let ms = 0;
  for (const v of x) ms += v * v;
  const r = 1 / Math.sqrt(ms / x.length + eps);
  return Float64Array.from(x, (v, i) => v * r * g[i]);
}

/** Rotates one head's vector (offset o, width d) in place: x·cos + rotate_half(x)·sin. */
function rotate(x: Float64Array, o: number, d: number, pos: number, invFreq: number[]) {
  const half = d / 2;
  for (let i = 0; i < half; i++) {
    const a = pos * invFreq[i];
    const [x1, x2] = [x[o + i], x[o + i + half]];
    x[o + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
    x[o + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
  }
}

/** The hook points' edits: s added, then the rank-1 map x − (x·u)z of the projection inputs. */
interface RefEdit {
  steer?: Float64Array;
  u?: Float64Array;
  z?: Float64Array;
}

/** Full forward pass of one sequence at positions 0..T-1: logits [T][V] and every hook point [T][H]. */
function forward(m: Ref, ids: number[], edits: Partial<Record<string, RefEdit>> = {}) {
  const { L, H, nh, nkv, hd, V, eps } = m;
  const W = (name: string) => m.w.get(name)!;
  const T = ids.length;
  const hooks = new Map<string, Float64Array[]>();
  const hook = (site: Site, l: number, xs: Float64Array[]) => {
    const e = edits[`${site}.${l}`];
    const ys = xs.map((x) => {
      let y = Float64Array.from(x);
      if (e?.u && e.z) {
        let p = 0;
        for (let i = 0; i < H; i++) p += x[i] * e.u[i];
        y = Float64Array.from(y, (v, i) => v - p * e.z![i]);
      }
      if (e?.steer) y = Float64Array.from(y, (v, i) => v + e.steer![i]);
      return y;
    });
    hooks.set(`${site}.${l}`, ys);
    return ys;
  };
  const E = W('model.embed_tokens.weight');
  let x = ids.map((id) => E.slice(id * H, (id + 1) * H));
  const group = nh / nkv;
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    x = hook('resid_pre', l, x);
    const a = hook(
      'ln1',
      l,
      x.map((v) => rmsNorm(v, W(`${p}input_layernorm.weight`), eps)),
    );
    const proj = (name: string, out: number) =>
      a.map((v) => lin(v, W(`${p}self_attn.${name}_proj.weight`), m.w.get(`${p}self_attn.${name}_proj.bias`), out));
    const q = proj('q', nh * hd);
    const k = proj('k', nkv * hd);
    const v = proj('v', nkv * hd);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nh; h++) rotate(q[t], h * hd, hd, t, m.invFreq);
      for (let h = 0; h < nkv; h++) rotate(k[t], h * hd, hd, t, m.invFreq);
    }
    const ctx = Array.from({ length: T }, () => new Float64Array(nh * hd));
    for (let h = 0; h < nh; h++) {
      const kh = Math.floor(h / group); // the key/value head this query head reads
      for (let t = 0; t < T; t++) {
        const s: number[] = [];
        for (let u = 0; u <= t; u++) {
          let d = 0;
          for (let i = 0; i < hd; i++) d += q[t][h * hd + i] * k[u][kh * hd + i];
          s.push(d / Math.sqrt(hd));
        }
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const z = e.reduce((A, B) => A + B, 0);
        for (let u = 0; u <= t; u++) for (let i = 0; i < hd; i++) ctx[t][h * hd + i] += (e[u] / z) * v[u][kh * hd + i];
      }
    }
    const o = hook(
      'attn_out',
      l,
      ctx.map((c) => lin(c, W(`${p}self_attn.o_proj.weight`), m.w.get(`${p}self_attn.o_proj.bias`), H)),
    );
    x = hook(
      'resid_mid',
      l,
      x.map((r, t) => r.map((val, i) => val + o[t][i])),
    );
    const mm = hook(
      'ln2',
      l,
      x.map((r) => rmsNorm(r, W(`${p}post_attention_layernorm.weight`), eps)),
    );
    const inner = W(`${p}mlp.up_proj.weight`).length / H;
    const down = hook(
      'mlp_out',
      l,
      mm.map((r) => {
        const gate = lin(r, W(`${p}mlp.gate_proj.weight`), undefined, inner);
        const up = lin(r, W(`${p}mlp.up_proj.weight`), undefined, inner);
        const hidden = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
        return lin(hidden, W(`${p}mlp.down_proj.weight`), undefined, H);
      }),
    );
    x = x.map((r, t) => r.map((val, i) => val + down[t][i]));
  }
  x = hook('resid_pre', L, x);
  const head = m.w.get('lm_head.weight') ?? E;
  const logits = x.map((r) => lin(rmsNorm(r, W('model.norm.weight'), eps), head, undefined, V));
  return { logits, hooks };
}

// ---------------------------------------------------------------------------------------------
// The contract graph, fed by its names (docs/architecture.md §3), with kvHeads-wide caches.

const f32 = (a: ArrayLike<number>, dims: number[]) => new ort.Tensor('float32', Float32Array.from(a), dims);
const i64 = (a: number[]) => new ort.Tensor('int64', BigInt64Array.from(a.map(BigInt)), [1, a.length]);

async function runContract(
  s: ort.InferenceSession,
  m: Ref,
  ids: number[],
  from = 0,
  past?: Record<string, ort.Tensor>,
  edits: Partial<Record<string, RefEdit>> = {},
) {
  const feeds: Record<string, ort.Tensor> = {
    input_ids: i64(ids),
    attention_mask: i64(Array(from + ids.length).fill(1)),
    position_ids: i64(ids.map((_, i) => from + i)),
  };
  for (let l = 0; l < m.L; l++)
    for (const kv of ['key', 'value'])
      feeds[`past.${l}.${kv}`] = past?.[`present.${l}.${kv}`] ?? f32([], [1, m.nkv, 0, m.hd]);
  for (const [name, e] of Object.entries(edits)) {
    const [site, l] = name.split('.') as [Site, string];
    const base = site === 'resid_pre' ? `${l}` : `${site}.${l}`;
    if (e?.steer) feeds[`steer.${base}`] = f32(e.steer, [1, 1, m.H]);
    if (e?.u && e.z) {
      feeds[`proj.${site}.${l}.u`] = f32(e.u, [1, 1, m.H]);
      feeds[`proj.${site}.${l}.z`] = f32(e.z, [1, 1, m.H]);
    }
  }
  return s.run(fillHooks(s, feeds, m.H));
}

/** Largest |a − b| over all entries, divided by the range of b (the reference). */
function relErr(got: Float32Array, want: Float64Array[]): number {
  let err = 0;
  let lo = Infinity;
  let hi = -Infinity;
  const N = want[0].length;
  for (const [t, row] of want.entries()) {
    for (const [i, v] of row.entries()) {
      err = Math.max(err, Math.abs(got[t * N + i] - v));
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  return err / (hi - lo);
}

const TOL = 1e-4;
let worst = 0;
t.teardown(() =>
  console.log(`# llama: largest error relative to the range, over every comparison: ${worst.toExponential(2)}`),
);

function expectClose(t: Test, what: string, got: ort.Tensor, want: Float64Array[], offset = 0) {
  const N = want[0].length;
  const err = relErr((got.data as Float32Array).subarray(offset * N), want);
  worst = Math.max(worst, err);
  t.ok(err <= TOL, `${what}: ${err.toExponential(2)} of the range`);
}

const rng = new Rng(7);
/** The reference's greedy continuation of `ids`: each new token (the logits' argmax) and its logprob. */
function refGreedy(m: Ref, ids: number[], n: number, edits: Partial<Record<string, RefEdit>> = {}) {
  const seq = [...ids];
  const logprobs: number[] = [];
  for (let i = 0; i < n; i++) {
    const logits = forward(m, seq, edits).logits.at(-1)!;
    let best = 0;
    for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
    let z = 0;
    for (const v of logits) z += Math.exp(v - logits[best]);
    logprobs.push(-Math.log(z));
    seq.push(best);
  }
  return { ids: seq.slice(ids.length), logprobs };
}

const randomIds = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50257));
const randomVec = (H: number, scale: number) => Float64Array.from({ length: H }, () => scale * rng.normal());
const unit = (v: Float64Array) => {
  const n = Math.sqrt(v.reduce((a, b) => a + b * b, 0));
  return v.map((x) => x / n);
};

const LLAMA3 = {
  rope_type: 'llama3',
  factor: 8,
  low_freq_factor: 1,
  high_freq_factor: 4,
  original_max_position_embeddings: 64,
};
const VARIANTS: [string, TinyLlamaOptions][] = [
  ['llama, 4 kv heads of 4 (no grouping), untied, no scaling', { heads: 4, kvHeads: 4, seed: 1 }],
  [
    'llama, 2 kv heads of 4, attention_bias, tied, linear scaling',
    { heads: 4, kvHeads: 2, seed: 2, bias: true, tied: true, ropeScaling: { type: 'linear', factor: 4 } },
  ],
  [
    'qwen2, 1 kv head of 4 (q/k/v bias), untied, llama3 scaling',
    { heads: 4, kvHeads: 1, seed: 3, modelType: 'qwen2', ropeScaling: LLAMA3 },
  ],
  [
    'mistral, 2 kv heads of 8, tied, llama3 scaling',
    { heads: 8, kvHeads: 2, seed: 4, modelType: 'mistral', tied: true, ropeScaling: LLAMA3 },
  ],
];

for (const [i, [name, opts]] of VARIANTS.entries()) {
  t.test(name, async (t) => {
    const dir = join(root, `v${i}`);
    writeTinyLlamaCheckpoint(dir, { layers: 2, embd: 64, ctx: 64, ...opts });
    const m = loadRef(dir);
    const { file, checkpoint } = buildGraph(dir);
    t.equal(checkpoint.family, LLAMA);
    t.equal(checkpoint.tiedLmHead, opts.tied ?? false, 'tied exactly when the file has no lm_head');
    const s = await ort.InferenceSession.create(file);
    const ids = randomIds(12); // positions up to 11: RoPE's slow and fast frequencies both turn

    const plain = forward(m, ids);
    let out = await runContract(s, m, ids);
    expectClose(t, 'logits', out.logits, plain.logits);
    for (const [point, want] of plain.hooks)
      expectClose(t, point, out[point.startsWith('resid_pre') ? `resid.${point.split('.')[1]}` : point], want);

    // steering at resid_pre 1 and mlp_out 0, an ablation at ln2 1
    const edits: Record<string, RefEdit> = {
      'resid_pre.1': { steer: randomVec(m.H, 2) },
      'mlp_out.0': { steer: randomVec(m.H, 1) },
      'ln2.1': (() => {
        const u = unit(randomVec(m.H, 1));
        return { u, z: u };
      })(),
    };
    const steered = forward(m, ids, edits);
    out = await runContract(s, m, ids, 0, undefined, edits);
    expectClose(t, 'steered logits', out.logits, steered.logits);
    for (const [point, want] of steered.hooks)
      expectClose(
        t,
        `steered ${point}`,
        out[point.startsWith('resid_pre') ? `resid.${point.split('.')[1]}` : point],
        want,
      );
    t.ok(relErr(out.logits.data as Float32Array, plain.logits) > 1e-2, 'the steering changes the logits');

    // incremental decoding: a prompt of 8, then one token at a time through present → past
    let cache = await runContract(s, m, ids.slice(0, 8));
    t.same(cache['present.0.key'].dims, [1, m.nkv, 8, m.hd], 'the cache holds the key/value heads');
    for (let p = 8; p < ids.length; p++) {
      cache = await runContract(s, m, [ids[p]], p, cache);
      expectClose(t, `decoded token ${p}`, cache.logits, [plain.logits[p]]);
    }
    t.same(cache['present.1.value'].dims, [1, m.nkv, ids.length, m.hd]);
  });
}

t.test('the serving graph: a prefill and a decode step over a kvHeads-wide cache', async (t) => {
  const dir = join(root, 'serve');
  writeTinyLlamaCheckpoint(dir, { heads: 4, kvHeads: 2, embd: 32, ctx: 32, seed: 9, bias: true });
  const m = loadRef(dir);
  const { file } = buildGraph(dir, { serving: { groups: 1 }, fileName: 'serve.onnx' });
  const s = await ort.InferenceSession.create(file);
  const ids = randomIds(7);
  const want = forward(m, ids).logits;
  const run = async (tokens: number[], from: number, past: (l: number, kv: string) => ort.Tensor) => {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(tokens),
      position_ids: i64(tokens.map((_, i) => from + i)),
      new_len: new ort.Tensor('int64', BigInt64Array.of(BigInt(tokens.length)), [1]),
      past_len: new ort.Tensor('int64', BigInt64Array.of(BigInt(from)), [1]),
      group_rows: new ort.Tensor('int64', BigInt64Array.of(1n), [1]),
      logits_all: new ort.Tensor('bool', Uint8Array.of(1), []),
    };
    for (let l = 0; l < m.L; l++) for (const kv of ['key', 'value']) feeds[`past.${l}.0.${kv}`] = past(l, kv);
    return s.run(fillHooks(s, feeds, m.H));
  };
  const first = await run(ids.slice(0, 6), 0, () => f32([], [1, m.nkv, 0, m.hd]));
  t.same(first['new.0.key'].dims, [1, m.nkv, 6, m.hd], 'new keys have the key/value heads');
  expectClose(t, 'prefill logits', first.logits, want.slice(0, 6));
  // the cache with two unused slots at the end, which the step must not attend
  const withSlots = (x: ort.Tensor) => {
    const d = x.data as Float32Array;
    const out = new Float32Array(m.nkv * 8 * m.hd);
    for (let h = 0; h < m.nkv; h++) out.set(d.subarray(h * 6 * m.hd, (h + 1) * 6 * m.hd), h * 8 * m.hd);
    return new ort.Tensor('float32', out, [1, m.nkv, 8, m.hd]);
  };
  const step = await run([ids[6]], 6, (l, kv) => withSlots(first[`new.${l}.${kv}`]));
  expectClose(t, 'decode step logits', step.last_logits, [want[6]]);
});

t.test('the engine end to end: greedy tokens and logprobs equal the reference, steered and not', async (t) => {
  const dir = join(root, 'engine');
  writeTinyLlamaCheckpoint(dir, { layers: 2, embd: 32, heads: 4, kvHeads: 2, ctx: 64, seed: 11, ropeScaling: LLAMA3 });
  const m = loadRef(dir);
  const engine = await startEngine({ model: dir, tokenBudget: 16 });
  t.teardown(() => engine.close());
  const prompt = randomIds(20); // two prefill chunks of 16, then decode steps
  const direction = randomVec(m.H, 1);
  const tokens: number[][] = [];
  for (const [what, edits] of [
    ['unsteered', {}],
    ['steered at resid_pre 1', { 'resid_pre.1': { steer: direction.map((v) => 3 * v) } }],
  ] as const) {
    const { ids: want, logprobs } = refGreedy(m, prompt, 6, edits);
    const interventions =
      what === 'unsteered' ? [] : [{ layer: 1, coeff: 3, values: Float32Array.from(direction), rows: 1 }];
    const got = await collect(
      engine.generate({ prompt, max_new_tokens: 6, temperature: 0, stop_at_eos: false, interventions }),
    );
    t.same(got.ids, want, `${what}: greedy tokens`);
    tokens.push(got.ids);
    const err = Math.max(...got.logprobs.map((x, i) => Math.abs(x - logprobs[i])));
    t.ok(err < 1e-4, `${what}: logprobs within 1e-4 (${err.toExponential(2)})`);
  }
  t.notSame(tokens[1], tokens[0], 'the steering changes the tokens');
});

t.test('the engine with float16, int8 and int4 weights: the linear maps ([out, in]) from their copies', async (t) => {
  const dir = join(root, 'engine');
  const m = loadRef(dir);
  const prompt = randomIds(12);
  const {
    ids: [best],
    logprobs: [logprob],
  } = refGreedy(m, prompt, 1);
  const errors: Record<string, number> = {};
  for (const dtype of ['float32', 'float16', 'int8', 'int4'] as const) {
    const engine = await startEngine({ model: dir, dtype, provider: 'cpu' });
    try {
      t.equal(engine.info.dtype, dtype);
      const got = await collect(engine.generate({ prompt, max_new_tokens: 1, temperature: 0, stop_at_eos: false }));
      if (dtype !== 'int4') t.same(got.ids, [best], `${dtype}: the reference's most likely token`);
      // the logprob of the reference's token: what the copy's layout gets wrong shows as a large error
      const lp = await collect(
        engine.generate({
          prompt: [...prompt, best],
          max_new_tokens: 1,
          temperature: 0,
          stop_at_eos: false,
          prompt_logprobs: 1,
        }),
      );
      errors[dtype] = Math.abs(lp.done.prompt_logprobs!.at(-1)!.logprob! - logprob);
    } finally {
      await engine.close();
    }
  }
  t.comment(`|Δ logprob| of the most likely token: ${JSON.stringify(errors)}`);
  t.ok(errors.float16 < 2e-2, `float16: logprob within 2e-2 (${errors.float16.toExponential(2)})`);
  // measured: float32 3.7e-7, float16 1.3e-4, int8 6.7e-2, int4 0.29 (products of int8-rounded
  // inputs, on random weights: test/quant.test.ts states the accuracy)
  t.ok(errors.int8 < 0.2, `int8: logprob within 0.2 (${errors.int8.toExponential(2)})`);
  t.ok(errors.int4 < 1, `int4: logprob within 1 (${errors.int4.toExponential(2)})`);
  for (const dtype of ['float16', 'int8', 'int4'])
    t.ok(
      errors[dtype] > 10 * errors.float32,
      `and the ${dtype} graph is the one that ran (float32: ${errors.float32.toExponential(2)})`,
    );
});

t.test(
  'bfloat16 and float16 checkpoints, one file or shards: served as the reference computes the stored values',
  async (t) => {
    const opts = { layers: 2, embd: 32, heads: 4, kvHeads: 2, ctx: 64, seed: 11 } as const;
    const f32 = loadRef(join(root, 'engine')); // the same draw in float32
    for (const [name, storage] of [
      ['bfloat16, 3 shards', { dtype: 'bfloat16', shards: 3 }],
      ['float16, one file', { dtype: 'float16', shards: 1 }],
      ['float32, 2 shards', { dtype: 'float32', shards: 2 }],
    ] as const) {
      const dir = join(root, `stored-${storage.dtype}-${storage.shards}`);
      writeTinyLlamaCheckpoint(dir, { ...opts, ...storage });
      const m = loadRef(dir);
      const rounded = [...m.w].some(([k, v]) => v.some((x, i) => x !== f32.w.get(k)![i]));
      t.equal(rounded, storage.dtype !== 'float32', `${name}: the stored values are ${storage.dtype}'s`);
      const prompt = randomIds(10);
      const { ids: want, logprobs } = refGreedy(m, prompt, 4);
      const engine = await startEngine({ model: dir, provider: 'cpu' });
      try {
        const got = await collect(engine.generate({ prompt, max_new_tokens: 4, temperature: 0, stop_at_eos: false }));
        t.same(got.ids, want, `${name}: greedy tokens`);
        const err = Math.max(...got.logprobs.map((x, i) => Math.abs(x - logprobs[i])));
        t.ok(err < 1e-4, `${name}: logprobs within 1e-4 (${err.toExponential(2)})`);
      } finally {
        await engine.close();
      }
      const ck = openCheckpoint(dir);
      t.equal(ck.weightsFile, join(dir, 'model.f32.safetensors'), `${name}: served from the float32 copy`);
      t.notOk(ensureFloat32Weights(ck), `${name}: made once`);
    }
    // weights rewritten in place (same layout): the copy is made again
    const dir = join(root, 'stored-bfloat16-3');
    t.ok(ensureHalfWeights(openCheckpoint(dir)), 'the float16 copy, made from the float32 one');
    t.notOk(ensureHalfWeights(openCheckpoint(dir)), 'once');
    writeTinyLlamaCheckpoint(dir, { ...opts, seed: 12, dtype: 'bfloat16', shards: 3 });
    t.ok(ensureFloat32Weights(openCheckpoint(dir)), 'a rewritten shard: the copy is made again');
    t.ok(ensureHalfWeights(openCheckpoint(dir)), 'and the float16 copy after it');
    // a shard the index names but the folder lacks, and a tensor not where the index says
    rmSync(join(dir, 'model-00002-of-00003.safetensors'));
    t.throws(
      () => openCheckpoint(dir),
      /model-00002-of-00003\.safetensors: missing \(model\.safetensors\.index\.json names it/,
    );
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    index.weight_map['model.norm.weight'] = '../elsewhere.safetensors';
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    t.throws(() => openCheckpoint(dir), /weight_map\["model\.norm\.weight"\] is "\.\.\/elsewhere\.safetensors"/);
  },
);

t.test('through the API: what /v1/model says, the end-of-turn tokens, diagnostics without LayerNorm', async (t) => {
  const dir = join(root, 'api');
  writeTinyLlamaCheckpoint(dir, { layers: 2, embd: 32, heads: 4, kvHeads: 2, ctx: 64, seed: 5 });
  const m = loadRef(dir);
  const text = ' the quick brown fox';
  const ids = new Gpt2Tokenizer(
    new Map(Object.entries(JSON.parse(readFileSync(join(dir, 'vocab.json'), 'utf8')))),
    readFileSync(join(dir, 'merges.txt'), 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#version'))
      .map((l) => l.split(' ') as [string, string]),
    new Map(),
  ).encode(text);
  const [best] = refGreedy(m, ids, 1).ids;
  const body = { prompt: text, max_new_tokens: 4, temperature: 0 };

  let plainFingerprint = '';
  let plainReceipt: unknown;
  const plain = await harness(dir);
  try {
    const info = (await plain.app.inject('/v1/model')).json();
    t.match(info, { architecture: 'llama', model_type: 'llama', n_head: 4, n_kv_head: 2 }, '/v1/model: the family');
    t.same(info.tokenizer, { bos_token_id: 50256, eos_token_ids: [50256], add_bos: false }, '/v1/model: the tokenizer');
    const g = (await post(plain.app, '/v1/generate', body)).json();
    t.equal(g.tokens[0].id, best, 'the reference greedy first token');
    t.equal(g.finish_reason, 'length', 'which ends nothing');
    t.match(g.receipt.model, { architecture: 'llama', model_type: 'llama' }, 'the receipt names the architecture');
    plainFingerprint = g.receipt.model.fingerprint;
    plainReceipt = g.receipt;
    // RMSNorm subtracts no mean: a constant vector is not "erased", and nothing warns
    const made = await post(plain.app, '/v1/vectors', { name: 'constant', values: new Array(32).fill(0.5) });
    t.equal(made.statusCode, 201);
    t.notOk('warnings' in made.json(), 'no LayerNorm warning');
    const d = (await plain.app.inject('/v1/vectors/constant/diagnostics')).json();
    t.equal(d.ln_erased_fraction, null, 'ln_erased_fraction: null under RMSNorm');
    t.equal(d.logit_lens.top.length, 10, 'the logit lens through the final RMSNorm');
  } finally {
    await plain.close();
  }
  // an instruct model's end of turn, in generation_config.json: that token ends the generation
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [50256, best] }));
  const turn = await harness(dir);
  try {
    t.same((await turn.app.inject('/v1/model')).json().tokenizer.eos_token_ids, [50256, best]);
    const g = (await post(turn.app, '/v1/generate', body)).json();
    t.equal(g.finish_reason, 'eos', "generation_config.json's end of turn ends it");
    t.not(g.receipt.model.fingerprint, plainFingerprint, 'and the fingerprint says the model stops elsewhere');
    const old = await post(turn.app, '/v1/replay', { receipt: plainReceipt });
    t.equal(old.statusCode, 422, "a receipt of the model without it is another model's");
  } finally {
    await turn.close();
  }
});

t.test(
  'every instrument on a Llama checkpoint with a SentencePiece tokenizer (BOS added), against the reference',
  async (t) => {
    const dir = join(root, 'sp');
    writeTinyLlamaCheckpoint(dir, {
      layers: 2,
      embd: 32,
      heads: 4,
      kvHeads: 1,
      ctx: 64,
      seed: 21,
      tokenizer: 'sentencepiece',
    });
    const m = loadRef(dir);
    const text = 'Steering a model, one vector at a time.';
    // tokenized by the Rust library (not steerd), with its special tokens: BOS first
    const rust = await RustTokenizer.fromFile(join(dir, 'tokenizer.json'));
    const ids = (await rust.encode(text, undefined, { addSpecialTokens: true })).getIds();
    const bos = (await rust.encode('', undefined, { addSpecialTokens: true })).getIds();
    t.equal(bos.length, 1, 'the tokenizer adds one BOS');
    t.equal(ids[0], bos[0]);
    const h = await harness(dir);
    t.teardown(() => h.close());
    const { app } = h;

    // activations: the text as Hugging Face tokenizes it (BOS by default), each hook point as the reference's
    const acts = (await post(app, '/v1/activations', { prompt: text, layers: [1], site: 'ln2' })).json();
    t.same(
      acts.tokens.map((x: { id: number }) => x.id),
      ids,
      'BOS by default, then the tokens the Rust library makes',
    );
    const want = forward(m, ids).hooks.get('ln2.1')!;
    const err = Math.max(
      ...want.flatMap((row, i) => [...row].map((v, j) => Math.abs(v - acts.activations['1'][i][j]))),
    );
    t.ok(err < 1e-4, `ln2 of block 1 within 1e-4 of the reference (${err.toExponential(2)})`);
    const noBos = (await post(app, '/v1/activations', { prompt: text, layers: [0], prepend_bos: false })).json();
    t.same(
      noBos.tokens.map((x: { id: number }) => x.id),
      ids.slice(1),
      'prepend_bos: false leaves it out',
    );

    // a generation steered at ln1 of block 0 with an inline vector, greedy, with telemetry and control arms
    const v = Array.from(Float32Array.from(randomVec(32, 2))); // as the API carries it
    const greedy = (edits: Partial<Record<string, RefEdit>>) => refGreedy(m, ids, 5, edits).ids;
    const body = {
      prompt: text,
      max_new_tokens: 5,
      temperature: 0,
      telemetry: true,
      compare: ['baseline', 'negated'],
      interventions: [{ vector: { values: v }, layer: 0, site: 'ln1', coeff: 3 }],
    };
    const g = await post(app, '/v1/generate', body);
    t.equal(g.statusCode, 200, g.body);
    const r = g.json();
    const tokens = (x: { tokens: { id: number }[] }) => x.tokens.map((y) => y.id);
    t.same(tokens(r), greedy({ 'ln1.0': { steer: Float64Array.from(v, (x) => 3 * x) } }), 'steered: the reference');
    t.same(tokens(r.baseline), greedy({}), 'the baseline arm: the unsteered reference');
    t.same(
      tokens(r.controls.negated),
      greedy({ 'ln1.0': { steer: Float64Array.from(v, (x) => -3 * x) } }),
      'the negated arm: coeff × −1',
    );
    t.ok(r.telemetry.mean_kl > 0, 'telemetry: the steering moved the distribution');

    // a sweep's cells equal single runs; its receipt replays
    const sweep = (
      await post(app, '/v1/sweep', {
        prompt: text,
        vector: { values: v },
        layers: [0, 1],
        coeffs: [0, 3],
        max_new_tokens: 4,
        temperature: 0,
      })
    ).json();
    t.equal(sweep.cells.length, 4);
    const cell = sweep.cells.find((c: { layer: number; coeff: number }) => c.layer === 1 && c.coeff === 3);
    t.same(
      tokens(cell),
      greedy({ 'resid_pre.1': { steer: Float64Array.from(v, (x) => 3 * x) } }).slice(0, 4),
      'a sweep cell: the reference steered at resid_pre 1',
    );
    const replay = (await post(app, '/v1/replay', { receipt: sweep.receipt })).json();
    t.equal(replay.identical, true, 'the sweep replays');

    // /v1/completions with echo: the prompt's tokens (BOS first) and the choice's, each offset
    // indexing the returned text
    const c = (
      await post(app, '/v1/completions', { prompt: text, echo: true, logprobs: 1, max_tokens: 2, temperature: 0 })
    ).json();
    const lp = c.choices[0].logprobs;
    t.equal(lp.tokens.length, ids.length + 2, 'every prompt token, BOS included, then the two generated');
    const pieces = lp.text_offset.map((o: number, i: number) => c.choices[0].text.slice(o, lp.text_offset[i + 1]));
    t.same(pieces, lp.tokens, 'each token is the text at its offset');
    // ActAdd: both prompts after BOS, the shorter padded with the space token (`▁`), the difference per position
    const made = await post(app, '/v1/vectors', {
      name: 'actadd',
      recipe: { kind: 'actadd', layer: 1, positive: 'Love', negative: 'Hate it all' },
    });
    t.equal(made.statusCode, 201, made.body);
    const space = await rust.tokenToId('\u2581');
    const enc = async (x: string) => (await rust.encode(x, undefined, { addSpecialTokens: false })).getIds();
    const [pos, neg] = [
      [bos[0], ...(await enc('Love'))],
      [bos[0], ...(await enc('Hate it all'))],
    ];
    while (pos.length < neg.length) pos.push(space!);
    while (neg.length < pos.length) neg.push(space!);
    const [a, b] = [forward(m, pos).hooks.get('resid_pre.1')!, forward(m, neg).hooks.get('resid_pre.1')!];
    const got = (await app.inject('/v1/vectors/actadd?values=true')).json();
    t.same(got.shape, [pos.length, 32], 'one row per position of the padded prompts');
    const aerr = Math.max(...a.flatMap((row, i) => [...row].map((x, j) => Math.abs(x - b[i][j] - got.values[i][j]))));
    t.ok(aerr < 1e-4, `the reference's per-position difference, within 1e-4 (${aerr.toExponential(2)})`);
    t.match(sweep.receipt.model, { architecture: 'llama', model_type: 'llama' });
  },
);

t.test(
  'chat on tokenizers that add a BOS: the template writes the one BOS, its markers are special tokens',
  async (t) => {
    for (const [kind, format, expected] of [
      [
        'llama3',
        'llama3',
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
      ],
      ['sentencepiece', 'llama2', '<s>[INST] Hi there [/INST]'],
    ] as const) {
      const dir = join(root, `chat-${kind}`);
      writeTinyLlamaCheckpoint(dir, { layers: 1, embd: 32, heads: 4, kvHeads: 2, ctx: 64, seed: 4, tokenizer: kind });
      writeChatTemplate(dir, format);
      const rust = await RustTokenizer.fromFile(join(dir, 'tokenizer.json'));
      // the format written out by hand, tokenized by the Rust library with no special tokens added
      const want = (await rust.encode(expected, undefined, { addSpecialTokens: false })).getIds();
      const bos = (await rust.encode('', undefined, { addSpecialTokens: true })).getIds()[0];
      const h = await harness(dir);
      try {
        const r = await post(h.app, '/v1/chat/completions', {
          messages: [{ role: 'user', content: 'Hi there' }],
          max_tokens: 2,
          temperature: 0,
        });
        t.equal(r.statusCode, 200, r.body);
        const prompt: number[] = r.json().receipt.runs[0].prompt;
        t.same(prompt, want, `${kind}: the rendered conversation's ids, as the Rust library makes them`);
        t.equal(prompt.filter((id) => id === bos).length, 1, `${kind}: one BOS`);
        t.equal(prompt[0], bos, `${kind}: first`);
      } finally {
        await h.close();
      }
    }
    const eot = await (await RustTokenizer.fromFile(join(root, 'chat-llama3', 'tokenizer.json'))).tokenToId(
      '<|eot_id|>',
    );
    t.ok(eot !== null && eot !== undefined, 'the end of turn is one special token');
  },
);

// ---------------------------------------------------------------------------------------------
// The registry, and what the family refuses.

const base = join(root, 'base');
writeTinyLlamaCheckpoint(base, { layers: 1, embd: 32, heads: 4, kvHeads: 2, ctx: 16 });
const config = () => JSON.parse(readFileSync(join(base, 'config.json'), 'utf8'));

t.test('the registry picks the Llama family for llama, qwen2 and mistral', async (t) => {
  for (const type of ['llama', 'qwen2', 'mistral'])
    t.equal(familyOf({ ...config(), model_type: type }, 'config.json'), LLAMA, type);
  const ck = openCheckpoint(base);
  t.equal(ck.family, LLAMA);
  t.same(ck.shape, {
    layers: 1,
    embd: 32,
    heads: 4,
    kvHeads: 2,
    headDim: 8,
    vocab: 50257,
    ctx: 16,
    eos: 50256,
    eosIds: [50256],
  });
  t.type(loadTokenizer(base), Gpt2Tokenizer, 'GPT-2 vocabulary files: the byte-level BPE reader');
  t.same(LLAMA.sites, SITES, 'every hook site');
  t.equal(
    LLAMA.parseConfig({ ...config(), eos_token_id: [7, 8] }, 'c').eos_token_id,
    7,
    'the first of several end tokens',
  );
  t.equal(
    LLAMA.parseConfig({ ...config(), num_key_value_heads: undefined }, 'c').num_key_value_heads,
    4,
    'kv heads default to the heads',
  );
  t.equal(
    LLAMA.parseConfig({ ...config(), model_type: 'qwen2', sliding_window: 4, use_sliding_window: false }, 'c').qkv_bias,
    true,
    'Qwen2: q/k/v biases; a window it does not use is no obstacle',
  );
});

function refused(t: Test, what: string, raw: Record<string, unknown>, field: string, message: RegExp) {
  try {
    LLAMA.parseConfig(raw, 'config.json');
    t.fail(`${what}: expected an error`);
  } catch (e) {
    t.type(e, CheckpointError, `${what}: a CheckpointError`);
    t.equal((e as CheckpointError).field, field, `${what}: names ${field}`);
    t.equal((e as CheckpointError).status, 422);
    t.match((e as Error).message, message, what);
  }
}

t.test('what the family cannot compute is refused, naming the field', async (t) => {
  const c = config();
  refused(
    t,
    'yarn',
    { ...c, rope_scaling: { rope_type: 'yarn', factor: 4 } },
    'rope_scaling',
    /"yarn" is not supported/,
  );
  refused(
    t,
    'dynamic (old spelling)',
    { ...c, rope_scaling: { type: 'dynamic', factor: 2 } },
    'rope_scaling',
    /"dynamic"/,
  );
  refused(
    t,
    'llama3 without its factors',
    { ...c, rope_scaling: { rope_type: 'llama3', factor: 8 } },
    'rope_scaling',
    /low_freq_factor/,
  );
  refused(
    t,
    'Mixtral',
    { ...c, model_type: 'mistral', num_local_experts: 8 },
    'num_local_experts',
    /mixture-of-experts/,
  );
  refused(t, 'MoE', { ...c, num_experts: 60 }, 'num_experts', /mixture-of-experts/);
  refused(t, 'Mistral window', { ...c, model_type: 'mistral', sliding_window: 8 }, 'sliding_window', /sliding-window/);
  refused(
    t,
    'Qwen2 window',
    { ...c, model_type: 'qwen2', use_sliding_window: true, sliding_window: 8 },
    'sliding_window',
    /sliding-window/,
  );
  refused(t, 'kv heads', { ...c, num_key_value_heads: 3 }, 'num_key_value_heads', /not a multiple/);
  refused(t, 'activation', { ...c, hidden_act: 'gelu' }, 'hidden_act', /"gelu" is not supported/);
  refused(t, 'MLP bias', { ...c, mlp_bias: true }, 'mlp_bias', /mlp_bias/);
  t.equal(
    LLAMA.parseConfig({ ...c, model_type: 'mistral', sliding_window: 16 }, 'c').max_position_embeddings,
    16,
    'a window as long as the context is plain attention',
  );
});

t.test('a tokenizer.json steerd cannot tokenize as Hugging Face does is refused, naming the file', async (t) => {
  const dir = join(root, 'tok');
  writeTinyLlamaCheckpoint(dir, { layers: 1, embd: 16, heads: 2, ctx: 8 });
  t.type(loadTokenizer(dir), Gpt2Tokenizer, "GPT-2's vocab.json + merges.txt are read");
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'WordPiece', vocab: {} } }));
  t.throws(() => loadTokenizer(dir), { message: /tokenizer\.json: the tokenizer model is "WordPiece", not BPE/ });
  rmSync(join(dir, 'tokenizer.json'));
  rmSync(join(dir, 'vocab.json'));
  writeFileSync(join(dir, 'tokenizer.model'), '');
  t.throws(() => loadTokenizer(dir), { message: /tokenizer\.model: is a SentencePiece model/ });
});
