import { randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { checkLimits, type SchemaRequest, streamErrors } from '../src/api/generation.js';
import {
  append,
  choiceOf,
  type Logprobs,
  logprobsSchema,
  Offsets,
  OPENAI_MAX_TOKENS,
  openaiReason,
  promptsOf,
  TokenStrings,
} from '../src/api/openai-wire.js';
import { presetOf } from '../src/api/presets.js';
import { stopList } from '../src/api/prompt.js';
import { keepValues, receipt, receiptSchema, runRecord } from '../src/api/receipt.js';
import { resolveInterventions } from '../src/api/resolve.js';
import { errorResponses, interventionsSchema, modelField, Nullable, OneOf, Ref } from '../src/api/schemas.js';
import type { Service } from '../src/api/service.js';
import { Session } from '../src/api/session.js';
import { drawSeed, withDefaults } from '../src/engine/defaults.js';
import type { DoneEvent, GenerateEvent, TokenEvent } from '../src/engine/types.js';
import { BadRequestError, SteerdError, UnprocessableError } from '../src/errors.js';

const completionsSchema = {
  tags: ['openai'],
  summary: 'OpenAI-compatible completions (with an extra `interventions` field)',
  description:
    "OpenAI's legacy completions: `n` completions of each prompt (choice index = prompt index × n + i; choice i samples with seed + i, the seed drawn once when absent), `logprobs` (0–5), `echo` (with `logprobs`: the prompt's tokens scored, the first one null), `max_tokens` 0 (nothing generated, so a prompt may fill the context: with `echo` and `logprobs`, the prompt scored; as lm-evaluation-harness's loglikelihood requests send). `prompt` may be token ids (lm-evaluation-harness's `tokenized_requests`); all prompts and choices are admitted together, and a prompt is scored by its first choice's prefill (streaming: by a prompt pass of its own). Each choice is a generation of its own, all admitted together (they share batches); the receipt has one run per choice, in choice order (with `max_tokens` 0: one per prompt). Fields OpenAI defines and steerd does not use are accepted and ignored; `best_of` must be 1. Streaming sends `data: {chunk}` events (each with its choice's `index`; the choices' chunks interleave; a choice's last chunk has its `finish_reason`, the last of all also `usage` and `receipt`), then `data: [DONE]`.",
  body: Type.Object({
    model: modelField,
    prompt: OneOf(
      [
        Type.String({ minLength: 1 }),
        Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
        Type.Array(Type.Integer(), { minItems: 1 }),
        Type.Array(Type.Array(Type.Integer(), { minItems: 1 }), { minItems: 1 }),
      ],
      {
        description:
          "a text, a list of texts, a list of token ids (one prompt, GPT-2's ids: 0..vocab_size − 1), or a list of token-id lists (lm-evaluation-harness's `tokenized_requests`)",
      },
    ),
    max_tokens: Type.Optional(
      Type.Integer({
        minimum: 0,
        default: OPENAI_MAX_TOKENS,
        description:
          '0: nothing is generated; with `echo` and `logprobs` the prompt is only scored (one pass per prompt, no sampling)',
      }),
    ),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2, default: 1 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 1 })),
    n: Type.Optional(
      Nullable(
        Type.Integer({
          minimum: 1,
          default: 1,
          description: 'completions of each prompt, at most STEERD_MAX_N (default 8)',
        }),
      ),
    ),
    best_of: Type.Optional(Nullable(Type.Integer({ description: 'not supported: only 1' }))),
    logprobs: Type.Optional(
      Nullable(
        Type.Integer({
          minimum: 0,
          maximum: 5,
          description: "each token's logprob and this many most likely tokens at its position",
        }),
      ),
    ),
    echo: Type.Optional(
      Nullable(
        Type.Boolean({
          default: false,
          description: 'the text starts with the prompt (and, with `logprobs`, the prompt tokens come first)',
        }),
      ),
    ),
    stop: Type.Optional(
      OneOf([Type.String(), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 }), Type.Null()]),
    ),
    seed: Type.Optional(Type.Integer()),
    stream: Type.Optional(Type.Boolean({ default: false })),
    frequency_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: 0 })),
    presence_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: 0 })),
    interventions: Type.Optional(interventionsSchema),
  }),
  response: {
    200: Type.Partial(
      Type.Object({
        id: Type.String(),
        object: Type.String(),
        created: Type.Integer(),
        model: Type.String(),
        choices: Type.Array(
          Type.Partial(
            Type.Object({
              text: Type.String(),
              index: Type.Integer(),
              logprobs: Nullable(logprobsSchema),
              finish_reason: Type.String(),
            }),
          ),
        ),
        usage: Type.Partial(
          Type.Object({
            prompt_tokens: Type.Integer(),
            completion_tokens: Type.Integer(),
            total_tokens: Type.Integer(),
          }),
        ),
        receipt: Ref(receiptSchema),
      }),
    ),
    ...errorResponses,
  },
};

const chatSchema = {
  tags: ['openai'],
  summary: 'Not supported: GPT-2 has no chat template',
  description: 'Always 400 (`unsupported`): GPT-2 is a base model without a chat template; use `/v1/completions`.',
  response: errorResponses,
};

/** OpenAI's completions API, so that any OpenAI client can call steerd; steering is the extra `interventions` field. */
const completionRoutes: FastifyPluginAsyncTypebox<{ svc: Service }> = async (app, { svc }) => {
  // (registering the routes touches no model: the service may have none, as for openapi.yaml)

  // the wire's token strings, kept per model (made on first use: registering touches no model)
  let wire: TokenStrings | undefined;
  const strings = () => {
    if (wire?.tokenizer !== svc.engine.tokenizer) wire = new TokenStrings(svc.engine.tokenizer);
    return wire;
  };

  app.get(
    '/v1/models',
    {
      schema: {
        tags: ['openai'],
        summary: 'OpenAI-compatible model list: the base model, then every preset (`parent`: the base model)',
        response: {
          200: Type.Partial(
            Type.Object({
              object: Type.String(),
              data: Type.Array(
                Type.Partial(
                  Type.Object({
                    id: Type.String(),
                    object: Type.String(),
                    created: Type.Integer(),
                    owned_by: Type.String(),
                    parent: Nullable(
                      Type.String({ description: 'a preset: the base model it steers (the base model: null)' }),
                    ),
                    description: Nullable(Type.String({ description: "a preset's description" })),
                  }),
                ),
              ),
            }),
          ),
        },
      },
    },
    async () => {
      const presets = await svc.store.listPresets(svc.model.id);
      return {
        object: 'list',
        data: [
          { id: svc.model.name, object: 'model', created: 0, owned_by: 'steerd', parent: null },
          ...presets.map((p) => ({
            id: p.name,
            object: 'model',
            created: Math.floor(Date.parse(p.created_at) / 1000),
            owned_by: 'steerd',
            parent: svc.model.name,
            description: p.description,
          })),
        ],
      };
    },
  );

  app.post('/v1/chat/completions', { schema: chatSchema }, async () => {
    throw new SteerdError(
      `GPT-2 has no chat template: ${svc.model.name} is a base model that continues text; use /v1/completions with a prompt`,
      400,
      'unsupported',
    );
  });

  app.post(
    '/v1/completions',
    { sse: 'manual', schema: completionsSchema },
    streamErrors(async (request: SchemaRequest<typeof completionsSchema>, reply) => {
      const b = request.body;
      const { tokenizer, info } = svc.engine;
      const wire = strings();
      const preset = await presetOf(svc, b.model);
      if (b.best_of != null && b.best_of !== 1)
        throw new BadRequestError(
          `best_of is not supported (got ${b.best_of}): it must be 1; use n for several completions`,
        );
      const n = b.n ?? 1;
      const maxN = svc.config.limits.maxN;
      if (n > maxN)
        throw new UnprocessableError(`n (${n}) exceeds this server's limit (${maxN}, STEERD_MAX_N)`, {
          n,
          max_n: maxN,
        });
      const maxNew = b.max_tokens ?? OPENAI_MAX_TOKENS;
      // max_tokens 0 scores the prompt: its pass alone, which needs the prompt's positions only
      const scoreOnly = maxNew === 0;
      checkLimits(svc, Math.max(1, maxNew));
      const k = b.logprobs ?? undefined;
      const echo = b.echo === true;
      const { prompts, texts } = promptsOf(tokenizer, info.vocab_size, b.prompt);
      const { engine: interventions, applied } = await resolveInterventions(svc, b.interventions, preset);
      const stop = b.stop == null || b.stop === '' ? undefined : stopList(b.stop);
      const seed = b.seed ?? drawSeed();
      const stream = b.stream === true;
      const scorePrompts = echo && k !== undefined;
      // The prompts' scores come from the first choice's run of each prompt (its prefill computes
      // them); a stream sends them before any completion's tokens, so there each prompt is scored by
      // a prompt pass of its own (same interventions, nothing generated) that finishes first.
      const separate = scorePrompts && stream && !scoreOnly;
      const scoring = (prompt: number[], scored: boolean) =>
        withDefaults({
          prompt,
          max_new_tokens: 0,
          temperature: 0,
          seed,
          interventions,
          ...(scored && { prompt_logprobs: k }),
        });
      // run r: with max_tokens 0, prompt r (its n choices are the same); else choice r = p × n + i,
      // prompt p, seed + i
      const reqs = scoreOnly
        ? prompts.map((prompt) => scoring(prompt, scorePrompts))
        : prompts.flatMap((prompt) =>
            Array.from({ length: n }, (_, i) =>
              withDefaults({
                prompt,
                max_new_tokens: maxNew,
                temperature: b.temperature,
                top_p: b.top_p,
                frequency_penalty: b.frequency_penalty,
                presence_penalty: b.presence_penalty,
                seed: seed + i,
                stop,
                interventions,
                ...(k && { top_logprobs: k }),
                ...(scorePrompts && !separate && i === 0 && { prompt_logprobs: k }),
              }),
            ),
          );
      const scorers = separate ? prompts.map((prompt) => scoring(prompt, true)) : [];
      const runOf = (j: number) => (scoreOnly ? Math.floor(j / n) : j);
      const choiceCount = prompts.length * n;

      // every run checked before any starts; all admitted together: the prompts' prefills share passes
      const session = Session.open(svc, request, reply, [...reqs, ...scorers]);
      return session.serve(async () => {
        const id = `cmpl-${randomUUID()}`;
        const created = Math.floor(Date.now() / 1000);
        const chunk = <C>(choices: C[]) => ({
          id,
          object: 'text_completion',
          created,
          model: preset?.name ?? svc.model.name,
          choices,
        });
        const choice = <F extends string | null>(j: number, text: string, logprobs: Logprobs | null, finish: F) =>
          choiceOf(j, text, logprobs, finish, k);
        const opened = session.openStream(stream);
        // the choices' chunks go out one at a time, in the order they come
        let sending = Promise.resolve();
        const send = (data: object | string) => {
          sending = sending.then(() => session.send({ data }));
          return sending;
        };

        const scores = scorers.map((r) =>
          session.run(r, async (events) => {
            for await (const e of events) if (e.type === 'done') return e.prompt_logprobs ?? [];
            return [];
          }),
        );

        let finished = 0;
        let last: { j: number; done: DoneEvent; end: Logprobs | null } | undefined;
        const streamTokens = opened && !scoreOnly;
        const read = (r: number) => async (events: AsyncIterable<GenerateEvent>) => {
          const p = scoreOnly ? r : Math.floor(r / n);
          const offsets = new Offsets(tokenizer, echo ? texts[p].length : 0);
          const tokens: TokenEvent[] = [];
          const at: number[] = [];
          let done: DoneEvent | undefined;
          // the end-of-text token that ended the choice: in its logprobs as OpenAI reports it (the
          // text leaves it out), so that a scored choice has every position it asked for
          let end: Logprobs | null = null;
          let started = false;
          for await (const e of events) {
            if (streamTokens && echo && !started)
              await send(
                chunk([choice(r, texts[p], k === undefined ? null : wire.prompt(prompts[p], await scores[p]), null)]),
              );
            started = true;
            if (e.type === 'token') {
              if (e.id < 0) {
                // text held back (a stop-string prefix, part of a character), released at the end
                if (streamTokens && e.text) await send(chunk([choice(r, e.text, null, null)]));
                continue;
              }
              tokens.push(e);
              at.push(offsets.next(e.id));
              if (streamTokens && (e.text || k !== undefined))
                await send(chunk([choice(r, e.text, wire.generated([e], [at.at(-1)!]), null)]));
              continue;
            }
            session.checkTime();
            done = e;
            if (e.eos && k !== undefined) end = wire.generated([e.eos], [offsets.next(e.eos.id)]);
            // the last choice to finish waits for the usage and the receipt
            if (streamTokens && ++finished < reqs.length)
              await send(chunk([choice(r, '', end, openaiReason(e.finish_reason))]));
            else last = { j: r, done: e, end };
          }
          return { tokens, at, done: done!, end };
        };
        const results = await session.all(reqs.map((req, r) => session.run(req, read(r))));
        const completionTokens = scoreOnly ? 0 : results.reduce((s, r) => s + r.done.usage.completion_tokens, 0);
        const promptTokens = prompts.reduce((s, p) => s + p.length, 0);
        const usage = {
          prompt_tokens: promptTokens,
          completion_tokens: completionTokens,
          total_tokens: promptTokens + completionTokens,
        };
        await keepValues(svc, interventions, applied);
        const rec = receipt(
          svc,
          results.map((r, j) =>
            runRecord(
              reqs[j],
              applied,
              r.tokens.map((e) => e.id),
            ),
          ),
          preset?.name,
        );
        // each prompt's scored tokens, from its scoring run or its first choice's run
        const promptPart = async (p: number) => {
          if (!scorePrompts) return null;
          const scored = separate ? await scores[p] : (results[scoreOnly ? p : p * n].done.prompt_logprobs ?? []);
          return wire.prompt(prompts[p], scored);
        };
        if (streamTokens) {
          const end = last ?? { j: 0, done: results[0].done, end: results[0].end };
          await send({
            ...chunk([choice(end.j, '', end.end, openaiReason(end.done.finish_reason))]),
            usage,
            receipt: rec,
          });
          await sending;
          return session.close({ data: '[DONE]' });
        }
        const all = await Promise.all(
          Array.from({ length: choiceCount }, async (_, j) => {
            const p = Math.floor(j / n);
            const prompt = echo ? await promptPart(p) : null;
            if (scoreOnly) return choice(j, echo ? texts[p] : '', prompt, 'length');
            const r = results[runOf(j)];
            const tokens = k === undefined ? null : wire.generated(r.tokens, r.at);
            const generated = tokens && r.end ? append(tokens, r.end) : tokens;
            return choice(
              j,
              (echo ? texts[p] : '') + r.done.text,
              prompt && generated ? append(prompt, generated) : generated,
              openaiReason(r.done.finish_reason),
            );
          }),
        );
        if (opened) {
          // max_tokens 0, streamed: each choice whole, the last with the usage and the receipt
          for (const [j, c] of all.entries())
            await send(j < all.length - 1 ? chunk([c]) : { ...chunk([c]), usage, receipt: rec });
          await sending;
          return session.close({ data: '[DONE]' });
        }
        return { ...chunk(all), usage, receipt: rec };
      });
    }),
  );
};

export default completionRoutes;
