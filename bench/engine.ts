/**
 * Engine throughput, on a generated checkpoint of a GPT-2 shape, ratios measured in one run:
 *
 * - `--shape small` (default; 12 layers, 768, 12 heads): prompts of 32 tokens, 64 new tokens, at
 *   1, 8 and 32 concurrent requests, without steering and with 4 interventions per request; time to
 *   first token p50/p99; a mixed-length batch (31 short requests and one with a ~900-token context)
 *   against a uniform one (32 short), compared on their steady decoding (all rows running); and this
 *   machine's ceiling: ONNX Runtime MatMul throughput at the model's own weight shapes (every
 *   projection of every block plus the vocabulary head, for a batch of rows), turned into tokens/s.
 * - `--shape xl` (48 layers, 1600, 25 heads; a 6.2 GB checkpoint, written once): 1 and 8
 *   concurrent, prompt 32, 16 new tokens, the ceiling at 8 rows, and the process's peak RSS against
 *   the weights and the KV budget.
 *
 * - `--peer llamacpp`: a llama.cpp bench script (`bench.sh` in `--peer-dir`, or $LLAMACPP_PEER; it
 *   prints one JSON line with llama.cpp's tokens/s, libllama called directly) on the same checkpoint, levels, prompt, new tokens and threads, run
 *   before and after steerd's own measurements (the best of the two kept, as for the ceiling), and
 *   steerd's ratios to its libllama-direct line (`--peer-args` passes more options, e.g. `--q8`).
 *
 * - `--dtype int8|int4|float16`: the engine with those weights (dtypes.ts; default float32); beside
 *   the peer, int8 is compared with llama.cpp's Q8_0 line when `--peer-args --q8` asks for one.
 * - `--lean`: the engine with the lean serving graph (STEERD_LEAN_GRAPH); `--spinning`: its intra-op
 *   threads spin between operators (STEERD_THREAD_SPINNING), as llama.cpp's do.
 * - `--arch llama`: the Llama family beside GPT-2, bench/families.ts.
 *
 *   npm run bench [-- --shape small|xl --dir DIR --concurrency 1,8,32 --prompt 32 --new 64 --out FILE
 *                     --dtype int8 --lean --spinning --peer llamacpp --peer-dir DIR --peer-args "--kv f32"]
 */

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { parseDtype } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { intraOpThreads } from '../src/engine/runner.ts';
import type { GenerateRequest, Intervention } from '../src/engine/types.ts';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { GPT2 } from '../src/model/gpt2/family.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { DataType } from '../src/model/onnx-proto.ts';
import { encodeModel, GraphWriter } from '../src/model/onnx-writer.ts';
import { weights as graphWeights } from '../src/model/weights.ts';
import { ensureWeightsCopy, weightsCopy } from '../src/model/weights-copies.ts';
import { Rng } from '../src/util/rng.ts';
import { measure } from './measure.ts';

const SHAPES = {
  small: { layers: 12, embd: 768, heads: 12, ctx: 1024, concurrency: '1,8,32', new: '64' },
  xl: { layers: 48, embd: 1600, heads: 25, ctx: 1024, concurrency: '1,8', new: '16' },
} as const;
const { values: o } = parseArgs({
  options: {
    shape: { type: 'string', default: 'small' },
    dir: { type: 'string' },
    concurrency: { type: 'string' },
    prompt: { type: 'string', default: '32' },
    new: { type: 'string' },
    mixed: { type: 'string', default: '840', description: 'the long request of the mixed batch: prompt tokens' },
    threads: { type: 'string', default: '0' },
    out: { type: 'string' },
    peer: { type: 'string' },
    'peer-dir': { type: 'string', default: process.env.LLAMACPP_PEER },
    'peer-args': { type: 'string', default: '' },
    arch: { type: 'string', default: 'gpt2' },
    dtype: { type: 'string', default: 'float32' },
    lean: { type: 'boolean', default: false },
    spinning: { type: 'boolean', default: false },
  },
});
const dtype = parseDtype(o.dtype!, '--dtype');
/** Intra-op threads for steerd, its ceiling and the peer alike, as the runner takes them. */
const threads = intraOpThreads(+o.threads!);
if (o.arch !== 'gpt2') {
  // another family (bench/families.ts): its own shapes, beside GPT-2's in the same run
  await import('./families.ts');
  process.exit(0);
}
if (o.peer !== undefined && o.peer !== 'llamacpp') throw new Error(`--peer llamacpp (got ${o.peer})`);
const shapeName = o.shape as keyof typeof SHAPES;
const shape = SHAPES[shapeName];
if (!shape) throw new Error(`--shape small or xl (got ${o.shape})`);
const dir = o.dir ?? join(tmpdir(), `steerd-bench-gpt2-${shapeName}`);
const out =
  o.out ??
  `bench/results/engine${shapeName === 'small' ? '' : `-${shapeName}`}${dtype === 'float32' ? '' : `-${dtype}`}.json`;
const promptLen = +o.prompt!;
const newTokens = +(o.new ?? shape.new);
const levels = (o.concurrency ?? shape.concurrency).split(',').map(Number);

if (!existsSync(join(dir, 'model.safetensors'))) {
  console.error(`writing a GPT-2-${shapeName}-shaped checkpoint to ${dir} ...`);
  writeTinyCheckpoint(dir, { layers: shape.layers, embd: shape.embd, heads: shape.heads, ctx: shape.ctx });
}
const ck = openCheckpoint(dir, GPT2);
const { n_layer: L, n_embd: H, n_inner: I, vocab_size: V } = ck.config;

/** This process's resident memory, now and at its peak since the last reset (Linux). */
function rss(): { now: number; peak: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { now: kb('VmRSS'), peak: kb('VmHWM') };
}

/**
 * A graph of the model's matmuls only (same weights, in place, in the engine's dtype): the compute a
 * token cannot avoid.
 */
async function matmulCeiling(rows: number) {
  const g = new GraphWriter();
  ensureWeightsCopy(ck, dtype);
  const w = graphWeights(g, ck, weightsCopy(ck, dtype));
  g.input('x', DataType.FLOAT, [rows, H]);
  g.input('xi', DataType.FLOAT, [rows, I]);
  const outs: string[] = [];
  for (let l = 0; l < L; l++) {
    outs.push(w.matmul('x', `h.${l}.attn.c_attn.weight`, 'in_out'));
    outs.push(w.matmul('x', `h.${l}.attn.c_proj.weight`, 'in_out'));
    outs.push(w.matmul('x', `h.${l}.mlp.c_fc.weight`, 'in_out'));
    outs.push(w.matmul('xi', `h.${l}.mlp.c_proj.weight`, 'in_out'));
  }
  // the vocabulary head as the serving graph runs it (weights.ts)
  outs.push(w.unembedding('wte.weight')('x'));
  for (const name of outs) g.output(name, DataType.FLOAT);
  const file = join(dir, `bench-matmul-${rows}.onnx`);
  writeFileSync(file, encodeModel(g, 'matmuls', { opset: 21, irVersion: 10, producerVersion: 'bench' }));
  const s = await ort.InferenceSession.create(file, { intraOpNumThreads: threads, logSeverityLevel: 3 });
  const feeds = {
    x: new ort.Tensor('float32', new Float32Array(rows * H).fill(0.01), [rows, H]),
    xi: new ort.Tensor('float32', new Float32Array(rows * I).fill(0.01), [rows, I]),
  };
  const fetch = [outs[0]]; // ONNX Runtime computes every node whatever is fetched
  for (let i = 0; i < 2; i++) await s.run(feeds, fetch);
  const reps = 8;
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await s.run(feeds, fetch);
  const sec = (performance.now() - t0) / 1000 / reps;
  await s.release();
  const flopPerToken = 2 * (L * (H * 3 * H + H * H + H * I + I * H) + H * V);
  return { rows, gflops: (flopPerToken * rows) / sec / 1e9, tokens_per_s: rows / sec, flop_per_token: flopPerToken };
}

interface PeerRow {
  concurrency: number;
  tokens_per_s: number;
  decode_tokens_per_s: number;
}
/** The llama.cpp peer's bench on the same checkpoint and load: its libllama-direct rows (F32 weights, or each type asked). */
function peerRun(): { rows: Record<string, PeerRow[]>; line: Record<string, unknown> } {
  const args = ['--concurrency', levels.join(','), '--prompt', String(promptLen), '--new', String(newTokens)];
  args.push('--threads', String(threads), ...(shapeName === 'xl' ? ['--xl'] : []));
  args.push(...o['peer-args']!.split(/\s+/).filter(Boolean));
  console.error(`llama.cpp peer: bench.sh ${args.join(' ')} ...`);
  if (!o['peer-dir'])
    throw new Error('--peer llamacpp needs --peer-dir DIR (or LLAMACPP_PEER): the folder of its bench.sh');
  const stdout = execFileSync(join(resolve(o['peer-dir']), 'bench.sh'), args, {
    env: { ...process.env, DIR: dir },
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  const line = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
  const rows: Record<string, PeerRow[]> = {};
  for (const [k, v] of Object.entries(line)) if (k.startsWith('libllama_direct_')) rows[k.slice(16)] = v as PeerRow[];
  return { rows, line };
}

function requests(concurrency: number, steered: boolean, rng: Rng, prompts: number[] = []): GenerateRequest[] {
  return Array.from({ length: concurrency }, (_, i) => {
    const interventions: Intervention[] = steered
      ? [1, 4, 7, 10].map((layer) => ({
          layer,
          coeff: 2,
          rows: 1,
          values: Float32Array.from({ length: H }, () => 0.05 * rng.normal()),
        }))
      : [];
    return {
      prompt: Array.from({ length: prompts[i] ?? promptLen }, () => Math.floor(rng.next() * 50000)),
      max_new_tokens: newTokens,
      temperature: 0,
      stop_at_eos: false,
      interventions,
    };
  });
}

const load = async (engine: Engine, concurrency: number, steered: boolean, rng: Rng) => ({
  steered,
  ...(await measure(engine, requests(concurrency, steered, rng))),
});

/** Repeats a measurement and keeps the best (noise on a shared machine only slows runs down). */
async function best<T extends { tokens_per_s: number }>(
  f: () => Promise<T>,
  key: keyof T = 'tokens_per_s',
): Promise<T> {
  let b: T | undefined;
  for (let i = 0; i < reps; i++) {
    const r = await f();
    if (!b || (r[key] as number) > (b[key] as number)) b = r;
  }
  return b!;
}

// The machine is shared: every measurement is repeated and the best kept (noise only slows runs
// down). For the small shape the ceiling is measured before and after the load, so that both see
// the same machine; for XL after it (its session holds another copy of the weights), so that the
// peak RSS is the engine's.
const reps = +(process.env.BENCH_REPS ?? 2);
const cmax = Math.max(...levels);
const peerRuns = o.peer ? [peerRun()] : [];
const ceilings = shapeName === 'small' ? [await matmulCeiling(cmax)] : [];
const before = rss();
writeFileSync('/proc/self/clear_refs', '5'); // peak RSS from here
const engine = await Engine.start({
  model: dir,
  threads,
  batchCapacity: cmax,
  dtype,
  lean: o.lean,
  spinning: o.spinning,
});
const loaded = rss();
const rng = new Rng(1);
await load(engine, 2, false, rng); // warm-up
const rows: Awaited<ReturnType<typeof load>>[] = [];
for (const c of levels) {
  for (const steered of shapeName === 'small' ? [false, true] : [false]) {
    const r = await best(() => load(engine, c, steered, rng));
    rows.push(r);
    console.error(`concurrency ${c}${steered ? ' steered' : ''}: ${r.tokens_per_s.toFixed(1)} tokens/s`);
  }
}
let mixed: { uniform: Awaited<ReturnType<typeof measure>>; mixed: Awaited<ReturnType<typeof measure>> } | undefined;
if (shapeName === 'small') {
  // 31 short requests and one long one, against 32 short ones: steady decoding of both batches
  const prompts = [+o.mixed!];
  const uniform = await best(() => measure(engine, requests(32, false, rng)), 'decode_tokens_per_s');
  const withLong = await best(() => measure(engine, requests(32, false, rng, prompts)), 'decode_tokens_per_s');
  mixed = { uniform, mixed: withLong };
  console.error(
    `mixed: ${withLong.decode_tokens_per_s.toFixed(1)} vs uniform ${uniform.decode_tokens_per_s.toFixed(1)} tokens/s decoding`,
  );
}
const peak = rss().peak;
const kv = engine.info.kv_cache!;
await engine.close();
ceilings.push(await matmulCeiling(cmax));
const ceiling = ceilings.reduce((a, b) => (b.gflops > a.gflops ? b : a));
if (o.peer) peerRuns.push(peerRun());
/** The peer's best of its runs, per weight type and level (noise only slows runs down). */
const peer: Record<string, PeerRow[]> = {};
for (const run of peerRuns)
  for (const [type, list] of Object.entries(run.rows))
    for (const r of list) {
      peer[type] ??= [];
      const have = peer[type];
      const i = have.findIndex((x) => x.concurrency === r.concurrency);
      if (i < 0) have.push(r);
      else if (r.tokens_per_s > have[i].tokens_per_s) have[i] = r;
    }
const at = (c: number, s: boolean) => rows.find((r) => r.concurrency === c && r.steered === s)!;
const weights = statSync(join(dir, 'model.safetensors')).size;
const memory = {
  weights_bytes: weights,
  kv_cache_tokens: kv.tokens,
  kv_budget_bytes: kv.tokens * kv.bytes_per_token,
  rss_before_bytes: before.now,
  rss_loaded_bytes: loaded.now,
  peak_rss_bytes: peak,
  /** ONNX Runtime's copies of the weights beyond the file's size (prepacked MatMul weights). */
  prepack_over_weights: (loaded.now - before.now) / weights - 1,
  /** Peak RSS beyond what the issue allows: weights × (1 + prepack) + KV budget + 300 MB. */
  headroom_bytes: before.now + (loaded.now - before.now) + kv.tokens * kv.bytes_per_token + 300 * 2 ** 20 - peak,
};
const ratios: Record<string, number> = {
  [`c${cmax}_over_c1`]: at(cmax, false).tokens_per_s / at(1, false).tokens_per_s,
  [`c${cmax}_over_ceiling`]: at(cmax, false).tokens_per_s / ceiling.tokens_per_s,
  [`c${cmax}_decode_over_ceiling`]: at(cmax, false).decode_tokens_per_s / ceiling.tokens_per_s,
};
if (shapeName === 'small') {
  ratios[`steering_cost_c${cmax}`] = 1 - at(cmax, true).tokens_per_s / at(cmax, false).tokens_per_s;
  ratios.steering_cost_c1 = 1 - at(1, true).tokens_per_s / at(1, false).tokens_per_s;
  ratios.mixed_over_uniform = mixed!.mixed.decode_tokens_per_s / mixed!.uniform.decode_tokens_per_s;
}
const peerTable: Record<string, Record<string, number>> = {};
// the peer's weights beside steerd's: F32 for float32, Q8_0 for int8 (when asked), the rest as run
const comparable = (type: string) =>
  (({ float32: ['f32'], int8: ['q8_0'], float16: ['f16'] }) as Record<string, string[]>)[dtype]?.includes(type) ?? true;
for (const [type, list] of Object.entries(peer).filter(([type]) => comparable(type)))
  for (const p of list) {
    const r = at(p.concurrency, false);
    if (!r) continue;
    peerTable[`c${p.concurrency} vs llama.cpp ${type}`] = {
      steerd_tokens_per_s: +r.tokens_per_s.toFixed(1),
      llamacpp_tokens_per_s: p.tokens_per_s,
      ratio: +(r.tokens_per_s / p.tokens_per_s).toFixed(2),
      steerd_decode: +r.decode_tokens_per_s.toFixed(1),
      llamacpp_decode: p.decode_tokens_per_s,
      decode_ratio: +(r.decode_tokens_per_s / p.decode_tokens_per_s).toFixed(2),
    };
  }
const summary = {
  shape: shapeName,
  threads,
  dtype,
  lean: o.lean,
  spinning: o.spinning,
  loadavg_at_end: loadavg(),
  model: { layers: L, embd: H, heads: ck.config.n_head, params_m: ck.paramBytes / 4 / 1e6 },
  prompt_tokens: promptLen,
  new_tokens: newTokens,
  repetitions: reps,
  runs: rows,
  mixed,
  ceiling,
  ceiling_measurements_gflops: ceilings.map((c) => c.gflops),
  memory,
  ratios,
  ...(o.peer && { peer: { llamacpp: peer, runs: peerRuns.map((r) => r.line), versus: peerTable } }),
};
const round = (r: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'number' ? +v.toFixed(1) : v]));
console.table(rows.map(round));
if (mixed) console.table({ uniform: round(mixed.uniform), mixed: round(mixed.mixed) });
console.table({
  ceiling: { rows: ceiling.rows, gflops: +ceiling.gflops.toFixed(1), tokens_per_s: +ceiling.tokens_per_s.toFixed(1) },
});
const gb = (b: number) => +(b / 2 ** 30).toFixed(2);
console.table({
  memory: {
    weights_gb: gb(weights),
    kv_budget_gb: gb(memory.kv_budget_bytes),
    loaded_gb: gb(loaded.now),
    peak_rss_gb: gb(peak),
    prepack: +memory.prepack_over_weights.toFixed(2),
    headroom_gb: gb(memory.headroom_bytes),
  },
});
console.table(Object.fromEntries(Object.entries(ratios).map(([k, v]) => [k, { ratio: +v.toFixed(3) }])));
if (o.peer) console.table(peerTable);
console.error(
  `load average at the end: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`,
);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(summary, null, 2)}\n`);
console.log(`wrote ${out}`);
