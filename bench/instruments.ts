/**
 * What the research instruments cost and save, on a GPT-2-small-shaped generated checkpoint (the
 * one `npm run bench` writes), through the HTTP app (inject), ratios measured in one run:
 *
 * - a sweep of 2 layers × 8 coeffs (one seed, 32 new tokens, telemetry off) against the same 16
 *   requests sent to /v1/generate one after another;
 * - telemetry's cost: tokens/s of the same requests with and without it, alone and 8 at once (the
 *   unsteered twin is a second row in every pass, and a KL over the vocabulary per token).
 *
 *   npm run bench:instruments [-- --dir DIR --new 32 --out FILE]
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { createService } from '../src/server.ts';

const { values: o } = parseArgs({
  options: {
    dir: { type: 'string', default: join(tmpdir(), 'steerd-bench-gpt2-small') },
    new: { type: 'string', default: '32' },
    out: { type: 'string', default: 'bench/results/instruments.json' },
  },
});
const newTokens = +o.new!;
if (!existsSync(join(o.dir!, 'model.safetensors'))) {
  console.error(`writing a GPT-2-small-shaped checkpoint to ${o.dir} ...`);
  writeTinyCheckpoint(o.dir!, { layers: 12, embd: 768, heads: 12, ctx: 1024 });
}
const data = mkdtempSync(join(tmpdir(), 'steerd-bench-data-'));
const svc = await createService({ ...loadConfig({}), model: o.dir!, dataDir: data, logLevel: 'silent' });
const app = await buildApp(svc, { logger: false });
const H = svc.engine.info.n_embd;
const values = Array.from({ length: H }, (_, i) => 0.05 * Math.sin(i * 0.37));
const post = async (url: string, payload: object) => {
  const r = await app.inject({ method: 'POST', url, payload });
  if (r.statusCode !== 200) throw new Error(`${url}: ${r.statusCode} ${r.body}`);
  return r.json();
};
const prompt = 'The committee met on Tuesday to discuss the budget for next year, and';
const layers = [3, 8];
const coeffs = [-8, -4, -2, -1, 1, 2, 4, 8];
const sampling = { max_new_tokens: newTokens, temperature: 0, seed: 1 };
const seconds = async (f: () => Promise<unknown>) => {
  const t0 = performance.now();
  await f();
  return (performance.now() - t0) / 1000;
};
// The machine is shared: each measurement is repeated and the fastest kept.
const reps = +(process.env.BENCH_REPS ?? 2);
const best = async (f: () => Promise<unknown>) => {
  let b = Infinity;
  for (let i = 0; i < reps; i++) b = Math.min(b, await seconds(f));
  return b;
};

await post('/v1/generate', { prompt, ...sampling, max_new_tokens: 4 }); // warm-up
const sweep = await best(() =>
  post('/v1/sweep', { prompt, vector: { values }, layers, coeffs, ...sampling, telemetry: false }),
);
const sequential = await best(async () => {
  for (const layer of layers)
    for (const coeff of coeffs)
      await post('/v1/generate', { prompt, ...sampling, interventions: [{ vector: { values }, layer, coeff }] });
});
const cellTokens = layers.length * coeffs.length * newTokens;
console.error(`sweep ${sweep.toFixed(1)} s, one after another ${sequential.toFixed(1)} s`);

const telemetry: Record<string, { plain_tokens_per_s: number; telemetry_tokens_per_s: number }> = {};
for (const concurrency of [1, 8]) {
  const run = (tel: boolean) =>
    best(() =>
      Promise.all(
        Array.from({ length: concurrency }, (_, i) =>
          post('/v1/generate', {
            prompt,
            ...sampling,
            seed: i,
            telemetry: tel,
            interventions: [{ vector: { values }, layer: 3, coeff: 4 }],
          }),
        ),
      ),
    );
  const plain = (concurrency * newTokens) / (await run(false));
  const tel = (concurrency * newTokens) / (await run(true));
  telemetry[`c${concurrency}`] = { plain_tokens_per_s: plain, telemetry_tokens_per_s: tel };
  console.error(`concurrency ${concurrency}: ${plain.toFixed(1)} tokens/s, with telemetry ${tel.toFixed(1)}`);
}
await app.close();
await svc.engine.close();
rmSync(data, { recursive: true, force: true });

const summary = {
  cells: layers.length * coeffs.length,
  new_tokens: newTokens,
  repetitions: reps,
  sweep_seconds: sweep,
  sequential_seconds: sequential,
  sweep_tokens_per_s: cellTokens / sweep,
  sequential_tokens_per_s: cellTokens / sequential,
  telemetry,
  ratios: {
    sweep_speedup: sequential / sweep,
    telemetry_cost_c1: 1 - telemetry.c1.telemetry_tokens_per_s / telemetry.c1.plain_tokens_per_s,
    telemetry_cost_c8: 1 - telemetry.c8.telemetry_tokens_per_s / telemetry.c8.plain_tokens_per_s,
  },
};
console.table({
  sweep: { seconds: +sweep.toFixed(2), tokens_per_s: +summary.sweep_tokens_per_s.toFixed(1) },
  'one after another': { seconds: +sequential.toFixed(2), tokens_per_s: +summary.sequential_tokens_per_s.toFixed(1) },
});
console.table(Object.fromEntries(Object.entries(summary.ratios).map(([k, v]) => [k, { ratio: +v.toFixed(3) }])));
mkdirSync(dirname(o.out!), { recursive: true });
writeFileSync(o.out!, `${JSON.stringify(summary, null, 2)}\n`);
console.log(`wrote ${o.out}`);
