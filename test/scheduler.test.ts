/**
 * The scheduler's state machine driven without ONNX Runtime (helpers/fake-pass.ts): admission in
 * order under a full KV budget, chunked prefill between decode steps, cancellation in the middle of
 * a prompt, a telemetry request's twin from admission to release, and a failed pass resetting
 * everything. The fake model's tokens depend on the cache each row is given, so a row fed another
 * row's cache, or a prompt cut wrongly into chunks, generates the wrong tokens.
 */
import t from 'tap';
import { Scheduler, type SchedulerOptions } from '../src/engine/scheduler.ts';
import type { GenerateEvent, GenerateRequest } from '../src/engine/types.ts';
import type { SteerdError } from '../src/errors.ts';
import { FakePass, reference } from './helpers/fake-pass.ts';

interface Logged {
  id: number;
  e: GenerateEvent;
}

function setup(opts: SchedulerOptions) {
  const pass = new FakePass();
  const events: Logged[] = [];
  const errors: { id: number; e: SteerdError }[] = [];
  const scheduler = new Scheduler(
    pass,
    {
      event: (id, e) => events.push({ id, e }),
      activations: () => undefined,
      error: (id, e) => errors.push({ id, e }),
    },
    opts,
  );
  const drain = async () => {
    while (await scheduler.step());
  };
  const tokens = (id: number) =>
    events.filter((l) => l.id === id && l.e.type === 'token').map((l) => (l.e as { id: number }).id);
  const done = (id: number) =>
    events.find((l) => l.id === id && l.e.type === 'done')?.e as Extract<GenerateEvent, { type: 'done' }> | undefined;
  /** Index in the event log of request id's first token and of its done event. */
  const first = (id: number) => events.findIndex((l) => l.id === id && l.e.type === 'token');
  const last = (id: number) => events.findIndex((l) => l.id === id && l.e.type === 'done');
  return { pass, scheduler, events, errors, drain, tokens, done, first, last };
}

const req = (prompt: number[], max: number, extra: Partial<GenerateRequest> = {}): GenerateRequest => ({
  prompt,
  max_new_tokens: max,
  temperature: 0,
  seed: 1,
  ...extra,
});
const count = (n: number) => Array.from({ length: n }, (_, i) => (i * 5) % 13);

t.test('a full KV budget admits in order: a large request is not overtaken by a small one', async (t) => {
  const s = setup({ kvCacheTokens: 128 });
  t.same(s.scheduler.kvCache.classes, [64, 128], 'two size classes');
  const a = req([1, 2, 3], 20); // 23 tokens: class 64
  const b = req(count(70), 20); // 90 tokens: class 128
  const c = req([4, 5], 5); // 7 tokens: class 64, would fit beside a
  s.scheduler.submit(1, a);
  s.scheduler.submit(2, b);
  s.scheduler.submit(3, c);
  await s.scheduler.step();
  t.equal(s.scheduler.kvUsage.used, 64, 'only the first is admitted');
  t.same(s.pass.log[0].B, 1, 'its prompt alone is prefilled');
  await s.drain();
  t.ok(s.last(1) < s.first(2), 'the second starts once the first is done');
  t.ok(s.last(2) < s.first(3), 'the third waits for the second, though it fit beside the first');
  t.same(s.tokens(1), reference(a.prompt, 20), 'first: the tokens it gets alone');
  t.same(s.tokens(2), reference(b.prompt, 20), 'second: the tokens it gets alone');
  t.same(s.tokens(3), reference(c.prompt, 5), 'third: the tokens it gets alone');
  t.equal(s.scheduler.kvUsage.used, 0, 'every reservation given back');
  t.equal(s.scheduler.pending, 0);
});

t.test('a long prompt is prefilled in chunks, one per step, while running rows decode', async (t) => {
  const s = setup({ kvCacheTokens: 256, tokenBudget: 32 });
  const d = req([1], 30);
  const e = req(count(80), 10);
  s.scheduler.submit(1, d);
  await s.scheduler.step(); // d's prompt, then its first decode step
  s.scheduler.submit(2, e);
  await s.drain();
  const chunks = s.pass.log.filter((p) => p.newLen[0] > 1 && p.seqs[0].length > 1);
  t.same(
    chunks.map((p) => [p.pastLen[0], p.newLen[0], p.T]),
    [
      [0, 32, 32],
      [32, 32, 32],
      [64, 16, 16],
    ],
    'chunks at multiples of the budget, the last padded to 16',
  );
  const at = chunks.map((c) => s.pass.log.indexOf(c));
  for (const i of at) t.equal(s.pass.log[i + 1].T, 1, 'a decode step follows each chunk');
  t.same(s.tokens(1), reference(d.prompt, 30), 'the running row: its tokens');
  t.same(s.tokens(2), reference(e.prompt, 10), 'the chunked prompt: the tokens of its whole prompt');
  t.equal(s.scheduler.kvUsage.used, 0);
});

t.test('a request cancelled between two chunks of its prompt ends at the next step', async (t) => {
  const s = setup({ kvCacheTokens: 128, tokenBudget: 32 });
  const f = req(count(100), 5);
  s.scheduler.submit(1, f);
  await s.scheduler.step();
  t.equal(s.pass.log.length, 1, 'one chunk');
  t.equal(s.scheduler.kvUsage.used, 128, 'its class reserved');
  s.scheduler.cancel(1);
  await s.scheduler.step();
  t.equal(s.pass.log.length, 1, 'no pass for it after the cancel');
  t.same(s.tokens(1), [], 'no token');
  t.equal(s.done(1)?.finish_reason, 'cancelled');
  t.equal(s.done(1)?.usage.completion_tokens, 0);
  t.equal(s.scheduler.kvUsage.used, 0, 'its reservation given back');
  t.equal(s.scheduler.pending, 0);
  // the same prompt again: a new staging cache, from its first token
  s.scheduler.submit(2, f);
  await s.drain();
  t.same(s.tokens(2), reference(f.prompt, 5), 'the next request gets its own tokens');
  t.same(
    s.pass.log.slice(1, 5).map((p) => p.pastLen[0]),
    [0, 32, 64, 96],
    'its chunks start again from the first',
  );
});

t.test("a telemetry request's twin is admitted, fed and released with it", async (t) => {
  const s = setup({ kvCacheTokens: 128 });
  const iv = { values: Float32Array.of(1, 0, 0, 0), rows: 1, layer: 0, coeff: 1 };
  const r = req([3, 1, 4], 6, { telemetry: true, interventions: [iv] });
  s.scheduler.submit(1, r);
  await s.scheduler.step();
  t.equal(s.scheduler.kvUsage.used, 128, 'two rows of class 64 reserved');
  await s.drain();
  t.ok(
    s.pass.log.every((p) => p.B === 2),
    'every pass holds the request and its twin',
  );
  for (const p of s.pass.log.slice(1))
    t.same(p.seqs[1], p.seqs[0].slice(0, p.seqs[1].length), 'the twin holds the steered tokens');
  t.same(s.tokens(1), reference(r.prompt, 6, true), 'the steered row: the steered tokens');
  const telemetry = s.events.flatMap((l) => (l.e.type === 'token' && l.e.telemetry ? [l.e.telemetry] : []));
  t.equal(telemetry.length, 6, 'telemetry on every token');
  t.ok(
    telemetry.every((x) => x.top1_flip && x.kl > 0),
    'against the twin: the top token flips and the distributions differ',
  );
  t.equal(s.done(1)?.telemetry?.top1_flips, 6, 'the totals count every token');
  t.equal(s.scheduler.kvUsage.used, 0, 'both rows released');
  // the twin's rows left the cache: a new request decodes alone
  s.scheduler.submit(2, req([2], 3));
  await s.drain();
  t.equal(s.pass.log.at(-1)?.B, 1, 'no twin left behind');
  t.same(s.tokens(2), reference([2], 3));
});

t.test('a failed pass: the step rejects, reset() forgets every request and the cache', async (t) => {
  const s = setup({ kvCacheTokens: 256 });
  const h = req([1, 2], 10);
  s.scheduler.submit(1, h);
  s.scheduler.submit(2, req(count(40), 10));
  await s.scheduler.step();
  t.equal(s.scheduler.kvUsage.used, 128);
  const ended = s.pass.endSteps;
  s.pass.failNext = true;
  await t.rejects(s.scheduler.step(), /the pass failed/);
  t.equal(s.pass.endSteps, ended + 1, 'the step was ended all the same');
  s.scheduler.reset();
  t.equal(s.scheduler.pending, 0, 'no request left');
  t.equal(s.scheduler.kvUsage.used, 0, 'no reservation left');
  t.equal(s.scheduler.kvUsage.bytes, 0, 'no cache held');
  s.scheduler.submit(3, h);
  await s.drain();
  t.same(s.tokens(3), reference(h.prompt, 10), 'a new request: its own tokens');
  t.ok(
    s.pass.log.slice(-9).every((p) => p.B === 1),
    'decoded alone: nothing of the old rows is left',
  );
  t.notOk(s.done(1), 'the failed requests get no done event from the scheduler');
});
