/**
 * One command for a machine with an accelerator: which execution providers this onnxruntime-node
 * has and which start here, then the same workload on each of them side by side, in one run, on a
 * GPT-2 XL-shaped checkpoint (random weights, written once) or `--model DIR`. A target is a provider
 * through its default binding (docs/architecture.md §7), or `<provider>-host` through onnxruntime-node
 * and `<provider>-capi` through the C API: `cuda` (capi, the cache on the GPU), `cuda-host`
 * (onnxruntime-node, the cache fed from host memory every step), `webgpu`, `cpu`, `cpu-capi`:
 *
 * - tokens/s at 1, 8 and 32 concurrent requests (prompts of 32 tokens, 16 new tokens each, new
 *   requests started for `--seconds` per level), and each provider's ratio to `cpu`;
 * - the host bytes that cross into and out of the session per run, and the input bytes per decoded
 *   token at a short and a long context (the difference of 1 and 9 new tokens, so prefill is not
 *   counted): on the host path they grow with the context, on a device-resident path they must not.
 *
 * Prints a table and writes JSON. The CUDA provider needs onnxruntime-node's CUDA libraries
 * (`npm run install:cuda`, README GPU notes); WebGPU needs a Vulkan driver (on NVIDIA, the container
 * started with `NVIDIA_DRIVER_CAPABILITIES` including `graphics`).
 *
 * `--dtypes float32,float16` measures each provider with the float16 weights too (README, GPU notes).
 *
 * The device memory in use after each target's run is nvidia-smi's where it answers. The target
 * with the most tokens/s at the highest concurrency is the one the table recommends as the default.
 *
 * Every target also generates 24 greedy tokens from one fixed prompt: each is compared with the
 * first float32 target that ran (same tokens, largest logprob difference), and a float32 target
 * whose tokens differ makes the command exit 1. `--quick` runs `cuda,cuda-host` at 1 and 32
 * concurrent for 5 s each (what the options do not set).
 *
 *   npm run gpu-check [-- --model DIR --providers cuda,cuda-host,webgpu,cpu --dtypes float32 --concurrency 1,8,32 --seconds 20 --quick --out FILE]
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { parseDtype } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { defaultRuntime, type RuntimeName, runtimeNamed } from '../src/engine/runtime/bindings.ts';
import type { HostBytes } from '../src/engine/runtime/runtime.ts';
import type { Dtype } from '../src/model/dtypes.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { Rng } from '../src/util/rng.ts';

const { values: o } = parseArgs({
  options: {
    model: { type: 'string' },
    quick: { type: 'boolean', default: false },
    providers: { type: 'string' },
    dtypes: { type: 'string', default: 'float32' },
    concurrency: { type: 'string' },
    seconds: { type: 'string' },
    prompt: { type: 'string', default: '32' },
    new: { type: 'string', default: '16' },
    long: { type: 'string', default: '480', description: 'the long context of the bytes-per-token measure' },
    out: { type: 'string', default: 'bench/results/gpu-check.json' },
  },
});
const started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;
const log = (m: string) => console.error(`[${elapsed()}] ${m}`);

/** A command's first lines of output, or why it could not run. */
function probe(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 20_000, stdio: ['ignore', 'pipe', 'ignore'] })
      .trim()
      .split('\n')
      .slice(0, 12)
      .join('\n');
  } catch (e) {
    return `unavailable (${(e as Error).message.split('\n')[0]})`;
  }
}

const machine = {
  node: process.version,
  onnxruntime: ort.env.versions.common,
  backends: ort.listSupportedBackends().map((b) => b.name),
  nvidia_smi: probe('nvidia-smi', ['--query-gpu=name,memory.total,driver_version', '--format=csv,noheader']),
  vulkan_devices: probe('sh', ['-c', 'vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName"']),
};
console.log(machine);

const model = o.model ?? join(tmpdir(), 'steerd-gpu-check-xl');
if (!existsSync(join(model, 'model.safetensors'))) {
  log(`writing a GPT-2 XL-shaped checkpoint to ${model} ...`);
  writeTinyCheckpoint(model, { layers: 48, embd: 1600, heads: 25, ctx: 1024 });
}
// --quick: the CUDA comparison alone, shorter (a first run on a GPU machine, well inside 10 minutes)
const providers = o.providers ?? (o.quick ? 'cuda,cuda-host' : 'cuda,cuda-host,webgpu,cpu');
const levels = (o.concurrency ?? (o.quick ? '1,32' : '1,8,32')).split(',').map(Number);
const seconds = +(o.seconds ?? (o.quick ? 5 : 20));
const [promptLen, newTokens, longLen] = [+o.prompt!, +o.new!, +o.long!];

/** A target of the command line: a provider and the binding it runs through. */
function target(name: string): { label: string; provider: string; runtime: RuntimeName } {
  const [provider, via] = name.split('-');
  const runtime = via === 'host' ? 'node' : via === 'capi' ? 'capi' : via ? undefined : defaultRuntime(provider);
  if (!runtime) throw new Error(`--providers: "${name}" is <provider>, <provider>-host or <provider>-capi`);
  return { label: name, provider, runtime };
}

/** MiB of device memory in use (nvidia-smi), where it answers. */
function deviceMemory(): number | undefined {
  const used = probe('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits']);
  const n = Number(used.split('\n')[0]);
  return Number.isFinite(n) ? n : undefined;
}

interface ProviderResult {
  /** The target as named on the command line. */
  target: string;
  provider: string;
  binding: RuntimeName;
  dtype: Dtype;
  /** MiB of device memory in use with the engine loaded, after its run (nvidia-smi). */
  device_memory_mib?: number;
  error?: string;
  load_s?: number;
  /** Where the engine keeps the KV cache on this provider (`/v1/model` kv_cache.location). */
  kv_cache?: 'host' | 'device';
  tokens_per_s: Record<string, number>;
  /** Host bytes per session run over all the levels. */
  input_bytes_per_run?: number;
  output_bytes_per_run?: number;
  /** Input bytes per decoded token, one request, short and long context. */
  input_bytes_per_token?: { short: number; long: number; long_over_short: number };
  /** One greedy generation of a fixed prompt: what the targets are compared on. */
  greedy?: { ids: number[]; logprobs: number[] };
  /** Against the first float32 target that ran: the same greedy tokens, and the largest logprob difference. */
  agrees?: { with: string; tokens: boolean; max_logprob_diff: number };
}

const rng = new Rng(12);
/** The prompt every target generates from greedily, to be compared (the same ids on every target). */
const FIXED = Array.from({ length: 40 }, (_, i) => (i * 7919 + 13) % 50000);
const prompt = (n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * 50000));
const generate = async (engine: Engine, p: number[], n: number) => {
  let tokens = 0;
  for await (const e of engine.generate({ prompt: p, max_new_tokens: n, temperature: 0, stop_at_eos: false }))
    if (e.type === 'token') tokens++;
  return tokens;
};
/** The engine's counters once its report after the last pass is in. */
const counters = async (engine: Engine): Promise<HostBytes> => {
  await new Promise((r) => setTimeout(r, 50));
  return { ...engine.kvUsage.hostBytes };
};

async function measure(t: ReturnType<typeof target>, dtype: Dtype): Promise<ProviderResult> {
  const { provider, runtime } = t;
  const r: ProviderResult = { target: t.label, provider, binding: runtime, dtype, tokens_per_s: {} };
  const t0 = performance.now();
  let engine: Engine;
  try {
    engine = await Engine.start({ model, provider, runtime, dtype, batchCapacity: Math.max(...levels) });
  } catch (e) {
    return { ...r, error: (e as Error).message.slice(0, 300) };
  }
  try {
    r.load_s = (performance.now() - t0) / 1000;
    r.kv_cache = engine.info.kv_cache?.location;
    log(`${provider}: loaded in ${r.load_s.toFixed(1)} s; warming up`);
    await generate(engine, prompt(promptLen), 4);
    r.greedy = { ids: [], logprobs: [] };
    for await (const e of engine.generate({ prompt: FIXED, max_new_tokens: 24, temperature: 0, stop_at_eos: false }))
      if (e.type === 'token') {
        r.greedy.ids.push(e.id);
        r.greedy.logprobs.push(e.logprob);
      }
    const before = await counters(engine);
    for (const c of levels) {
      const t1 = performance.now();
      const until = t1 + seconds * 1000;
      const counts = await Promise.all(
        Array.from({ length: c }, async () => {
          let n = 0;
          do n += await generate(engine, prompt(promptLen), newTokens);
          while (performance.now() < until);
          return n;
        }),
      );
      const tps = counts.reduce((a, b) => a + b, 0) / ((performance.now() - t1) / 1000);
      r.tokens_per_s[`c${c}`] = tps;
      log(`${provider}: c${c} ${tps.toFixed(1)} tokens/s`);
    }
    const after = await counters(engine);
    const runs = after.runs - before.runs;
    r.input_bytes_per_run = (after.input - before.input) / runs;
    r.output_bytes_per_run = (after.output - before.output) / runs;
    const perToken = async (len: number) => {
      const p = prompt(len);
      const a = await counters(engine);
      await generate(engine, p, 1);
      const b = await counters(engine);
      await generate(engine, p, 9);
      const c = await counters(engine);
      return (c.input - b.input - (b.input - a.input)) / 8;
    };
    const short = await perToken(promptLen);
    const long = await perToken(longLen);
    r.input_bytes_per_token = { short, long, long_over_short: long / short };
    r.device_memory_mib = deviceMemory();
  } catch (e) {
    r.error = (e as Error).message.slice(0, 300);
  } finally {
    await engine.close();
  }
  return r;
}

const results: ProviderResult[] = [];
for (const t of providers.split(',').map(target))
  for (const dtype of o.dtypes!.split(',').map((d) => parseDtype(d, '--dtypes'))) {
    const has = t.runtime === 'node' ? machine.backends : runtimeNamed(t.runtime).providers();
    if (!has.includes(t.provider)) {
      const error = `not in this build of the ${t.runtime} binding`;
      results.push({ target: t.label, provider: t.provider, binding: t.runtime, dtype, error, tokens_per_s: {} });
      continue;
    }
    results.push(await measure(t, dtype));
  }
// every target against the first float32 one that ran: the same greedy tokens (float32: required)
const reference = results.find((r) => r.dtype === 'float32' && r.greedy);
for (const r of results)
  if (reference && r.greedy && r !== reference)
    r.agrees = {
      with: reference.target,
      tokens: r.greedy.ids.join() === reference.greedy!.ids.join(),
      max_logprob_diff: Math.max(
        ...r.greedy.logprobs.map((x, i) => Math.abs(x - (reference.greedy!.logprobs[i] ?? Number.NaN))),
      ),
    };
const disagree = results.filter((r) => r.dtype === 'float32' && r.agrees && !r.agrees.tokens);
const cpu = results.find((r) => r.provider === 'cpu' && r.dtype === 'float32' && !r.error);
const mb = (b?: number) => (b === undefined ? '' : `${(b / 2 ** 20).toFixed(2)} MiB`);
const table = results.map((r) => ({
  target: r.target,
  binding: r.binding,
  dtype: r.dtype,
  'kv cache': r.kv_cache ?? '',
  ...Object.fromEntries(levels.map((c) => [`c${c} tok/s`, r.tokens_per_s[`c${c}`]?.toFixed(1) ?? ''])),
  ...(cpu && {
    [`c${levels.at(-1)} vs cpu`]: r.tokens_per_s[`c${levels.at(-1)}`]
      ? (r.tokens_per_s[`c${levels.at(-1)}`] / cpu.tokens_per_s[`c${levels.at(-1)}`]).toFixed(2)
      : '',
  }),
  'in/run': mb(r.input_bytes_per_run),
  'out/run': mb(r.output_bytes_per_run),
  [`in/token ${promptLen}`]: mb(r.input_bytes_per_token?.short),
  [`in/token ${longLen}`]: mb(r.input_bytes_per_token?.long),
  'long/short': r.input_bytes_per_token?.long_over_short.toFixed(2) ?? '',
  'device MiB': r.device_memory_mib ?? '',
  'same tokens': r.agrees
    ? `${r.agrees.tokens ? 'yes' : 'NO'} (Δlp ${r.agrees.max_logprob_diff.toExponential(1)})`
    : '',
  error: r.error?.slice(0, 60) ?? '', // whole in the JSON
}));
console.table(table);
const top = `c${levels.at(-1)}`;
const best = results
  .filter((r) => !r.error && r.tokens_per_s[top])
  .sort((a, b) => b.tokens_per_s[top] - a.tokens_per_s[top])[0];
const recommended = best && { target: best.target, provider: best.provider, binding: best.binding, dtype: best.dtype };
console.log(
  recommended
    ? `recommended default: ${best.target} (${best.binding}, ${best.dtype}): the most tokens/s at ${top}`
    : 'no target ran',
);
mkdirSync(dirname(o.out!), { recursive: true });
const summary = { machine, model, levels, seconds, prompt: promptLen, new: newTokens, results, recommended };
writeFileSync(o.out!, `${JSON.stringify(summary, null, 2)}\n`);
console.log(JSON.stringify({ gpu_check: table, recommended }));
console.log(`wrote ${o.out} in ${elapsed()}`);
if (disagree.length) {
  console.error(
    `gpu-check: ${disagree.map((r) => r.target).join(', ')} generated other greedy tokens than ${reference!.target} (float32)`,
  );
  process.exitCode = 1;
}
