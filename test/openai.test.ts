import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI, { BadRequestError, NotFoundError, RateLimitError, UnprocessableEntityError } from 'openai';
import type { Completion, CompletionCreateParamsNonStreaming } from 'openai/resources/completions';
import t, { type Test } from 'tap';
import type { Intervention } from '../src/engine/types.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { harness } from './helpers/api.ts';
import { referenceGreedy } from './helpers/engine-util.ts';
import { generationBody, loglikelihoodBody, readLoglikelihood, referenceLoglikelihood } from './helpers/lm-eval.ts';
import { sameRun } from './helpers/provider.ts';
import { loadReference } from './helpers/reference.ts';

// The official OpenAI client against a listening server. The checkpoint's folder is named after a
// hub model, so that the hub names are the served model's too.
const root = mkdtempSync(join(tmpdir(), 'steerd-openai-'));
const model = join(root, 'gpt2');
writeTinyCheckpoint(model, { layers: 4, embd: 64, heads: 4, ctx: 128, seed: 12, initScale: 10 });
const h = await harness(model);
t.teardown(async () => {
  await h.close();
  rmSync(root, { recursive: true, force: true });
});
await h.app.listen({ host: '127.0.0.1', port: 0 });
const url = `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`;
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
const ref = loadReference(model);
const encode = (s: string) => h.svc.engine.tokenizer.encode(s);

type Logprobs = NonNullable<Completion['choices'][number]['logprobs']>;
type Choice = { text: string; index: number; logprobs: Logprobs | null; finish_reason: string | null };
interface GenToken {
  id: number;
  text: string;
  logprob: number;
  top_logprobs?: { id: number; text: string; logprob: number }[];
}
type Receipt = { runs: { seed: number; prompt: number[]; output: number[] }[] };
/** What the tests read of steerd's own responses. */
interface Body {
  text: string;
  choices: Choice[];
  receipt: Receipt;
  tokens: GenToken[];
  identical: boolean;
  error: { code: string; message: string };
}

const postJson = async (path: string, body: unknown) => {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Body };
};

const complete = (p: Partial<CompletionCreateParamsNonStreaming>) =>
  client.completions.create({ model: 'gpt2', prompt: 'Hello world', max_tokens: 6, ...p });

/** The chunks of a stream, and each choice put back together from its chunks. */
async function streamed(t: Test, p: Partial<CompletionCreateParamsNonStreaming>) {
  const stream = await client.completions.create({
    model: 'gpt2',
    prompt: 'Hello world',
    max_tokens: 6,
    ...p,
    stream: true,
  });
  const chunks: (Completion & { usage?: unknown; receipt?: Receipt })[] = [];
  for await (const c of stream) chunks.push(c);
  const choices = new Map<number, Choice>();
  for (const c of chunks) {
    for (const ch of c.choices) {
      const got = choices.get(ch.index) ?? { text: '', index: ch.index, logprobs: null, finish_reason: null };
      got.text += ch.text;
      if (ch.logprobs) {
        got.logprobs ??= { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
        const l = got.logprobs;
        l.tokens!.push(...ch.logprobs.tokens!);
        l.token_logprobs!.push(...ch.logprobs.token_logprobs!);
        l.top_logprobs!.push(...ch.logprobs.top_logprobs!);
        l.text_offset!.push(...ch.logprobs.text_offset!);
      }
      if (ch.finish_reason) {
        t.equal(got.finish_reason, null, `choice ${ch.index}: one chunk has the finish reason`);
        got.finish_reason = ch.finish_reason;
      }
      choices.set(ch.index, got);
    }
  }
  return { chunks, choices: [...choices.values()].sort((a, b) => a.index - b.index) };
}

/** A choice's logprobs against /v1/generate's tokens: the same values, the same tokens. */
function sameAsGenerate(t: Test, l: Logprobs, tokens: GenToken[], k: number) {
  t.equal(l.tokens!.length, tokens.length, 'one entry per generated token');
  t.same(
    l.token_logprobs,
    tokens.map((x) => x.logprob),
    "token logprobs are /v1/generate's",
  );
  for (const [i, x] of tokens.entries()) {
    if (!x.text.includes('\uFFFD')) t.equal(l.tokens![i], x.text);
    else t.match(l.tokens![i], /^bytes:.*\\x[89a-f][0-9a-f]/, 'part of a character: its bytes');
    const top = l.top_logprobs![i]!;
    t.equal(Object.keys(top).length, k, `token ${i}: ${k} alternatives`);
    t.same(
      Object.values(top),
      (x.top_logprobs ?? []).map((y) => y.logprob),
      `token ${i}: the alternatives' logprobs, most likely first`,
    );
    for (const y of x.top_logprobs ?? []) if (!y.text.includes('\uFFFD')) t.equal(top[y.text], y.logprob);
  }
}

/** Offsets that point at each token's text in `text` (from `from` on). */
function offsetsMatch(t: Test, text: string, l: Logprobs, from = 0) {
  let last = -1;
  for (let i = from; i < l.tokens!.length; i++) {
    const tok = l.tokens![i];
    const at = l.text_offset![i];
    t.ok(at >= last, 'offsets do not go back');
    last = at;
    if (!tok.startsWith('bytes:')) t.equal(text.slice(at, at + tok.length), tok, `token ${i} at ${at}`);
  }
}

t.test('logprobs 0 and 5, as /v1/generate with top_logprobs; streamed the same', async (t) => {
  for (const k of [5, 0]) {
    const c = await complete({ logprobs: k, seed: 11 });
    const g = await postJson('/v1/generate', { prompt: 'Hello world', max_new_tokens: 6, seed: 11, top_logprobs: k });
    t.equal(g.status, 200);
    const tokens = g.body.tokens as GenToken[];
    if (k) {
      t.equal(tokens[0].top_logprobs!.length, 5, '/v1/generate: top_logprobs per token');
      t.match(tokens[0].top_logprobs![0], { id: Number, text: String, logprob: Number });
    } else t.notOk('top_logprobs' in tokens[0], '/v1/generate: none with top_logprobs 0');
    const [choice] = c.choices;
    t.equal(choice.text, g.body.text, 'the same text');
    t.equal(choice.index, 0);
    sameAsGenerate(t, choice.logprobs!, tokens, k);
    t.same(choice.logprobs!.text_offset![0], 0);
    offsetsMatch(t, choice.text, choice.logprobs!);
    if (!choice.logprobs!.tokens!.some((x) => x.startsWith('bytes:')))
      t.equal(choice.logprobs!.tokens!.join(''), choice.text, 'the tokens make the text');

    const s = await streamed(t, { logprobs: k, seed: 11 });
    t.equal(s.choices.length, 1);
    t.same(s.choices[0], { ...choice, finish_reason: choice.finish_reason }, 'the stream adds up to the answer');
    t.equal(s.chunks.at(-1)!.choices[0].finish_reason, choice.finish_reason);
    t.same(s.chunks.at(-1)!.usage, c.usage, 'the last chunk has the usage');
  }
  const plain = await complete({ seed: 11 });
  t.equal(plain.choices[0].logprobs, null, 'no logprobs unless asked');
});

t.test('n: choice i samples with seed + i; the receipt has a run per choice', async (t) => {
  const c = await complete({ n: 3, seed: 40, logprobs: 2, max_tokens: 5 });
  t.same(
    c.choices.map((x) => x.index),
    [0, 1, 2],
  );
  for (const [i, x] of c.choices.entries()) {
    const one = await complete({ seed: 40 + i, logprobs: 2, max_tokens: 5 });
    sameRun(t, { ...x, index: 0 }, one.choices[0], `choice ${i} = a single request with seed ${40 + i}`);
  }
  const prompt = c.usage!.prompt_tokens;
  t.equal(prompt, 2, 'the prompt counts once');
  t.equal(c.usage!.completion_tokens, 15, 'every choice counts');
  t.equal(c.usage!.total_tokens, 17);
  const rec = (c as unknown as { receipt: Receipt }).receipt;
  t.same(
    rec.runs.map((r) => r.seed),
    [40, 41, 42],
    'one run per choice, in order',
  );
  const replay = await postJson('/v1/replay', { receipt: rec });
  t.equal(replay.status, 200);
  t.equal(replay.body.identical, true, 'the receipt replays');

  // without a seed: one is drawn, and the choices use it + i
  const drawn = (await complete({ n: 2 })) as unknown as { receipt: Receipt };
  t.equal(drawn.receipt.runs[1].seed, drawn.receipt.runs[0].seed + 1);
});

t.test('prompt arrays: choice index = prompt index × n + i', async (t) => {
  const prompts = ['Hello world', 'The cat sat on'];
  const c = await complete({ prompt: prompts, n: 2, seed: 3, max_tokens: 4 });
  t.equal(c.choices.length, 4);
  for (const [j, x] of c.choices.entries()) {
    t.equal(x.index, j);
    const one = await complete({ prompt: prompts[Math.floor(j / 2)], seed: 3 + (j % 2), max_tokens: 4 });
    t.equal(x.text, one.choices[0].text, `choice ${j}: prompt ${Math.floor(j / 2)}, seed ${3 + (j % 2)}`);
  }
  t.equal(c.usage!.prompt_tokens, 2 + 4, 'each prompt counts once');
  t.equal(c.usage!.completion_tokens, 16);
  const runs = (c as unknown as { receipt: Receipt }).receipt.runs;
  t.same(
    runs.map((r) => r.seed),
    [3, 4, 3, 4],
  );
});

t.test('echo: the prompt first, scored as the prefix predicts it', async (t) => {
  const prompt = 'The cat sat on the mat and';
  const body = { prompt, max_tokens: 4, temperature: 0, logprobs: 5 } as const;
  const plain = await complete(body);
  const c = await complete({ ...body, echo: true });
  const [x] = c.choices;
  t.ok(x.text.startsWith(prompt), 'the text starts with the prompt');
  t.equal(x.text, prompt + plain.choices[0].text, 'then the same completion');
  const l = x.logprobs!;
  const P = c.usage!.prompt_tokens;
  t.equal(l.tokens!.length, P + 4);
  t.equal(l.token_logprobs![0], null, 'the first prompt token has no logprob');
  t.equal(l.top_logprobs![0], null);
  t.equal(l.tokens!.slice(0, P).join(''), prompt, 'the prompt tokens');
  offsetsMatch(t, x.text, l);
  t.same(l.token_logprobs!.slice(P), plain.choices[0].logprobs!.token_logprobs, "the completion's logprobs");
  t.same(l.top_logprobs!.slice(P), plain.choices[0].logprobs!.top_logprobs);
  t.same(
    l.text_offset!.slice(P),
    plain.choices[0].logprobs!.text_offset!.map((o) => o + prompt.length),
    'offsets count the prompt',
  );
  // the prompt token at k: what the completion of the prompt's first k tokens gives its first token
  // (prompt positions are normalised in float64, generated ones by the graph in float32: 1e-5 apart)
  for (let k = 1; k < P; k++) {
    const prefix = prompt.slice(0, l.text_offset![k]);
    const next = (await complete({ prompt: prefix, max_tokens: 1, temperature: 0, logprobs: 5 })).choices[0].logprobs!;
    const want = next.top_logprobs![0]!;
    const got = l.top_logprobs![k]!;
    t.same(Object.keys(got), Object.keys(want), `prompt token ${k}: the same alternatives`);
    for (const key of Object.keys(want))
      t.ok(Math.abs(got[key] - want[key]) < 1e-4, `${key}: ${got[key]} ≈ ${want[key]}`);
    if (want[l.tokens![k]] !== undefined)
      t.ok(Math.abs(l.token_logprobs![k]! - want[l.tokens![k]]) < 1e-4, `prompt token ${k}: its logprob`);
  }

  // characters split between tokens: their bytes, and offsets at the character
  const uni = 'café ’ 😀 日本語 x';
  const u = (await complete({ prompt: uni, echo: true, logprobs: 0, max_tokens: 1, seed: 1 })).choices[0];
  const ul = u.logprobs!;
  offsetsMatch(t, u.text, ul);
  const at = (tok: string) => ul.text_offset![ul.tokens!.indexOf(tok)];
  t.equal(at('bytes: \\xe2\\x80'), uni.indexOf(' ’'), 'a space and the start of ’: at the space');
  t.equal(at('bytes:\\x99'), uni.indexOf('’'), 'the rest of ’: at ’');
  t.equal(at('bytes:\\x80'), uni.indexOf('😀'), 'the rest of 😀: at 😀');
  t.equal(at(' x'), uni.indexOf(' x'));
  t.same(ul.top_logprobs!.slice(1), Array(ul.tokens!.length - 1).fill({}), 'logprobs 0: no alternatives');

  const text = await complete({ ...body, logprobs: undefined, echo: true });
  t.equal(text.choices[0].text, x.text, 'echo without logprobs');
  t.equal(text.choices[0].logprobs, null);

  const s = await streamed(t, { ...body, echo: true, n: 2 });
  const n2 = await complete({ ...body, echo: true, n: 2 });
  t.same(s.choices, n2.choices, 'streamed: the same, the prompt in the first chunk');
  t.equal(s.chunks[0].choices[0].text, prompt);
});

t.test('streaming with n > 1: chunks of the choices interleave, each with its index', async (t) => {
  const s = await streamed(t, { n: 3, seed: 8, max_tokens: 10, logprobs: 1 });
  const c = await complete({ n: 3, seed: 8, max_tokens: 10, logprobs: 1 });
  t.same(s.choices, c.choices, 'each choice adds up to the answer');
  const order = s.chunks.flatMap((x) => x.choices.map((ch) => ch.index));
  const firstOf = (i: number) => order.indexOf(i);
  const lastOf = (i: number) => order.lastIndexOf(i);
  t.ok(firstOf(1) < lastOf(0) && firstOf(2) < lastOf(1), `interleaved: ${order.join(' ')}`);
  const end = s.chunks.at(-1)!;
  t.same(end.usage, c.usage, 'the last chunk has the usage of all choices');
  t.equal(end.receipt!.runs.length, 3, 'and the receipt');

  // a client that goes away cancels every choice
  const cancelled = async () => {
    const m = await (await fetch(`${url}/metrics`)).text();
    return Number(/steerd:request_success_total\{finished_reason="cancelled"\} (\d+)/.exec(m)?.[1] ?? 0);
  };
  const before = await cancelled();
  const gone = await client.completions.create({ model: 'gpt2', prompt: 'Hello', n: 3, max_tokens: 120, stream: true });
  let got = 0;
  for await (const _ of gone) if (++got === 4) gone.controller.abort();
  for (const t0 = Date.now(); (h.svc.inFlight > 0 || (await cancelled()) < before + 3) && Date.now() - t0 < 10_000; )
    await new Promise((r) => setTimeout(r, 20));
  t.equal((await cancelled()) - before, 3, 'all three cancelled');
  t.equal(h.svc.inFlight, 0, 'their slots freed');
});

/**
 * lm-evaluation-harness's requests: a batch of context + continuation ids, each continuation's
 * logprob and greedy flag read as the harness reads them, against the float64 reference. One
 * continuation is the reference's own greedy one (greedy: true), the others are not.
 */
export async function harnessLoglikelihood(
  t: Test,
  modelName: string,
  ivs: Parameters<typeof referenceGreedy>[3] = [],
) {
  const contexts = ['The cat sat on the', 'Hello', 'One two three four five six'];
  const ctx = contexts.map(encode);
  const greedy = referenceGreedy(ref, ctx[0], 3, ivs).ids;
  const conts = [greedy, encode(' world, and more'), encode(' seven')];
  const prompts = ctx.map((c, i) => [...c, ...conts[i]]);
  const ctxlens = ctx.map((c) => c.length);
  const want = prompts.map((p, i) => referenceLoglikelihood(ref, p, ctxlens[i], ivs));
  t.ok(want[0].greedy && !want[1].greedy, 'the reference: the first continuation is greedy, the second not');
  for (const maxTokens of [1, 0] as const) {
    const r = await postJson('/v1/completions', loglikelihoodBody(modelName, prompts, maxTokens));
    t.equal(r.status, 200, `max_tokens ${maxTokens}`);
    t.same(
      r.body.choices.map((c) => c.index),
      [0, 1, 2],
      'one choice per prompt, in order',
    );
    t.equal(r.body.receipt.runs.length, prompts.length, 'one run per prompt (no second scoring pass)');
    const got = readLoglikelihood(r.body.choices, ctxlens, maxTokens);
    for (const [i, g] of got.entries()) {
      t.equal(g.count, conts[i].length, `prompt ${i}: the continuation's tokens`);
      t.ok(
        Math.abs(g.sum - want[i].sum) < 1e-3,
        `prompt ${i}: logprob ${g.sum} ≈ ${want[i].sum} (max_tokens ${maxTokens})`,
      );
      t.equal(g.greedy, want[i].greedy, `prompt ${i}: is-greedy ${want[i].greedy}`);
    }
  }
}

t.test('lm-evaluation-harness: loglikelihood requests (token ids, echo, max_tokens 1 and 0)', async (t) => {
  // the batch's runs are submitted together (concurrent rows of the engine's batches), not in turn
  const engine = h.svc.engine;
  const generate = engine.generate;
  let live = 0;
  let peak = 0;
  engine.generate = (req, opts) => {
    peak = Math.max(peak, ++live);
    const events = generate.call(engine, req, opts);
    return (async function* () {
      try {
        yield* events;
      } finally {
        live--;
      }
    })();
  };
  t.teardown(() => {
    engine.generate = generate;
  });
  await harnessLoglikelihood(t, 'gpt2');
  t.equal(peak, 3, "the batch's three prompts ran as concurrent rows");
});

t.test(
  'lm-evaluation-harness: a continuation after which <|endoftext|> is the greedy token is read whole',
  async (t) => {
    // steering toward <|endoftext|>'s embedding before ln_f makes it the greedy next token (the reference says so)
    const H = h.svc.engine.info.n_embd;
    const eos = h.svc.engine.info.eos_token_id;
    const wte = ref.w.get('wte.weight')!;
    const values = Array.from(wte.subarray(eos * H, (eos + 1) * H));
    const ivs: Intervention[] = [{ values: Float32Array.from(values), rows: 1, layer: ref.nLayer, coeff: 30 }];
    const interventions = [{ vector: { values }, layer: ref.nLayer, coeff: 30 }];
    const ctx = ['The cat sat on the', 'Hello'].map(encode);
    const conts = [encode(' mat'), encode(' world, and more')];
    const prompts = ctx.map((c, i) => [...c, ...conts[i]]);
    const ctxlens = ctx.map((c) => c.length);
    for (const p of prompts) t.equal(referenceGreedy(ref, p, 1, ivs).ids[0], eos, 'the reference: <|endoftext|> next');
    const want = prompts.map((p, i) => referenceLoglikelihood(ref, p, ctxlens[i], ivs));
    const r = await postJson('/v1/completions', { ...loglikelihoodBody('gpt2', prompts, 1), interventions });
    t.equal(r.status, 200, JSON.stringify(r.body));
    for (const [i, g] of readLoglikelihood(r.body.choices, ctxlens, 1).entries()) {
      t.equal(g.count, conts[i].length, `prompt ${i}: every continuation token`);
      t.ok(Math.abs(g.sum - want[i].sum) < 1e-3, `prompt ${i}: logprob ${g.sum} ≈ ${want[i].sum}`);
    }
    // as OpenAI reports it: the end-of-text token last in the logprobs, not in the text; finish_reason stop
    const c = r.body.choices[0];
    t.equal(c.logprobs!.tokens!.at(-1), '<|endoftext|>');
    t.equal(c.logprobs!.tokens!.length, prompts[0].length + 1);
    t.equal(c.text, h.svc.engine.tokenizer.decode(prompts[0]), 'the text: the prompt alone');
    t.equal(c.finish_reason, 'stop');
    // steerd's own field beside OpenAI's (a variable: the client's type has no interventions)
    const params = { model: 'gpt2', prompt: prompts[0], max_tokens: 3, temperature: 0, logprobs: 1, interventions };
    const stream = await client.completions.create({ ...params, stream: true });
    const chunks: { logprobs: Logprobs | null; finish_reason: string | null }[] = [];
    for await (const x of stream) chunks.push(...(x.choices as typeof chunks));
    t.same(
      chunks.flatMap((x) => x.logprobs?.tokens ?? []),
      ['<|endoftext|>'],
      'streamed: in the last chunk',
    );
    t.equal(chunks.at(-1)!.finish_reason, 'stop');
    // /v1/generate as before: no token, finish_reason eos
    t.same(encode('The cat sat on the mat'), prompts[0]);
    const g = await postJson('/v1/generate', {
      prompt: 'The cat sat on the mat',
      max_new_tokens: 3,
      temperature: 0,
      interventions,
    });
    t.same(g.body.tokens, [], '/v1/generate: no token');
    t.equal((g.body as unknown as { finish_reason: string }).finish_reason, 'eos');
  },
);

t.test('max_tokens 0: a prompt that fills the context is scored; max_tokens 1 needs one position more', async (t) => {
  const ctx = h.svc.engine.info.n_positions;
  const words = encode(' the cat sat on a mat and looked at the dog, which ran'.repeat(20));
  const prompt = words.slice(0, ctx);
  t.equal(prompt.length, ctx, 'exactly n_positions tokens');
  const ctxlen = ctx - 10;
  const want = referenceLoglikelihood(ref, prompt, ctxlen);
  const r = await postJson('/v1/completions', loglikelihoodBody('gpt2', [prompt], 0));
  t.equal(r.status, 200, JSON.stringify(r.body).slice(0, 300));
  const [got] = readLoglikelihood(r.body.choices, [ctxlen], 0);
  t.equal(got.count, 10, 'the last ten tokens');
  t.ok(Math.abs(got.sum - want.sum) < 1e-3, `logprob ${got.sum} ≈ ${want.sum}`);
  t.equal(r.body.receipt.runs[0].output.length, 0, 'nothing generated');
  t.equal((await postJson('/v1/replay', { receipt: r.body.receipt })).body.identical, true, 'and it replays');
  const one = await postJson('/v1/completions', loglikelihoodBody('gpt2', [prompt], 1));
  t.equal(one.status, 422);
  t.match(
    one.body.error.message,
    new RegExp(`prompt \\(${ctx} tokens\\) \\+ max_new_tokens \\(1\\) exceeds the context \\(${ctx}\\)`),
  );
});

t.test('lm-evaluation-harness: generation requests (token ids, stop, seed)', async (t) => {
  const prompts = ['The cat sat on the', 'Hello world'].map(encode);
  const greedy = prompts.map((p) => referenceGreedy(ref, p, 6).ids);
  const texts = greedy.map((g) => h.svc.engine.tokenizer.decode(g));
  // a stop string: the text of the first prompt's fourth greedy token (cut before it)
  const stop = h.svc.engine.tokenizer.decode([greedy[0][3]]);
  const r = await postJson('/v1/completions', generationBody('gpt2', prompts, 6, [stop]));
  t.equal(r.status, 200);
  const got = [...r.body.choices].sort((a, b) => a.index - b.index).map((c) => c.text);
  t.equal(got[0], texts[0].slice(0, texts[0].indexOf(stop)), "cut before the stop string: the reference's greedy text");
  t.equal(got[1], texts[1].includes(stop) ? texts[1].slice(0, texts[1].indexOf(stop)) : texts[1]);
});

t.test('token-id prompts: ids checked against the vocabulary; echo decodes them; index across n', async (t) => {
  const V = h.svc.engine.info.vocab_size;
  const bad = async (prompt: unknown, where: string) => {
    const r = await postJson('/v1/completions', { prompt, max_tokens: 1 });
    t.equal(r.status, 400, JSON.stringify(prompt));
    t.match(r.body.error.message, where);
  };
  await bad(
    [
      [1, 2],
      [3, V],
    ],
    'body/prompt/1/1',
  );
  await bad([5, -1], 'body/prompt/1');
  await bad([[1], []], 'body/prompt');
  await bad([1, 'a'], 'body/prompt');
  t.equal(h.svc.inFlight, 0, 'nothing ran');

  const ids = encode('The cat sat on the mat');
  const text = await complete({ prompt: 'The cat sat on the mat', echo: true, logprobs: 2, max_tokens: 3, seed: 5 });
  const one = await complete({ prompt: ids, echo: true, logprobs: 2, max_tokens: 3, seed: 5 });
  t.same(one.choices, text.choices, 'a list of ids: the same as its text');
  offsetsMatch(t, one.choices[0].text, one.choices[0].logprobs!);
  const many = await complete({ prompt: [ids, encode('Hello')], n: 2, max_tokens: 2, seed: 5 });
  t.same(
    many.choices.map((c) => c.index),
    [0, 1, 2, 3],
  );
  t.same(many.choices[0], { ...one.choices[0], text: many.choices[0].text, logprobs: null, finish_reason: 'length' });
  t.equal(
    many.choices[0].text,
    text.choices[0].text.slice('The cat sat on the mat'.length, undefined).slice(0, many.choices[0].text.length),
  );
  // max_tokens 0: the prompt alone, nothing generated
  const zero = await complete({ prompt: [ids], echo: true, max_tokens: 0, n: 2 });
  t.same(
    zero.choices.map((c) => [c.index, c.text, c.finish_reason]),
    [
      [0, 'The cat sat on the mat', 'length'],
      [1, 'The cat sat on the mat', 'length'],
    ],
  );
  t.equal(zero.usage!.completion_tokens, 0);
  const zeroReceipt = (zero as unknown as { receipt: Receipt }).receipt;
  t.equal(zeroReceipt.runs.length, 1, 'one run for the prompt, whatever n');
  t.equal((await postJson('/v1/replay', { receipt: zeroReceipt })).body.identical, true, 'and it replays');
  const plain = await complete({ prompt: ids, max_tokens: 0, logprobs: 1 });
  t.same(plain.choices[0].logprobs, { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] });
  t.equal(plain.choices[0].text, '');
  const s = await streamed(t, { prompt: [ids], echo: true, logprobs: 1, max_tokens: 0 });
  const ns = await complete({ prompt: [ids], echo: true, logprobs: 1, max_tokens: 0 });
  t.same(s.choices, ns.choices, 'max_tokens 0 streamed: the same');
});

t.test('presets: a named steering configuration served as a model id', async (t) => {
  const H = h.svc.engine.info.n_embd;
  const a = Array.from({ length: H }, (_, i) => Math.sin(0.7 * i + 1));
  const b = Array.from({ length: H }, (_, i) => Math.cos(1.3 * i));
  const reg = await postJson('/v1/vectors', { name: 'calm-dir', values: a });
  t.equal(reg.status, 201);
  const body = {
    name: 'calm',
    description: 'two additions',
    interventions: [
      { vector: 'calm-dir', layer: 1, coeff: 4 },
      { vector: { values: b }, layer: 2, site: 'resid_mid', coeff: -3 },
    ],
  };
  // the same steering, written for the reference
  const ivs: Intervention[] = [
    { values: Float32Array.from(a), rows: 1, layer: 1, coeff: 4 },
    { values: Float32Array.from(b), rows: 1, layer: 2, site: 'resid_mid', coeff: -3 },
  ];
  const made = await postJson('/v1/presets', body);
  t.equal(made.status, 201, JSON.stringify(made.body));
  t.match(made.body, { name: 'calm', parent: 'gpt2', description: 'two additions' });

  // any OpenAI client: the preset is listed as a model and completes as one
  const models = await client.models.list();
  t.same(
    models.data.map((m) => [m.id, m.object, m.owned_by, (m as unknown as { parent: string | null }).parent]),
    [
      ['gpt2', 'model', 'steerd', null],
      ['calm', 'model', 'steerd', 'gpt2'],
    ],
  );
  const prompt = encode('The cat sat on the');
  const want = referenceGreedy(ref, prompt, 4, ivs).ids;
  const c = await client.completions.create({ model: 'calm', prompt, max_tokens: 4, temperature: 0 });
  t.equal(c.model, 'calm');
  t.equal(
    c.choices[0].text,
    h.svc.engine.tokenizer.decode(want),
    "the reference's greedy text with the preset's steering",
  );
  t.not(c.choices[0].text, h.svc.engine.tokenizer.decode(referenceGreedy(ref, prompt, 4).ids), 'not the base model’s');

  // the harness's loglikelihood requests against the preset
  await harnessLoglikelihood(t, 'calm', ivs);

  // /v1/generate: the preset's interventions first, then the request's; the receipt names the preset
  const extra = { vector: { values: a }, layer: 3, coeff: 1.5 };
  const g = await postJson('/v1/generate', {
    model: 'calm',
    prompt: 'Hello world',
    max_new_tokens: 5,
    seed: 9,
    interventions: [extra],
  });
  const inline = await postJson('/v1/generate', {
    prompt: 'Hello world',
    max_new_tokens: 5,
    seed: 9,
    interventions: [{ ...body.interventions[0], vector: { values: a } }, body.interventions[1], extra],
  });
  t.equal(g.status, 200);
  t.same(
    g.body.tokens.map((x) => x.id),
    inline.body.tokens.map((x) => x.id),
    'the same tokens as the three interventions sent inline',
  );
  const gr = g.body.receipt as Receipt & { preset?: string; runs: { interventions: { hash: string }[] }[] };
  t.equal(gr.preset, 'calm');
  t.same(
    gr.runs[0].interventions.map((x) => x.hash),
    (inline.body.receipt as typeof gr).runs[0].interventions.map((x) => x.hash),
    'the interventions by hash',
  );

  // /v1/sweep: every cell and the baseline run the preset
  const sw = await postJson('/v1/sweep', {
    model: 'calm',
    prompt: 'Hello world',
    vector: 'calm-dir',
    layers: [3],
    coeffs: [0, 1.5],
    max_new_tokens: 5,
    seed: 9,
    telemetry: false,
  });
  t.equal(sw.status, 200);
  const cells = (sw.body as unknown as { cells: { tokens: GenToken[] }[]; baseline: { tokens: GenToken[] } }).cells;
  const base = await postJson('/v1/generate', { model: 'calm', prompt: 'Hello world', max_new_tokens: 5, seed: 9 });
  t.same(
    (sw.body as unknown as { baseline: { tokens: GenToken[] } }).baseline.tokens.map((x) => x.id),
    base.body.tokens.map((x) => x.id),
    "the sweep's baseline: the preset alone",
  );
  t.same(
    cells[1].tokens.map((x) => x.id),
    g.body.tokens.map((x) => x.id),
    'a cell: the preset and the swept intervention',
  );

  // pinned: deleting the vector it was made from changes nothing; replacing or deleting the preset
  // leaves its receipts replayable
  t.equal((await fetch(`${url}/v1/vectors/calm-dir`, { method: 'DELETE' })).status, 204);
  const again = await client.completions.create({ model: 'calm', prompt, max_tokens: 4, temperature: 0 });
  t.equal(again.choices[0].text, c.choices[0].text, 'the vector deleted: the preset steers the same');
  const put = await fetch(`${url}/v1/presets/calm`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ interventions: [{ vector: { values: b }, layer: 0, coeff: 9 }] }),
  });
  t.equal(put.status, 200);
  const replaced = await postJson('/v1/generate', { model: 'calm', prompt: 'Hello world', max_new_tokens: 5, seed: 9 });
  t.notSame(
    replaced.body.tokens.map((x) => x.id),
    base.body.tokens.map((x) => x.id),
    'replaced: it steers otherwise',
  );
  t.equal((await fetch(`${url}/v1/presets/calm`, { method: 'DELETE' })).status, 204);
  for (const rec of [gr, (c as unknown as { receipt: Receipt }).receipt, sw.body.receipt]) {
    const r = await postJson('/v1/replay', { receipt: rec });
    t.equal(r.status, 200);
    t.equal(r.body.identical, true, 'a receipt of the old preset replays');
  }
  const gone = await client.completions.create({ model: 'calm', prompt, max_tokens: 1 }).catch((e) => e);
  t.ok(gone instanceof NotFoundError, 'deleted: no such model');
  t.equal(gone.code, 'model_not_found');
});

t.test('presets: a bad body or a missing vector leaves nothing stored', async (t) => {
  const H = h.svc.engine.info.n_embd;
  const v = Array.from({ length: H }, (_, i) => (i % 3) - 1);
  t.equal((await postJson('/v1/vectors', { name: 'kept', values: v })).status, 201);
  t.teardown(() => fetch(`${url}/v1/vectors/kept`, { method: 'DELETE' }).then(() => undefined));
  const refused = async (body: Record<string, unknown>, status: number, message: RegExp | string) => {
    const r = await postJson('/v1/presets', { name: 'bad', ...body });
    t.equal(r.status, status, JSON.stringify(body).slice(0, 120));
    t.match(r.body.error.message, message);
  };
  const ok = { vector: 'kept', layer: 1, coeff: 2 };
  await refused(
    { interventions: [ok, { vector: 'absent', layer: 1, coeff: 1 }] },
    422,
    'interventions[1].vector: no vector named "absent"',
  );
  await refused(
    { interventions: [ok, { vector: 'kept', layer: 9, coeff: 1 }] },
    422,
    /interventions\[1\]\.layer 9 is out of range/,
  );
  await refused(
    { interventions: [{ vector: { values: [1, 2] }, layer: 1, coeff: 1 }] },
    422,
    /interventions\[0\].*hidden size/,
  );
  await refused(
    { interventions: [{ vector: { hash: 'f'.repeat(64) }, layer: 1, coeff: 1 }] },
    422,
    /interventions\[0\]\.vector: no values/,
  );
  await refused(
    { interventions: [{ vector: 'kept', layer: 1, op: 'ablate', positions: 'front' }] },
    422,
    /interventions\[0\]: ablate/,
  );
  await refused({ interventions: [] }, 400, 'body/interventions');
  await refused({ interventions: [ok], colour: 'red' }, 400, 'body');
  await refused({ interventions: [{ ...ok, coeff: 'x' }] }, 400, 'body/interventions/0');
  t.same((await (await fetch(`${url}/v1/presets`)).json()).data, [], 'nothing stored');
  t.equal((await fetch(`${url}/v1/presets/bad`)).status, 404);

  const base = await postJson('/v1/presets', { name: 'gpt2', interventions: [ok] });
  t.equal(base.status, 409, "the base model's name");
  t.equal((await postJson('/v1/presets', { name: 'once', interventions: [ok] })).status, 201);
  const twice = await postJson('/v1/presets', { name: 'once', interventions: [ok] });
  t.equal(twice.status, 409);
  t.match(twice.body.error.message, /PUT \/v1\/presets\/once/);
  // by content hash: the vector's hash names the same values
  const hash = ((await (await fetch(`${url}/v1/vectors/kept`)).json()) as { hash: string }).hash;
  const byHash = await postJson('/v1/presets', { name: 'by-hash', interventions: [{ ...ok, vector: { hash } }] });
  t.equal(byHash.status, 201);
  t.equal((byHash.body as unknown as { interventions: { hash: string }[] }).interventions[0].hash, hash);
  for (const n of ['once', 'by-hash'])
    t.equal((await fetch(`${url}/v1/presets/${n}`, { method: 'DELETE' })).status, 204);
  t.equal((await fetch(`${url}/v1/presets/once`, { method: 'DELETE' })).status, 404);
});

t.test('model names, chat', async (t) => {
  for (const name of ['gpt2', 'openai-community/gpt2', h.svc.model.id]) {
    const c = await complete({ model: name, max_tokens: 1 });
    t.equal(c.model, 'gpt2', `${name} is served`);
  }
  const models = await client.models.list();
  t.same(
    models.data.map((m) => m.id),
    ['gpt2'],
  );
  const unknown = await complete({ model: 'gpt-3.5-turbo-instruct' }).catch((e) => e);
  t.ok(unknown instanceof NotFoundError, 'NotFoundError');
  t.equal(unknown.status, 404);
  t.equal(unknown.code, 'model_not_found');
  t.match(unknown.message, /gpt-3\.5-turbo-instruct.*gpt2/);

  const chat = await client.chat.completions
    .create({ model: 'gpt2', messages: [{ role: 'user', content: 'hi' }] })
    .catch((e) => e);
  t.ok(chat instanceof BadRequestError, 'BadRequestError');
  t.equal(chat.status, 400);
  t.equal(chat.code, 'unsupported');
  t.match(chat.message, /gpt2 has no chat template.*\/v1\/completions/);
  const generate = await postJson('/v1/generate', { messages: [{ role: 'user', content: 'hi' }], max_new_tokens: 1 });
  t.equal(generate.status, 400, '/v1/generate with messages: 400');
  t.match(generate.body.error, { code: 'unsupported', message: /^messages: gpt2 has no chat template/ });
});

t.test('bad values: 400 or 422, naming the limit', async (t) => {
  const bad = async (p: Record<string, unknown>, status: number, message: RegExp) => {
    const r = await postJson('/v1/completions', { prompt: 'x', max_tokens: 1, ...p });
    t.equal(r.status, status, JSON.stringify(p));
    t.match(r.body.error.message, message);
  };
  await bad({ logprobs: 6 }, 400, /logprobs must be <= 5/);
  await bad({ logprobs: -1 }, 400, /logprobs must be >= 0/);
  await bad({ n: 0 }, 400, /n must be >= 1/);
  await bad({ n: 9 }, 422, /n \(9\).*\(8, STEERD_MAX_N\)/);
  await bad({ best_of: 2 }, 400, /best_of/);
  await bad({ echo: 'yes' }, 400, /echo/);
  await bad({ prompt: [] }, 400, /prompt/);
  const g = await postJson('/v1/generate', { prompt: 'x', max_new_tokens: 1, top_logprobs: 21 });
  t.equal(g.status, 400);
  t.match(g.body.error.message, /top_logprobs must be <= 20/);

  const tooMany = await complete({ n: 9 }).catch((e) => e);
  t.ok(tooMany instanceof UnprocessableEntityError, 'the client: UnprocessableEntityError');
  t.equal((await complete({ best_of: 1, n: null, logprobs: null, echo: null })).choices.length, 1, 'defaults');

  // every choice counts against the queue: 6 where 5 are free is "full now" (429); 6 where the
  // queue holds 5 at most can never be admitted (422)
  const limits = h.svc.config.limits;
  const depth = limits.queueDepth;
  limits.queueDepth = 7;
  h.svc.inFlight += 2;
  t.teardown(() => {
    limits.queueDepth = depth;
  });
  const full = await complete({ prompt: ['a', 'b'], n: 3 }).catch((e) => e);
  h.svc.inFlight -= 2;
  t.ok(full instanceof RateLimitError, '2 prompts × n 3 beyond the 5 free places of the queue: 429');
  t.match(full.message, /needs 6/);
  limits.queueDepth = 5;
  const never = await complete({ prompt: ['a', 'b'], n: 3 }).catch((e) => e);
  t.ok(never instanceof UnprocessableEntityError, '2 prompts × n 3 beyond a queue of 5: 422');
  t.match(never.message, /needs 6 generations at once; this server admits at most 5 \(STEERD_QUEUE_DEPTH\)/);
  limits.queueDepth = depth;
});
