/**
 * What the Redis queue adds: the same load (the load test's mix of steered and unsteered,
 * streaming and whole requests, closed loop) against `steerd serve` in embedded mode and against
 * `steerd serve` + one `steerd worker` process on Redis, on the tiny checkpoint, alternating the two
 * modes for a few rounds in one run. Reports end-to-end latency and time to first token (p50/p99)
 * and generated tokens/s per mode, and the Redis/embedded ratios of the medians over rounds.
 *
 *   npm run bench:queue [-- --concurrency 8 --duration 8 --new 32 --rounds 2 --out FILE]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import type { LoadTestOptions } from '../src/loadtest/options.ts';
import { runLoadTest } from '../src/loadtest/run.ts';
import { percentile } from '../src/loadtest/stats.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';

const { values: o } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '8' },
    duration: { type: 'string', default: '8' },
    new: { type: 'string', default: '32' },
    rounds: { type: 'string', default: '2' },
    redis: { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    out: { type: 'string', default: 'bench/results/queue.json' },
  },
});

const root = mkdtempSync(join(tmpdir(), 'steerd-bench-queue-'));
const model = join(root, 'tiny');
writeTinyCheckpoint(model, { layers: 8, embd: 128, heads: 4, ctx: 512, initScale: 5 }); // the shape of `--model tiny`
const prefix = `steerd-bench-${randomBytes(4).toString('hex')}:`;
const bin = join(import.meta.dirname, '..', 'bin', 'steerd.js');
const children: ChildProcess[] = [];

/** Starts a steerd command; resolves with its output once `ready` matches it. */
function start(args: string[], env: Record<string, string>, ready: RegExp): Promise<RegExpExecArray> {
  const child = spawn(process.execPath, [bin, ...args], {
    env: { ...process.env, LOG_LEVEL: 'info', STEERD_DATA: join(root, 'data'), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    const seen = (d: Buffer) => {
      out += d;
      const m = ready.exec(out);
      if (m) resolve(m);
    };
    child.stdout!.on('data', seen);
    child.stderr!.on('data', seen);
    child.on('exit', (code) => reject(new Error(`steerd ${args[0]} exited (${code}): ${out}`)));
  });
}

async function stopAll() {
  await Promise.all(
    children.splice(0).map((c) => {
      if (c.exitCode !== null) return undefined;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      return exited;
    }),
  );
}

const listening = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/;

async function serve(mode: 'embedded' | 'redis'): Promise<string> {
  const env: Record<string, string> = mode === 'redis' ? { REDIS_URL: o.redis!, STEERD_REDIS_PREFIX: prefix } : {};
  if (mode === 'redis') await start(['worker', '--model', model], env, /steerd worker: serving/);
  return (await start(['serve', '--model', model, '--port', '0'], env, listening))[1];
}

const load = (url: string): LoadTestOptions => ({
  url,
  allowRemote: false,
  concurrency: Number(o.concurrency),
  ramp: 0,
  duration: Number(o.duration),
  maxRequests: 100_000,
  timeout: 60,
  maxNewTokens: Number(o.new),
  steeredFraction: 0.5,
  streamFraction: 0.5,
  probeFraction: 0.25,
  namedVector: true,
  seed: 1,
});

interface Row {
  mode: string;
  round: number;
  requests: number;
  errors: number;
  tokens_per_s: number;
  e2e_p50: number;
  e2e_p99: number;
  ttft_p50: number;
  ttft_p99: number;
}

const rows: Row[] = [];
try {
  for (let round = 1; round <= Number(o.rounds); round++) {
    for (const mode of ['embedded', 'redis'] as const) {
      const url = await serve(mode);
      const r = await runLoadTest(load(url), { log: () => undefined });
      await stopAll();
      const row = {
        mode,
        round,
        requests: r.requests.sent,
        errors: r.errors.total,
        tokens_per_s: r.throughput.generated_tokens_per_s,
        e2e_p50: r.latency_ms.e2e.p50,
        e2e_p99: r.latency_ms.e2e.p99,
        ttft_p50: r.latency_ms.ttft_stream.p50,
        ttft_p99: r.latency_ms.ttft_stream.p99,
      };
      rows.push(row);
      console.error(
        `round ${round} ${mode}: ${row.requests} requests, ${row.tokens_per_s.toFixed(1)} tokens/s, e2e p50 ${row.e2e_p50.toFixed(0)} ms`,
      );
    }
  }
} finally {
  await stopAll();
  const redis = new Redis(o.redis!);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
  rmSync(root, { recursive: true, force: true });
}

const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
const of = (mode: string, k: keyof Row) => median(rows.filter((r) => r.mode === mode).map((r) => r[k] as number));
const fmt = (n: number, d = 1) => n.toFixed(d).padStart(9);
console.log(
  `\nconcurrency ${o.concurrency}, ${o.duration} s per round, max_new_tokens ${o.new}, tiny checkpoint (8 layers, 128 wide)\n`,
);
console.log('mode       round  requests errors  tokens/s  e2e p50  e2e p99  ttft p50  ttft p99   (ms)');
for (const r of rows) {
  console.log(
    `${r.mode.padEnd(10)} ${String(r.round).padStart(5)} ${String(r.requests).padStart(9)} ${String(r.errors).padStart(6)}${fmt(r.tokens_per_s)}${fmt(r.e2e_p50, 0)}${fmt(r.e2e_p99, 0)}${fmt(r.ttft_p50, 0)}${fmt(r.ttft_p99, 0)}`,
  );
}
const ratios = Object.fromEntries(
  (['tokens_per_s', 'e2e_p50', 'e2e_p99', 'ttft_p50', 'ttft_p99'] as const).map((k) => [
    k,
    of('redis', k) / of('embedded', k),
  ]),
);
console.log(
  `\nredis / embedded (medians over rounds): ${Object.entries(ratios)
    .map(([k, v]) => `${k} ${v.toFixed(2)}×`)
    .join(', ')}`,
);
mkdirSync(dirname(o.out!), { recursive: true });
writeFileSync(o.out!, `${JSON.stringify({ options: o, rows, ratios }, null, 2)}\n`);
