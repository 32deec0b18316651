import type { Engine } from '../src/engine/engine.ts';
import type { GenerateRequest } from '../src/engine/types.ts';

export const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

/** Runs requests at once: tokens/s over the run, time to first token, and the steady decoding rate. */
export async function measure(engine: Engine, reqs: GenerateRequest[]) {
  const t0 = performance.now();
  const done = await Promise.all(
    reqs.map(async (r) => {
      const times: number[] = [];
      let first = 0;
      for await (const e of engine.generate(r)) {
        if (e.type === 'token') times.push(performance.now());
        else first = e.timings.first_token_ms;
      }
      return { times, first, end: performance.now() };
    }),
  );
  const sec = (performance.now() - t0) / 1000;
  const tokens = done.reduce((s, d) => s + d.times.length, 0);
  const ttft = done.map((d) => d.first);
  // steady decoding: from the last first token to the first end, every row is decoding
  const from = Math.max(...done.map((d) => d.times[0]));
  const to = Math.min(...done.map((d) => d.end));
  const steady = done.reduce((s, d) => s + d.times.filter((x) => x > from && x <= to).length, 0);
  return {
    concurrency: reqs.length,
    tokens,
    seconds: sec,
    tokens_per_s: tokens / sec,
    decode_tokens_per_s: to > from ? steady / ((to - from) / 1000) : Number.NaN,
    ttft_p50_ms: quantile(ttft, 0.5),
    ttft_p99_ms: quantile(ttft, 0.99),
  };
}
