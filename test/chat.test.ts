/**
 * Chat: the known templates rendered against conversations written out here from each format's
 * definition; a checkpoint's template as tokenizer_config.json or chat_template.jinja gives it;
 * `/v1/chat/completions` through the official OpenAI client on a tiny Qwen2-type checkpoint with
 * the ChatML template, checked against `/v1/completions` and `/v1/generate` on the rendered prompt
 * (its token ids, encoded here); `/v1/generate` with `messages`; the 400s.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI, { BadRequestError } from 'openai';
import type { ChatCompletion, ChatCompletionCreateParamsNonStreaming } from 'openai/resources/chat/completions';
import t from 'tap';
import { CheckpointError } from '../src/errors.ts';
import { type ChatMessage, ChatTemplate, loadChatTemplate } from '../src/model/chat-template.ts';
import { KNOWN_TEMPLATES, writeChatTemplate } from '../src/model/chat-templates.ts';
import { writeTinyLlamaCheckpoint } from '../src/model/llama/tiny.ts';
import { harness } from './helpers/api.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-chat-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// The service: a tiny Qwen2-type checkpoint (GPT-2's vocabulary: ChatML's markers are plain text).

const model = join(root, 'qwen-tiny');
writeTinyLlamaCheckpoint(model, { modelType: 'qwen2', layers: 2, embd: 64, heads: 4, kvHeads: 2, ctx: 256, seed: 3 });
writeChatTemplate(model, 'chatml', { eos_token: '<|endoftext|>' });
const h = await harness(model);
t.teardown(() => h.close());
await h.app.listen({ host: '127.0.0.1', port: 0 });
const url = `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`;
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
const tok = h.svc.engine.tokenizer;

type Receipt = { runs: { seed: number; prompt: number[]; output: number[]; stop: string[] }[] };
type Chat = ChatCompletion & { receipt: Receipt };
interface Body {
  text: string;
  choices: { text: string; logprobs: { token_logprobs: number[] } | null }[];
  tokens: { id: number; logprob: number; top_logprobs?: { id: number; logprob: number }[] }[];
  receipt: Receipt;
  finish_reason: string;
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

const known = (name: keyof typeof KNOWN_TEMPLATES) =>
  ChatTemplate.parse(KNOWN_TEMPLATES[name].template, name, KNOWN_TEMPLATES[name].tokens);

const sys: ChatMessage = { role: 'system', content: 'You are terse.' };
const u1: ChatMessage = { role: 'user', content: 'Hi there' };
const a1: ChatMessage = { role: 'assistant', content: 'Hello.' };
const u2: ChatMessage = { role: 'user', content: 'Name a colour' };

t.test('ChatML, as Qwen2 writes it', async (t) => {
  const tpl = known('chatml');
  t.equal(
    tpl.render([sys, u1]),
    '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n',
  );
  t.equal(
    tpl.render([u1, a1, u2]),
    '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n' +
      '<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n',
  );
  t.equal(
    tpl.render([sys, u1, a1], { addGenerationPrompt: false }),
    '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n',
  );
  t.equal(tpl.endOfTurn, '<|im_end|>', 'an assistant turn ends at <|im_end|>');
});

t.test("Llama 3's headers", async (t) => {
  const tpl = known('llama3');
  const h = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  t.equal(
    tpl.render([sys, u1]),
    `<|begin_of_text|>${h('system')}You are terse.<|eot_id|>${h('user')}Hi there<|eot_id|>${h('assistant')}`,
  );
  t.equal(
    tpl.render([u1, a1, u2]),
    `<|begin_of_text|>${h('user')}Hi there<|eot_id|>${h('assistant')}Hello.<|eot_id|>${h('user')}Name a colour<|eot_id|>${h('assistant')}`,
  );
  t.equal(
    tpl.render([{ role: 'user', content: '  padded \n' }], { addGenerationPrompt: false }),
    `<|begin_of_text|>${h('user')}padded<|eot_id|>`,
    'content trimmed; no generation prompt',
  );
  t.equal(tpl.endOfTurn, '<|eot_id|>');
});

t.test("Llama 2's [INST]", async (t) => {
  const tpl = known('llama2');
  t.equal(tpl.render([sys, u1]), '<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST]');
  t.equal(tpl.render([u1, a1, u2]), '<s>[INST] Hi there [/INST] Hello. </s><s>[INST] Name a colour [/INST]');
  t.equal(
    tpl.render([sys, u1, a1, u2], { addGenerationPrompt: false }),
    '<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s><s>[INST] Name a colour [/INST]',
    'the system message in the first turn only; no generation prompt in this format',
  );
  t.equal(tpl.endOfTurn, '</s>', 'an answer ends at EOS');
  const refused = (() => {
    try {
      tpl.render([u1, u2]);
    } catch (e) {
      return e;
    }
  })() as { status: number; message: string };
  t.equal(refused.status, 400, 'raise_exception: a 400');
  t.match(refused.message, /^messages: .*roles must alternate user, assistant/);
});

t.test('a checkpoint’s template: tokenizer_config.json or chat_template.jinja', async (t) => {
  const dir = join(root, 'files');
  mkdirSync(dir);
  t.equal(loadChatTemplate(dir), undefined, 'no tokenizer_config.json: none');
  const config = (c: object) => writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(c));
  config({ bos_token: '<s>' });
  t.equal(loadChatTemplate(dir), undefined, 'no chat_template: none');

  const tpl = '{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}';
  config({ bos_token: { content: '<B>', lstrip: false }, eos_token: '<E>', chat_template: tpl });
  t.equal(loadChatTemplate(dir)?.render([u1]), '<B>[user]Hi there<E>', 'special tokens as strings or {content}');
  config({
    eos_token: '<E>',
    chat_template: [
      { name: 'tool_use', template: 'tools' },
      { name: 'default', template: '{{ messages[0].content }}!' },
    ],
  });
  t.equal(loadChatTemplate(dir)?.render([u1]), 'Hi there!', 'a list: the one named default');
  writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages | length }} {{ eos_token }}');
  t.equal(loadChatTemplate(dir)?.render([u1, a1]), '2 <E>', 'chat_template.jinja first');

  writeFileSync(join(dir, 'chat_template.jinja'), '{% for m in messages %}');
  const err = (() => {
    try {
      loadChatTemplate(dir);
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof CheckpointError, 'a template that does not parse: a CheckpointError');
  t.match((err as Error).message, /chat_template\.jinja: the chat template does not parse/);
  rmSync(join(dir, 'chat_template.jinja'));
  config({ chat_template: 7 });
  t.throws(() => loadChatTemplate(dir), /tokenizer_config\.json: chat_template must be a string or a list/);

  // the writer merges with what is there
  config({ model_max_length: 77, eos_token: '<|endoftext|>' });
  writeChatTemplate(dir, 'llama3');
  const written = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
  t.match(written, {
    model_max_length: 77,
    eos_token: '<|endoftext|>',
    bos_token: '<|begin_of_text|>',
    chat_template: KNOWN_TEMPLATES.llama3.template,
  });
});

const messages: ChatMessage[] = [
  { role: 'system', content: 'Answer briefly.' },
  { role: 'user', content: 'What is a cat?' },
];
// written out from ChatML's definition, and encoded here
const rendered =
  '<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is a cat?<|im_end|>\n<|im_start|>assistant\n';
const promptIds = tok.encode(rendered);

const create = async (p: Partial<ChatCompletionCreateParamsNonStreaming> & Record<string, unknown> = {}) =>
  (await client.chat.completions.create({
    model: 'qwen-tiny',
    messages,
    max_tokens: 8,
    ...p,
  } as ChatCompletionCreateParamsNonStreaming)) as Chat;

t.test('chat: the rendered prompt, n choices with seed + i, as /v1/completions gives them', async (t) => {
  const c = await create({ n: 2, seed: 41 });
  t.equal(c.object, 'chat.completion');
  t.equal(c.model, 'qwen-tiny');
  t.equal(c.choices.length, 2);
  t.same(
    c.receipt.runs.map((r) => r.seed),
    [41, 42],
  );
  for (const r of c.receipt.runs) t.same(r.prompt, promptIds, "the prompt is the template's text, encoded");
  t.same(c.receipt.runs[0].stop, ['<|im_end|>'], 'the end of a turn is a stop');
  t.equal(c.usage?.prompt_tokens, promptIds.length);
  t.equal(
    c.usage?.completion_tokens,
    c.receipt.runs.reduce((s, r) => s + r.output.length, 0),
  );
  for (const ch of c.choices) t.equal(ch.message.role, 'assistant');

  const again = await create({ n: 2, seed: 41 });
  t.same(
    again.choices.map((x) => x.message.content),
    c.choices.map((x) => x.message.content),
    'the same seed, the same text',
  );

  // an independent path: the rendered prompt's ids through /v1/completions, same seed and stop
  const legacy = await client.completions.create({
    model: 'qwen-tiny',
    prompt: promptIds,
    max_tokens: 8,
    n: 2,
    seed: 41,
    stop: ['<|im_end|>'],
  });
  const lr = (legacy as unknown as { receipt: Receipt }).receipt;
  t.same(
    c.receipt.runs.map((r) => r.output),
    lr.runs.map((r) => r.output),
    'the same tokens',
  );
  t.same(
    c.choices.map((x) => x.message.content),
    legacy.choices.map((x) => x.text),
    'the same text',
  );
  t.same(
    c.choices.map((x) => x.finish_reason),
    legacy.choices.map((x) => x.finish_reason),
  );
});

t.test('chat: content as text parts, joined by newlines', async (t) => {
  const parts = await create({
    seed: 5,
    messages: [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is' },
          { type: 'text', text: 'a cat?' },
        ],
      },
    ],
  });
  t.same(
    parts.receipt.runs[0].prompt,
    tok.encode('<|im_start|>user\nWhat is\na cat?<|im_end|>\n<|im_start|>assistant\n'),
  );
});

t.test('chat: logprobs and top_logprobs, as /v1/generate gives them for the same messages', async (t) => {
  const c = await create({ seed: 7, logprobs: true, top_logprobs: 3, max_tokens: 6 });
  const g = await postJson('/v1/generate', { messages, max_new_tokens: 6, seed: 7, top_logprobs: 3 });
  t.equal(g.status, 200, JSON.stringify(g.body));
  t.same(g.body.receipt.runs[0].prompt, promptIds, '/v1/generate renders messages the same');
  t.same(g.body.receipt.runs[0].output, c.receipt.runs[0].output, 'the same tokens');
  t.equal(g.body.text, c.choices[0].message.content);
  const content = c.choices[0].logprobs?.content ?? [];
  t.equal(content.length, g.body.tokens.length, 'one entry per generated token');
  for (const [i, e] of content.entries()) {
    const x = g.body.tokens[i];
    t.equal(e.logprob, x.logprob);
    t.same(e.bytes, Array.from(tok.bytes([x.id])), 'its bytes');
    t.equal(e.token, tok.decode([x.id]));
    t.same(
      e.top_logprobs.map((y) => [y.token, y.logprob]),
      (x.top_logprobs ?? []).map((y) => [tok.decode([y.id]), y.logprob]),
      'three alternatives, most likely first',
    );
  }
  const plain = await create({ seed: 7 });
  t.equal(plain.choices[0].logprobs, null, 'none unless asked');
  const none = await create({ seed: 7, logprobs: true, max_tokens: 2 });
  t.same(
    none.choices[0].logprobs?.content?.map((e) => e.top_logprobs.length),
    none.receipt.runs[0].output.map(() => 0),
    'top_logprobs 0 by default',
  );
});

t.test('chat: streamed, the same choices as a whole answer', async (t) => {
  const whole = await create({ n: 2, seed: 11, logprobs: true, top_logprobs: 2 });
  const stream = await client.chat.completions.create({
    model: 'qwen-tiny',
    messages,
    max_tokens: 8,
    n: 2,
    seed: 11,
    logprobs: true,
    top_logprobs: 2,
    stream: true,
    stream_options: { include_usage: true },
  });
  const text = ['', ''];
  const logprobs: number[][] = [[], []];
  const finish: (string | null)[] = [null, null];
  const firsts = new Map<number, unknown>();
  let usage: unknown;
  let receipt: Receipt | undefined;
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    t.equal(c.object, 'chat.completion.chunk');
    if (c.usage) usage = c.usage;
    const r = (c as unknown as { receipt?: Receipt }).receipt;
    if (r) receipt = r;
    for (const ch of c.choices) {
      if (!firsts.has(ch.index)) firsts.set(ch.index, ch.delta);
      text[ch.index] += ch.delta.content ?? '';
      for (const e of ch.logprobs?.content ?? []) logprobs[ch.index].push(e.logprob);
      if (ch.finish_reason) {
        t.equal(finish[ch.index], null, 'one finish per choice');
        finish[ch.index] = ch.finish_reason;
      }
    }
  }
  t.ok(chunks > 4);
  for (const i of [0, 1]) {
    t.same(firsts.get(i), { role: 'assistant', content: '' }, `choice ${i} opens with the role`);
    t.equal(text[i], whole.choices[i].message.content, `choice ${i}: the same text`);
    t.same(
      logprobs[i],
      whole.choices[i].logprobs?.content?.map((e) => e.logprob),
      `choice ${i}: the same logprobs`,
    );
    t.equal(finish[i], whole.choices[i].finish_reason);
  }
  t.same(usage, whole.usage, 'include_usage: the usage');
  t.same(
    receipt?.runs.map((r) => r.output),
    whole.receipt.runs.map((r) => r.output),
    'the receipt',
  );
});

t.test('chat: stop strings, and the end of a turn', async (t) => {
  const free = await create({ seed: 3, temperature: 0, max_tokens: 10 });
  const text = free.choices[0].message.content ?? '';
  const ids = free.receipt.runs[0].output;
  t.ok(ids.length >= 4, 'enough tokens to cut');
  // a stop string: the text of the third token on (one that starts after some text)
  const at = tok.decode(ids.slice(0, 2)).length;
  const mark = text.slice(at, at + 3).trim() || text.slice(at, at + 3);
  const cut = text.indexOf(mark);
  const stopped = await create({ seed: 3, temperature: 0, max_tokens: 10, stop: mark });
  t.equal(stopped.choices[0].message.content, text.slice(0, cut), 'the text up to the stop string');
  t.equal(stopped.choices[0].finish_reason, 'stop');

  // a template whose assistant turns end with that text: it stops there too
  const own = ChatTemplate.parse(
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content }}" +
      `{{ '${mark}' if m.role == 'assistant' else '<|im_end|>' }}{{ '\\n' }}{% endfor %}` +
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    'own',
  );
  t.equal(own.endOfTurn, mark);
  const chatml = h.svc.chatTemplate;
  h.svc.chatTemplate = own;
  t.teardown(() => {
    h.svc.chatTemplate = chatml;
  });
  const ended = await create({ seed: 3, temperature: 0, max_tokens: 10 });
  h.svc.chatTemplate = chatml;
  t.same(ended.receipt.runs[0].prompt, promptIds, 'the same prompt');
  t.same(ended.receipt.runs[0].stop, [mark]);
  t.equal(ended.choices[0].message.content, text.slice(0, cut), 'the end of the turn stops it');
  t.equal(ended.choices[0].finish_reason, 'stop');
});

t.test('chat: interventions steer it; a preset as the model steers it the same', async (t) => {
  const H = h.svc.engine.info.n_embd;
  const values = Array.from({ length: H }, (_, i) => Math.sin(0.9 * i + 0.3));
  const interventions = [{ vector: { values }, layer: 1, coeff: 12 }];
  const base = await create({ seed: 1, temperature: 0 });
  const steered = await create({ seed: 1, temperature: 0, interventions });
  t.not(
    steered.receipt.runs[0].output.join(),
    base.receipt.runs[0].output.join(),
    'the steered tokens differ from the unsteered ones',
  );
  const made = await postJson('/v1/presets', { name: 'sine', interventions });
  t.equal(made.status, 201, JSON.stringify(made.body));
  const preset = await create({ model: 'sine', seed: 1, temperature: 0 });
  t.equal(preset.model, 'sine');
  t.same(preset.receipt.runs[0].output, steered.receipt.runs[0].output, 'the preset: the same tokens');
});

t.test('/v1/generate with messages', async (t) => {
  const g = await postJson('/v1/generate', { messages, max_new_tokens: 5, seed: 9 });
  t.equal(g.status, 200);
  t.same(g.body.receipt.runs[0].prompt, promptIds);
  t.same(g.body.receipt.runs[0].stop, ['<|im_end|>']);
  const p = await postJson('/v1/generate', { prompt: rendered, max_new_tokens: 5, seed: 9 });
  t.same(p.body.receipt.runs[0].output, g.body.receipt.runs[0].output, 'as the rendered text given as a prompt');

  const bad = async (body: object, message: RegExp) => {
    const r = await postJson('/v1/generate', { max_new_tokens: 2, ...body });
    t.equal(r.status, 400, JSON.stringify(body));
    t.match(r.body.error.message, message);
  };
  await bad({ prompt: 'x', messages }, /exactly one of prompt and messages \(got both\)/);
  await bad({}, /exactly one of prompt and messages \(got neither\)/);
  await bad({ messages, prepend_bos: true }, /prepend_bos/);
  await bad({ messages: [{ role: 'tool', content: 'x' }] }, /body\/messages\/0\/role must be one of/);
});

t.test('chat: bad messages and fields, 400 naming them; nothing reaches the engine', async (t) => {
  const before = h.svc.metrics.requests;
  const count = async () => (await before.get()).values.reduce((s, v) => s + v.value, 0);
  const started = await count();
  const bad = async (body: Record<string, unknown>, message: RegExp, code = 'invalid_request') => {
    const r = await postJson('/v1/chat/completions', { messages, max_tokens: 2, ...body });
    t.equal(r.status, 400, JSON.stringify(body));
    t.equal(r.body.error.code, code);
    t.match(r.body.error.message, message);
  };
  await bad({ messages: [] }, /body\/messages must NOT have fewer than 1 items/);
  await bad({ messages: undefined }, /messages/);
  await bad(
    { messages: [u1, { role: 'function', content: 'x' }] },
    /body\/messages\/1\/role must be one of "system", "user", "assistant"/,
  );
  await bad({ messages: [{ role: 'user' }] }, /body\/messages\/0 must have required property 'content'/);
  await bad({ messages: [{ role: 'assistant', content: null }] }, /body\/messages\/0\/content must be/);
  await bad(
    { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] },
    /body\/messages\/0\/content\/0\/type must be one of "text"/,
  );
  await bad({ top_logprobs: 2 }, /top_logprobs needs logprobs: true/);
  await bad({ logprobs: true, top_logprobs: 21 }, /top_logprobs must be <= 20/);
  await bad({ stop: ['a', 'b', 'c', 'd', 'e'] }, /stop/);

  // the template's own rules (Llama 2's alternation): 400 naming messages
  const chatml = h.svc.chatTemplate;
  h.svc.chatTemplate = known('llama2');
  t.teardown(() => {
    h.svc.chatTemplate = chatml;
  });
  await bad({ messages: [u1, u2] }, /^messages: the model's chat template refused the conversation: .*alternate/);
  // and a model without one: unsupported, naming /v1/completions
  h.svc.chatTemplate = undefined;
  await bad({}, /messages: qwen-tiny has no chat template.*\/v1\/completions/, 'unsupported');
  const r = await postJson('/v1/generate', { messages, max_new_tokens: 2 });
  t.equal(r.status, 400);
  t.match(r.body.error.message, /^messages: qwen-tiny has no chat template/);
  h.svc.chatTemplate = chatml;
  t.equal(await count(), started, 'no run was posted');

  const e = await client.chat.completions
    .create({ model: 'qwen-tiny', messages: [{ role: 'developer', content: 'x' }] })
    .catch((x) => x);
  t.ok(e instanceof BadRequestError, 'the client: BadRequestError');
});
