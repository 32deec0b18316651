import { randomUUID } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { drawSeed, withDefaults } from '../engine/defaults.js';
import type { DoneEvent, GenerateEvent, TokenEvent } from '../engine/types.js';
import { BadRequestError, UnprocessableError } from '../errors.js';
import { checkLimits } from './generation.js';
import {
  append,
  type CompletionsBody,
  choiceOf,
  type Logprobs,
  Offsets,
  OPENAI_MAX_TOKENS,
  openaiReason,
  promptsOf,
  type TokenStrings,
  usageOf,
} from './openai-wire.js';
import { presetOf } from './presets.js';
import { stopList } from './prompt.js';
import { receiptOf } from './receipt.js';
import { resolveInterventions } from './resolve.js';
import type { Service } from './service.js';
import { Session } from './session.js';

/** `n`, a request's choices of each prompt, refused beyond the server's limit (422). */
export function checkN(svc: Service, n: number): number {
  const maxN = svc.config.limits.maxN;
  if (n > maxN)
    throw new UnprocessableError(`n (${n}) exceeds this server's limit (${maxN}, STEERD_MAX_N)`, {
      n,
      max_n: maxN,
    });
  return n;
}

/**
 * OpenAI's completions over the engine: `n` runs of each prompt (choice p × n + i samples with
 * seed + i), or with `max_tokens` 0 one prompt pass each; all admitted together in one session,
 * answered whole or streamed as chunks (`wire`: the model's token strings).
 */
export async function complete(
  svc: Service,
  request: FastifyRequest,
  reply: FastifyReply,
  b: CompletionsBody,
  wire: TokenStrings,
) {
  const { tokenizer, info } = svc.engine;
  const preset = await presetOf(svc, b.model);
  if (b.best_of != null && b.best_of !== 1)
    throw new BadRequestError(
      `best_of is not supported (got ${b.best_of}): it must be 1; use n for several completions`,
    );
  const n = checkN(svc, b.n ?? 1);
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
    const usage = usageOf(
      prompts.reduce((s, p) => s + p.length, 0),
      scoreOnly ? 0 : results.reduce((s, r) => s + r.done.usage.completion_tokens, 0),
    );
    const outputs = results.map((r, j) => ({ req: reqs[j], output: r.tokens.map((e) => e.id) }));
    const rec = await receiptOf(svc, interventions, applied, outputs, preset?.name);
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
}
