import { randomUUID } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { type Static, Type } from 'typebox';
import { SAMPLING_DEFAULTS as D, drawSeed, withDefaults } from '../engine/defaults.js';
import type { DoneEvent, TokenEvent } from '../engine/types.js';
import { BadRequestError, SteerdError } from '../errors.js';
import { CHAT_ROLES, type ChatMessage } from '../model/chat-template.js';
import { encodeText } from '../model/tokenizer.js';
import type { ApiToken } from './completion.js';
import { checkN } from './completions.js';
import { checkLimits } from './generation.js';
import { openaiReason, type TokenStrings, usageOf } from './openai-wire.js';
import { presetOf } from './presets.js';
import { promptIds, stopList } from './prompt.js';
import { receiptOf } from './receipt.js';
import { resolveInterventions } from './resolve.js';
import { interventionsSchema, modelField, Nullable, OneOf, StringEnum } from './schemas.js';
import type { Service } from './service.js';
import { Session } from './session.js';

/** OpenAI's chat completions: the request's shape, its conversation as a prompt, and its answer. */

/** A conversation, as OpenAI's chat API sends one. */
export const messagesSchema = Type.Array(
  Type.Object({
    role: StringEnum([...CHAT_ROLES]),
    content: OneOf(
      [
        Type.String(),
        // the type checked first: a part of another type is refused for its type, not for lacking a text
        Type.Array(
          Type.Intersect([Type.Object({ type: StringEnum(['text']) }), Type.Object({ text: Type.String() })]),
          {
            minItems: 1,
            description: 'text parts, joined by newlines',
          },
        ),
      ],
      { description: 'a text, or a list of text parts (`{type: "text", text}`)' },
    ),
  }),
  {
    minItems: 1,
    description:
      "the conversation: roles `system`, `user`, `assistant`, as the model's chat template takes them (its own rules, such as alternating roles, are a 400 naming `messages`)",
  },
);

export type MessagesBody = Static<typeof messagesSchema>;

/** The body of `POST /v1/chat/completions`: OpenAI's fields, and steerd's `interventions`. */
export const chatBodySchema = Type.Object({
  model: modelField,
  messages: messagesSchema,
  max_completion_tokens: Type.Optional(
    Nullable(
      Type.Integer({
        minimum: 1,
        description: `tokens to generate at most (default ${D.max_new_tokens}, at most STEERD_MAX_NEW_TOKENS)`,
      }),
    ),
  ),
  max_tokens: Type.Optional(
    Nullable(Type.Integer({ minimum: 1, description: 'the older name of max_completion_tokens' })),
  ),
  temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2, default: D.temperature }))),
  top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: D.top_p }))),
  n: Type.Optional(
    Nullable(Type.Integer({ minimum: 1, default: 1, description: 'choices, at most STEERD_MAX_N (default 8)' })),
  ),
  seed: Type.Optional(Nullable(Type.Integer())),
  stop: Type.Optional(OneOf([Type.String(), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 }), Type.Null()])),
  stream: Type.Optional(Nullable(Type.Boolean({ default: false }))),
  stream_options: Type.Optional(
    Nullable(
      Type.Object({
        include_usage: Type.Optional(
          Type.Boolean({ description: 'a last chunk before `[DONE]` with `usage` and no choices' }),
        ),
      }),
    ),
  ),
  logprobs: Type.Optional(Nullable(Type.Boolean({ default: false, description: "each token's logprob" }))),
  top_logprobs: Type.Optional(
    Nullable(
      Type.Integer({
        minimum: 0,
        maximum: 20,
        description: 'with `logprobs`: this many most likely tokens at each position (0–20, the engine’s limit too)',
      }),
    ),
  ),
  frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2, default: D.frequency_penalty }))),
  presence_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2, default: D.presence_penalty }))),
  interventions: Type.Optional(interventionsSchema),
});

export type ChatBody = Static<typeof chatBodySchema>;

/** A message's content as one text: its text parts joined by newlines. */
const contentText = (content: MessagesBody[number]['content']) =>
  typeof content === 'string' ? content : content.map((p) => p.text).join('\n');

/**
 * A conversation as the model reads it: rendered by the checkpoint's chat template with the
 * generation prompt, tokenized with special tokens recognised and no BOS added (the template
 * writes it); `endOfTurn` is the text that closes an assistant turn, to stop at. A model without a
 * template is a 400 naming `messages`.
 */
export function chatPrompt(svc: Service, messages: MessagesBody) {
  const template = svc.chatTemplate;
  if (!template)
    throw new SteerdError(
      `messages: ${svc.model.name} has no chat template (a base model, it continues text); use /v1/completions or /v1/generate with a prompt`,
      400,
      'unsupported',
    );
  const conversation: ChatMessage[] = messages.map((m) => ({ role: m.role, content: contentText(m.content) }));
  const text = template.render(conversation);
  const { tokenizer } = svc.engine;
  // the end of a turn stops a generation as EOS does: a stop string, for a checkpoint whose EOS ids
  // (config.json, generation_config.json) do not name it
  const eot = template.endOfTurn;
  const named = svc.engine.info.eos_token_ids.some((id) => tokenizer.decode([id]) === eot);
  const endOfTurn = eot === undefined || named ? undefined : eot;
  const ids = encodeText(tokenizer, text, false);
  if (ids.length === 0) throw new BadRequestError('messages: the chat template renders this conversation as no text');
  return { ids, endOfTurn };
}

/** `stop` with the end of a turn added (once). */
export const withEndOfTurn = (stop: string[] | undefined, endOfTurn: string | undefined) =>
  endOfTurn === undefined || stop?.includes(endOfTurn) ? stop : [...(stop ?? []), endOfTurn];

/**
 * `/v1/generate`'s prompt: a text, or a conversation (`messages`) rendered by the chat template,
 * exactly one of the two; `stop` then also holds the end of a turn.
 */
export function generatePrompt(
  svc: Service,
  b: { prompt?: string; messages?: MessagesBody; prepend_bos?: boolean; stop?: string | string[] },
): { prompt: number[]; stop: string[] | undefined } {
  if ((b.prompt === undefined) === (b.messages === undefined))
    throw new BadRequestError(
      `body must have exactly one of prompt and messages (got ${b.prompt === undefined ? 'neither' : 'both'})`,
      { fields: ['prompt', 'messages'] },
    );
  if (b.prompt !== undefined) return { prompt: promptIds(svc, b.prompt, b.prepend_bos), stop: stopList(b.stop) };
  if (b.prepend_bos !== undefined)
    throw new BadRequestError('prepend_bos applies to a prompt: with messages the chat template writes the BOS', {
      field: 'prepend_bos',
    });
  const chat = chatPrompt(svc, b.messages!);
  return { prompt: chat.ids, stop: withEndOfTurn(stopList(b.stop), chat.endOfTurn) };
}

/** A choice's logprobs in the chat shape: the generated tokens (not the EOS that ended it). */
const logprobsOf = (wire: TokenStrings, tokens: Pick<TokenEvent, 'id' | 'logprob' | 'top_logprobs'>[]) => ({
  content: tokens.map((e) => wire.chat(e)),
});

/** OpenAI's `finish_reason` of a chat choice: `length`, else `stop` (EOS, the end of a turn, a stop string). */
const finishOf = (done: DoneEvent) => openaiReason(done.finish_reason);

/**
 * OpenAI's chat completions over the engine: the conversation rendered by the checkpoint's chat
 * template, then `n` runs of it admitted together as /v1/completions makes them (choice i samples
 * with seed + i), answered whole or streamed as `chat.completion.chunk`s (`wire`: the model's
 * token strings).
 */
export async function chat(
  svc: Service,
  request: FastifyRequest,
  reply: FastifyReply,
  b: ChatBody,
  wire: TokenStrings,
) {
  if (b.top_logprobs != null && b.logprobs !== true)
    throw new BadRequestError('top_logprobs needs logprobs: true', { field: 'top_logprobs' });
  const prompt = chatPrompt(svc, b.messages);
  const preset = await presetOf(svc, b.model);
  const n = checkN(svc, b.n ?? 1);
  const maxNew = b.max_completion_tokens ?? b.max_tokens ?? D.max_new_tokens;
  checkLimits(svc, maxNew);
  const k = b.logprobs === true ? (b.top_logprobs ?? 0) : undefined;
  const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions, preset);
  const stop = withEndOfTurn(b.stop == null || b.stop === '' ? undefined : stopList(b.stop), prompt.endOfTurn);
  const seed = b.seed ?? drawSeed();
  const reqs = Array.from({ length: n }, (_, i) =>
    withDefaults({
      prompt: prompt.ids,
      max_new_tokens: maxNew,
      temperature: b.temperature ?? undefined,
      top_p: b.top_p ?? undefined,
      frequency_penalty: b.frequency_penalty ?? undefined,
      presence_penalty: b.presence_penalty ?? undefined,
      seed: seed + i,
      stop,
      interventions,
      ...(k !== undefined && { top_logprobs: k }),
    }),
  );

  const session = Session.open(svc, request, reply, reqs);
  return session.serve(async () => {
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = preset?.name ?? svc.model.name;
    const stream = session.openStream(b.stream === true);
    const chunk = (choices: object[], more: object = {}) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices,
      ...more,
    });
    // the choices' chunks go out one at a time, in the order they come
    let sending = Promise.resolve();
    const send = (data: object) => {
      sending = sending.then(() => session.send({ data }));
      return sending;
    };
    const delta = (index: number, d: object, logprobs: object | null = null, finish: string | null = null) => ({
      index,
      delta: d,
      logprobs,
      finish_reason: finish,
    });

    let finished = 0;
    let last: { i: number; done: DoneEvent } | undefined;
    const runs = reqs.map((req, i) => {
      let opened = false;
      // a token's text is what it released (id -1: text held back, released at the end)
      const onEvent = async (e: DoneEvent | TokenEvent, token?: ApiToken) => {
        if (!opened) await send(chunk([delta(i, { role: 'assistant', content: '' })]));
        opened = true;
        if (e.type === 'token') {
          if (token) {
            if (token.text || k !== undefined)
              await send(chunk([delta(i, { content: token.text }, k === undefined ? null : logprobsOf(wire, [e]))]));
          } else if (e.text) await send(chunk([delta(i, { content: e.text })]));
          return;
        }
        // the last choice to finish waits for the receipt
        if (++finished < n) await send(chunk([delta(i, {}, null, finishOf(e))]));
        else last = { i, done: e };
      };
      return session.collect(req, stream ? onEvent : undefined, stream);
    });
    const results = await session.all(runs);
    const usage = usageOf(
      prompt.ids.length,
      results.reduce((s, r) => s + r.done.usage.completion_tokens, 0),
    );
    const outputs = results.map((r, i) => ({ req: reqs[i], output: r.tokens.map((x) => x.id) }));
    const rec = await receiptOf(svc, interventions, applied, outputs, preset?.name);
    if (stream) {
      const end = last ?? { i: 0, done: results[0].done };
      await send(chunk([delta(end.i, {}, null, finishOf(end.done))], { receipt: rec }));
      if (b.stream_options?.include_usage) await send(chunk([], { usage }));
      await sending;
      return session.close({ data: '[DONE]' });
    }
    return {
      id,
      object: 'chat.completion',
      created,
      model,
      choices: results.map((r, i) => ({
        index: i,
        message: { role: 'assistant', content: r.done.text },
        logprobs: k === undefined ? null : logprobsOf(wire, r.tokens),
        finish_reason: finishOf(r.done),
      })),
      usage,
      receipt: rec,
    };
  });
}
