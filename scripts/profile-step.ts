/**
 * Where one decode step's time goes, on a generated checkpoint of the GPT-2-small shape (the one
 * `npm run bench` writes): at each row count, decode steps through the model runner with ONNX
 * Runtime's profiler on (per node type: kernel time summed over the step's nodes, and the nodes
 * run), the session run's own wall time and the runner's time around it (feeds, output handling),
 * a greedy pick per row (the engine's sampler), and then the same decode through the engine (its
 * worker thread, the scheduler and the hop back to the caller) for the time per step it adds.
 *
 *   npm run profile:step [-- --dir DIR --rows 1,8,32 --past 48 --steps 40 --threads 0 --top 12 --skip-engine --full --spinning --dtype int8]
 *
 * `--full`: the graph with every hook point (no lean graph); `--spinning`: intra-op threads spin;
 * `--dtype`: the weights' dtype (dtypes.ts; default float32).
 *
 * Profiles are written to the system's temporary folder and removed; one table per row count.
 */

import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseDtype } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import type { ForwardInput } from '../src/engine/pass.ts';
import { ModelRunner, type RunnerOptions } from '../src/engine/runner.ts';
import type { OrtNodeSession } from '../src/engine/runtime/ort-node.ts';
import { Sampler } from '../src/engine/sampler.ts';

const { values: o } = parseArgs({
  options: {
    dir: { type: 'string', default: join(tmpdir(), 'steerd-bench-gpt2-small') },
    rows: { type: 'string', default: '1,8,32' },
    past: { type: 'string', default: '48' },
    steps: { type: 'string', default: '40' },
    threads: { type: 'string', default: '0' },
    top: { type: 'string', default: '12' },
    'skip-engine': { type: 'boolean', default: false },
    full: { type: 'boolean', default: false },
    spinning: { type: 'boolean', default: false },
    dtype: { type: 'string', default: 'float32' },
  },
});
const dtype = parseDtype(o.dtype!, '--dtype');
const levels = o.rows!.split(',').map(Number);
const past = +o.past!;
const steps = +o.steps!;
const threads = +o.threads!;
const ms = (x: number) => +x.toFixed(3);

interface Event {
  cat: string;
  name: string;
  dur: number;
  args?: { op_name?: string };
}

/** Decode steps at `B` rows through the runner, profiled: per node type and around the run. */
async function profileRunner(B: number, opts: Partial<RunnerOptions> = {}) {
  const prefix = join(tmpdir(), `steerd-profile-${process.pid}-${B}`);
  const runner = await ModelRunner.open({
    model: o.dir!,
    threads,
    ...opts,
    sessionOptions: { enableProfiling: true, profileFilePrefix: prefix },
  });
  const { nLayer, nHead, headDim } = runner.kv;
  const P = Math.ceil((past + 1) / 16) * 16;
  const block = () => Float32Array.from({ length: B * nHead * P * headDim }, (_, i) => Math.sin(i) * 0.1);
  const group = {
    k: Array.from({ length: nLayer }, block),
    v: Array.from({ length: nLayer }, block),
    P,
    rows: B,
  };
  const input = (): ForwardInput => ({
    ids: Array.from({ length: B }, (_, b) => [(b * 7919) % 50000]),
    pos: Array.from({ length: B }, () => [past]),
    newLen: new Array(B).fill(1),
    pastLen: new Array(B).fill(past),
    groups: [group],
    steer: { add: new Map(), proj: new Map() },
  });
  // the session that runs an unsteered pass: the lean graph's where there is one
  const sessions = runner as unknown as { session: OrtNodeSession; lean?: OrtNodeSession };
  const session = sessions.lean ?? sessions.session;
  const run = session.run.bind(session);
  let inRun = 0;
  session.run = (async (...args: Parameters<typeof run>) => {
    const t = performance.now();
    const r = await run(...args);
    inRun += performance.now() - t;
    return r;
  }) as typeof session.run;
  for (let i = 0; i < 5; i++) await runner.forward(input());
  inRun = 0;
  const samplers = Array.from(
    { length: B },
    (_, b) => new Sampler({ temperature: 0, top_k: 0, top_p: 1, frequency_penalty: 0, presence_penalty: 0 }, b, 50257),
  );
  let forward = 0;
  let sampling = 0;
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    const t = performance.now();
    const out = await runner.forward(input());
    const t1 = performance.now();
    forward += t1 - t;
    const V = runner.info.vocab_size;
    for (let b = 0; b < B; b++) samplers[b].sample(out.lastLogits.subarray(b * V, (b + 1) * V), out.lastLse[b]);
    sampling += performance.now() - t1;
  }
  const wall = performance.now() - t0;
  session.endProfiling();
  await runner.close();
  // every session of the runner wrote one: the largest is the one that ran the steps
  const files = readdirSync(tmpdir())
    .filter((f) => f.startsWith(basename(prefix)) && f.endsWith('.json'))
    .map((f) => join(tmpdir(), f));
  if (!files.length) throw new Error(`no profile ${prefix}_*.json`);
  const file = files.reduce((a, b) => (statSync(b).size > statSync(a).size ? b : a));
  const events = JSON.parse(readFileSync(file, 'utf8')) as Event[];
  for (const f of files) rmSync(f, { force: true });
  // the last `steps` runs are the timed ones
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
  const timed = runs.slice(-steps);
  const from = (timed[0] as unknown as { ts: number }).ts;
  const byOp = new Map<string, { us: number; nodes: number }>();
  const byNode = new Map<string, number>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || (e as unknown as { ts: number }).ts < from) continue;
    const op = e.args?.op_name ?? '?';
    byNode.set(e.name, (byNode.get(e.name) ?? 0) + e.dur);
    const a = byOp.get(op) ?? { us: 0, nodes: 0 };
    a.us += e.dur;
    a.nodes++;
    byOp.set(op, a);
  }
  const modelRun = timed.reduce((s, e) => s + e.dur, 0) / steps / 1000;
  const kernels = [...byOp.values()].reduce((s, a) => s + a.us, 0) / steps / 1000;
  const nodes = [...byOp.values()].reduce((s, a) => s + a.nodes, 0) / steps;
  return {
    rows: B,
    step_ms: ms(wall / steps),
    session_run_ms: ms(inRun / steps),
    ort_model_run_ms: ms(modelRun),
    kernels_ms: ms(kernels),
    nodes,
    around_run_ms: ms((forward - inRun) / steps),
    sampling_ms: ms(sampling / steps),
    slowest: [...byNode.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, +o.top!)
      .map(([n, us]) => ({ node: n.replace(/_kernel_time$/, ''), ms: ms(us / steps / 1000) })),
    byOp: [...byOp.entries()]
      .sort((a, b) => b[1].us - a[1].us)
      .map(([op, a]) => ({
        op,
        ms: ms(a.us / steps / 1000),
        nodes: a.nodes / steps,
        share: ms(a.us / 1000 / steps / modelRun),
      })),
  };
}

/** The same decode through the engine: time per step of B rows generating together. */
async function engineStep(B: number) {
  const engine = await Engine.start({
    model: o.dir!,
    threads,
    batchCapacity: Math.max(B, 2),
    lean: !o.full,
    dtype,
    spinning: o.spinning,
  });
  const gen = async (n: number, newTokens: number) => {
    const times: number[][] = [];
    await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const t: number[] = [];
        times.push(t);
        for await (const e of engine.generate({
          prompt: Array.from({ length: past }, (_, j) => (i * 131 + j * 17) % 50000),
          max_new_tokens: newTokens,
          temperature: 0,
          stop_at_eos: false,
        }))
          if (e.type === 'token') t.push(performance.now());
      }),
    );
    return times;
  };
  await gen(B, 4);
  const times = await gen(B, steps + 1);
  await engine.close();
  // from every row's first token to the first row's end: steps where all B rows decode
  const from = Math.max(...times.map((t) => t[0]));
  const to = Math.min(...times.map((t) => t[t.length - 1]));
  const n = Math.min(...times.map((t) => t.filter((x) => x > from && x <= to).length));
  return ms((to - from) / n);
}

for (const B of levels) {
  const r = await profileRunner(B, { lean: !o.full, spinning: o.spinning, dtype });
  const e = !o['skip-engine'] ? await engineStep(B) : Number.NaN;
  console.log(
    `\n${B} row(s): step ${r.step_ms} ms through the runner (${r.nodes} nodes), engine ${e} ms per step; session.run ${r.session_run_ms} ms (ORT model_run ${r.ort_model_run_ms}, kernels ${r.kernels_ms}), runner around the run ${r.around_run_ms} ms, greedy sampling ${r.sampling_ms} ms`,
  );
  console.table(r.byOp.slice(0, +o.top!));
  if (process.env.PROFILE_NODES) console.table(r.slowest);
}
