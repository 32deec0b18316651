/**
 * Engine throughput of the Llama family beside GPT-2's, in one run, on generated checkpoints of
 * published shapes (float32 weights, GPT-2's vocabulary of 50257 tokens for both):
 *
 * - `--shape small` (default): SmolLM2-135M's block (30 layers, 576 wide, 9 query and 3 key/value
 *   heads, MLP 1536) beside GPT-2 small (12 layers, 768, 12 heads);
 * - `--shape 1b`: TinyLlama-1.1B's block (22 layers, 2048 wide, 32 query and 4 key/value heads,
 *   MLP 5632; a 4.4 GB checkpoint, written once), beside GPT-2 small as well.
 *
 * Prompts of 32 tokens, 64 new tokens, at 1, 8 and 32 concurrent requests, unsteered; each
 * measurement repeated (BENCH_REPS, default 2) and the best kept: noise on a shared machine only
 * slows runs down.
 *
 *   npm run bench -- --arch llama [--shape small|1b --concurrency 1,8,32 --prompt 32 --new 64 --out FILE]
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { writeTinyLlamaCheckpoint } from '../src/model/llama/tiny.ts';
import { Rng } from '../src/util/rng.ts';
import { measure } from './measure.ts';

const LLAMA_SHAPES = {
  small: { layers: 30, embd: 576, heads: 9, kvHeads: 3, inner: 1536, ctx: 2048 },
  '1b': { layers: 22, embd: 2048, heads: 32, kvHeads: 4, inner: 5632, ctx: 2048 },
} as const;
const GPT2_SMALL = { layers: 12, embd: 768, heads: 12, ctx: 1024 };

const { values: o } = parseArgs({
  options: {
    arch: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    concurrency: { type: 'string', default: '1,8,32' },
    prompt: { type: 'string', default: '32' },
    new: { type: 'string', default: '64' },
    threads: { type: 'string', default: '0' },
    out: { type: 'string' },
  },
  allowPositionals: false,
  strict: false,
});
if (o.arch !== 'llama') throw new Error(`--arch llama (got ${o.arch})`);
const shapeName = String(o.shape) as keyof typeof LLAMA_SHAPES;
const shape = LLAMA_SHAPES[shapeName];
if (!shape) throw new Error(`--shape small or 1b (got ${o.shape})`);
const levels = String(o.concurrency).split(',').map(Number);
const promptLen = Number(o.prompt);
const newTokens = Number(o.new);
const reps = +(process.env.BENCH_REPS ?? 2);
const out = String(o.out ?? `bench/results/engine-llama-${shapeName}.json`);

const models = [
  { arch: 'llama', dir: join(tmpdir(), `steerd-bench-llama-${shapeName}`), shape },
  { arch: 'gpt2', dir: join(tmpdir(), 'steerd-bench-gpt2-small'), shape: GPT2_SMALL },
];
for (const m of models) {
  if (existsSync(join(m.dir, 'config.json'))) continue;
  console.error(`writing a ${m.arch} checkpoint of shape ${JSON.stringify(m.shape)} to ${m.dir} ...`);
  if (m.arch === 'llama') writeTinyLlamaCheckpoint(m.dir, shape);
  else writeTinyCheckpoint(m.dir, GPT2_SMALL);
}

const rng = new Rng(1);
const requests = (n: number) =>
  Array.from({ length: n }, () => ({
    prompt: Array.from({ length: promptLen }, () => Math.floor(rng.next() * 50000)),
    max_new_tokens: newTokens,
    temperature: 0,
    stop_at_eos: false,
  }));
const results: Record<string, Record<string, number>> = {};
for (const m of models) {
  const engine = await Engine.start({ model: m.dir, threads: Number(o.threads), batchCapacity: Math.max(...levels) });
  try {
    await measure(engine, requests(2)); // warm-up
    for (const c of levels) {
      let best: Awaited<ReturnType<typeof measure>> | undefined;
      for (let i = 0; i < reps; i++) {
        const r = await measure(engine, requests(c));
        if (!best || r.tokens_per_s > best.tokens_per_s) best = r;
      }
      results[`${m.arch} c${c}`] = {
        tokens_per_s: +best!.tokens_per_s.toFixed(1),
        decode_tokens_per_s: +best!.decode_tokens_per_s.toFixed(1),
        ttft_p50_ms: +best!.ttft_p50_ms.toFixed(0),
      };
      console.error(`${m.arch} concurrency ${c}: ${best!.tokens_per_s.toFixed(1)} tokens/s`);
    }
  } finally {
    await engine.close();
  }
}
const ratios = Object.fromEntries(
  levels.map((c) => [
    `c${c}`,
    { llama_over_gpt2: +(results[`llama c${c}`].tokens_per_s / results[`gpt2 c${c}`].tokens_per_s).toFixed(2) },
  ]),
);
console.table(results);
console.table(ratios);
const load = loadavg().map((x) => +x.toFixed(2));
console.error(`load average at the end: ${load.join(' ')}`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify({ shape: shapeName, models, prompt_tokens: promptLen, new_tokens: newTokens, repetitions: reps, results, ratios, loadavg_at_end: load }, null, 2)}\n`,
);
console.log(`wrote ${out}`);
