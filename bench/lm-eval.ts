/**
 * lm-evaluation-harness-shaped load against the base model and a preset, over HTTP, on a
 * GPT-2-small-shaped generated checkpoint (the one `npm run bench` writes): what `local-completions`
 * sends with `tokenized_requests` and `--batch_size B`.
 *
 * - loglikelihood: requests of B token-id prompts (context + continuation), `max_tokens` 1, `echo`,
 *   `logprobs` 1, `temperature` 0 (as the harness sends them for multiple-choice tasks);
 * - generation: requests of B token-id prompts, `max_tokens` N, `temperature` 0, a stop string.
 *
 * Reports requests/s, prompts/s, prompt tokens/s (scored) and generated tokens/s for each, against
 * the base model and against a preset of two interventions (the same requests, `model` changed).
 * Both are warmed up first; base and preset then take turns request by request (the workload
 * BENCH_REPS times, default 1), so that a shared machine's changing load falls on both alike.
 *
 *   npm run bench:lm-eval [-- --dir DIR --batch 16 --requests 6 --new 32 --token-budget N --out FILE]
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
    batch: { type: 'string', default: '16' },
    requests: { type: 'string', default: '6' },
    new: { type: 'string', default: '32' },
    out: { type: 'string', default: 'bench/results/lm-eval.json' },
    'token-budget': { type: 'string', description: 'STEERD_TOKEN_BUDGET for the run (default: the server default)' },
  },
});
const B = +o.batch!;
const requests = +o.requests!;
const newTokens = +o.new!;
if (!existsSync(join(o.dir!, 'model.safetensors'))) {
  console.error(`writing a GPT-2-small-shaped checkpoint to ${o.dir} ...`);
  writeTinyCheckpoint(o.dir!, { layers: 12, embd: 768, heads: 12, ctx: 1024 });
}
const data = mkdtempSync(join(tmpdir(), 'steerd-bench-data-'));
const defaults = loadConfig({});
const tokenBudget = o['token-budget'] ? +o['token-budget'] : defaults.tokenBudget;
const svc = await createService({ ...defaults, tokenBudget, model: o.dir!, dataDir: data, logLevel: 'silent' });
const app = await buildApp(svc, { logger: false });
await app.listen({ host: '127.0.0.1', port: 0 });
const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1`;
const post = async (path: string, body: object) => {
  const r = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
};

const H = svc.engine.info.n_embd;
await post('/vectors', { name: 'bench-dir', values: Array.from({ length: H }, (_, i) => 0.05 * Math.sin(i * 0.37)) });
await post('/presets', {
  name: 'bench-preset',
  interventions: [
    { vector: 'bench-dir', layer: 6, coeff: 8 },
    { vector: { values: Array.from({ length: H }, (_, i) => 0.05 * Math.cos(i * 0.11)) }, layer: 3, coeff: -4 },
  ],
});

// contexts of 20-60 tokens and continuations of 1-6, as multiple-choice tasks give them
const words =
  'the a committee met on Tuesday to discuss budget for next year and then went home after dinner with friends'.split(
    ' ',
  );
const text = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => words[(seed * 7 + i * 3) % words.length]).join(' ');
const encode = (s: string) => svc.engine.tokenizer.encode(s);
const ll = (r: number) =>
  Array.from({ length: B }, (_, i) => [
    ...encode(text(20 + ((r * B + i) % 40), r * B + i)),
    ...encode(` ${text(1 + (i % 6), i)}`),
  ]);
const gen = (r: number) => Array.from({ length: B }, (_, i) => encode(text(16 + (i % 16), r * B + i)));

interface Totals {
  llS: number;
  genS: number;
  promptTokens: number;
  generated: number;
}
const totals = (): Totals => ({ llS: 0, genS: 0, promptTokens: 0, generated: 0 });
const seconds = async <T>(f: () => Promise<T>): Promise<[number, T]> => {
  const t0 = performance.now();
  const r = await f();
  return [(performance.now() - t0) / 1000, r];
};

const models = { base: svc.model.name, preset: 'bench-preset' } as const;
for (const model of Object.values(models)) {
  await post('/completions', { model, prompt: ll(99), max_tokens: 1, echo: true, logprobs: 1, temperature: 0 });
  await post('/completions', { model, prompt: gen(99), max_tokens: 4, temperature: 0 });
}
// The machine is shared and its load changes by the second: base and preset take turns request by
// request, so that both meet the same load; each sums its own requests' times.
const got = { base: totals(), preset: totals() };
const reps = +(process.env.BENCH_REPS ?? 1);
for (let i = 0; i < reps; i++) {
  for (let r = 0; r < requests; r++) {
    const prompts = ll(r);
    for (const [k, model] of Object.entries(models)) {
      const [s] = await seconds(() =>
        post('/completions', {
          model,
          prompt: prompts,
          temperature: 0,
          max_tokens: 1,
          logprobs: 1,
          seed: 1234,
          echo: true,
        }),
      );
      const t = got[k as keyof typeof models];
      t.llS += s;
      t.promptTokens += prompts.reduce((n, p) => n + p.length, 0);
    }
  }
  for (let r = 0; r < requests; r++) {
    for (const [k, model] of Object.entries(models)) {
      const [s, res] = await seconds(
        () =>
          post('/completions', {
            model,
            prompt: gen(r),
            max_tokens: newTokens,
            temperature: 0,
            stop: ['\n\n'],
            seed: 1234,
          }) as Promise<{ usage: { completion_tokens: number } }>,
      );
      const t = got[k as keyof typeof models];
      t.genS += s;
      t.generated += res.usage.completion_tokens;
    }
  }
}
const summary = (t: Totals) => ({
  loglikelihood: {
    requests: requests * reps,
    prompts: requests * reps * B,
    prompt_tokens: t.promptTokens,
    seconds: +t.llS.toFixed(2),
    requests_per_s: +((requests * reps) / t.llS).toFixed(2),
    prompts_per_s: +((requests * reps * B) / t.llS).toFixed(1),
    prompt_tokens_per_s: Math.round(t.promptTokens / t.llS),
  },
  generation: {
    requests: requests * reps,
    prompts: requests * reps * B,
    generated_tokens: t.generated,
    seconds: +t.genS.toFixed(2),
    generated_tokens_per_s: Math.round(t.generated / t.genS),
  },
});

const result = {
  checkpoint: o.dir,
  batch: B,
  max_tokens: newTokens,
  token_budget: tokenBudget,
  base: summary(got.base),
  preset: summary(got.preset),
};
console.log(JSON.stringify(result, null, 2));
mkdirSync(dirname(o.out!), { recursive: true });
writeFileSync(o.out!, `${JSON.stringify(result, null, 2)}\n`);
await app.close();
await svc.engine.close();
for (const close of svc.closers) await close();
rmSync(data, { recursive: true, force: true });
