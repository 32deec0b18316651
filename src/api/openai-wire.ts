import { type Static, Type } from 'typebox';
import { SAMPLING_DEFAULTS as D } from '../engine/defaults.js';
import type { FinishReason, PromptLogprob, TokenEvent, TokenLogprob } from '../engine/types.js';
import { BadRequestError } from '../errors.js';
import { encodeText, type Tokenizer } from '../model/tokenizer.js';
import { interventionsSchema, modelField, Nullable, OneOf } from './schemas.js';

/**
 * OpenAI's completions wire format: a choice's `logprobs` object (token strings, offsets into the
 * text, the most likely tokens by text), the chunks and choices a response is made of, and the
 * forms a prompt may take.
 */

/** OpenAI's default `max_tokens` of a completion. */
export const OPENAI_MAX_TOKENS = 16;

/** The body of `POST /v1/completions`: OpenAI's fields, and steerd's `interventions`. */
export const completionsBodySchema = Type.Object({
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
        "a text, a list of texts, a list of token ids (one prompt, the model's ids: 0..vocab_size − 1, taken as they are: no BOS added), or a list of token-id lists (lm-evaluation-harness's `tokenized_requests`). A text gets the tokenizer's BOS first where it adds one (`/v1/model` `tokenizer.add_bos`: Llama 2 and 3), and `echo` then shows its tokens' text, BOS included.",
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
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2, default: D.temperature })),
  top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, default: D.top_p })),
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
  stop: Type.Optional(OneOf([Type.String(), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 }), Type.Null()])),
  seed: Type.Optional(Type.Integer()),
  stream: Type.Optional(Type.Boolean({ default: false })),
  frequency_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: D.frequency_penalty })),
  presence_penalty: Type.Optional(Type.Number({ minimum: -2, maximum: 2, default: D.presence_penalty })),
  interventions: Type.Optional(interventionsSchema),
});

export type CompletionsBody = Static<typeof completionsBodySchema>;

/** OpenAI's `logprobs` object of a choice: one entry per token, in order. */
export const logprobsSchema = Type.Object(
  {
    tokens: Type.Array(Type.String(), {
      description:
        "each token's text; `bytes:` and its bytes (`bytes: \\xe2\\x80`) for a token that holds part of a UTF-8 character. A choice that ended at `<|endoftext|>` (finish_reason `stop`) has it last, with its logprob, though the text leaves it out",
    }),
    token_logprobs: Type.Array(Nullable(Type.Number()), {
      description: 'log p(token) given the tokens before it (with `echo`: null for the first prompt token)',
    }),
    top_logprobs: Type.Array(
      Type.Unsafe<Record<string, number> | null>({
        type: ['object', 'null'],
        additionalProperties: { type: 'number' },
      }),
      {
        description:
          'the `logprobs` most likely tokens at each position, text → logprob (null where token_logprobs is)',
      },
    ),
    text_offset: Type.Array(Type.Integer(), {
      description:
        "where each token starts in the choice's text, in UTF-16 code units (a token that begins inside a character: where that character starts)",
    }),
  },
  { description: 'with `logprobs`' },
);

export interface Logprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** A token of a chat choice's `logprobs.content`. */
const chatTokenProperties = {
  token: Type.String({ description: 'its text (a token that holds part of a UTF-8 character: U+FFFD for it)' }),
  logprob: Type.Number({ description: 'log p(token) given the tokens before it' }),
  bytes: Type.Array(Type.Integer(), { description: "the token's UTF-8 bytes" }),
};

export const chatLogprobSchema = Type.Object({
  ...chatTokenProperties,
  top_logprobs: Type.Array(Type.Object(chatTokenProperties), {
    description: 'the `top_logprobs` most likely tokens at its position, most likely first',
  }),
});

export type ChatLogprob = Static<typeof chatLogprobSchema>;

const noLogprobs = (): Logprobs => ({ tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] });

export function append(a: Logprobs, b: Logprobs): Logprobs {
  return {
    tokens: [...a.tokens, ...b.tokens],
    token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
    top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
    text_offset: [...a.text_offset, ...b.text_offset],
  };
}

/**
 * Where tokens start in a text, in UTF-16 code units: their bytes decoded as one stream (as the
 * engine makes the text), so a token that ends inside a character adds nothing and the next one
 * starts where that character does.
 */
export class Offsets {
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(
    private readonly tokenizer: Tokenizer,
    private at: number,
  ) {}

  /** The offset of the token `id`, which then follows. */
  next(id: number): number {
    const start = this.at;
    this.at += this.decoder.decode(this.tokenizer.bytes([id]), { stream: true }).length;
    return start;
  }
}

/** A byte of a `bytes:` token: printable ASCII as itself (a backslash doubled), any other byte `\xNN`. */
const byteString = (x: number) =>
  x === 0x5c ? '\\\\' : x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : `\\x${x.toString(16).padStart(2, '0')}`;

export const openaiReason = (r: FinishReason) => (r === 'length' ? 'length' : 'stop');

/** A choice of a response or chunk; `logprobs` null unless asked for (`k`), then never absent. */
export const choiceOf = <F extends string | null>(
  index: number,
  text: string,
  logprobs: Logprobs | null,
  finish: F,
  k: number | undefined,
) => ({ text, index, logprobs: k === undefined ? null : (logprobs ?? noLogprobs()), finish_reason: finish });

/** A model's tokens as the wire shows them, each token's string computed once and kept. */
export class TokenStrings {
  // A token's text for `tokens` and the `top_logprobs` keys: decoded alone where its bytes are
  // UTF-8, else `bytes:` and its bytes written out (`bytes: \xe2\x80`, OpenAI's form), which keeps
  // the keys distinct.
  private readonly strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  private readonly strings = new Map<number, string>();

  constructor(readonly tokenizer: Tokenizer) {}

  of(id: number): string {
    let s = this.strings.get(id);
    if (s === undefined) {
      const bytes = this.tokenizer.bytes([id]);
      try {
        s = this.strict.decode(bytes);
      } catch {
        s = `bytes:${Array.from(bytes, byteString).join('')}`;
      }
      this.strings.set(id, s);
    }
    return s;
  }

  /** A token in the chat shape: its text (part of a character: U+FFFD), its bytes, and its most likely alternatives. */
  chat(e: { id: number; logprob: number; top_logprobs?: TokenLogprob[] }): ChatLogprob {
    return {
      ...this.chatToken(e.id, e.logprob),
      top_logprobs: (e.top_logprobs ?? []).map((x) => this.chatToken(x.id, x.logprob)),
    };
  }

  private chatToken(id: number, logprob: number) {
    return { token: this.tokenizer.decode([id]), logprob, bytes: Array.from(this.tokenizer.bytes([id])) };
  }

  private top(top: TokenLogprob[] | undefined): Record<string, number> {
    return Object.fromEntries((top ?? []).map((x) => [this.of(x.id), x.logprob]));
  }

  /** The generated tokens' logprobs (`offsets`: where each starts). */
  generated(tokens: Omit<TokenEvent, 'type' | 'text'>[], offsets: number[]): Logprobs {
    return {
      tokens: tokens.map((e) => this.of(e.id)),
      token_logprobs: tokens.map((e) => e.logprob),
      top_logprobs: tokens.map((e) => this.top(e.top_logprobs)),
      text_offset: offsets,
    };
  }

  /** The prompt's tokens with their scores (the first has none), as `echo` puts them first. */
  prompt(ids: number[], scored: PromptLogprob[]): Logprobs {
    const offsets = new Offsets(this.tokenizer, 0);
    return {
      tokens: ids.map((id) => this.of(id)),
      token_logprobs: ids.map((_, i) => (i === 0 ? null : (scored[i]?.logprob ?? null))),
      top_logprobs: ids.map((_, i) => (i === 0 ? null : this.top(scored[i]?.top_logprobs))),
      text_offset: ids.map((id) => offsets.next(id)),
    };
  }
}

/**
 * A request's prompts as token ids, and their texts (what `echo` puts first): texts are encoded (a
 * BOS first where the tokenizer adds one) and the echo is their tokens' text; token ids are checked
 * against the vocabulary (400 naming the bad one) and decoded.
 */
export function promptsOf(
  tokenizer: Tokenizer,
  vocabSize: number,
  prompt: string | string[] | number[] | number[][],
): { prompts: number[][]; texts: string[] } {
  if (typeof prompt === 'string' || typeof prompt[0] === 'string') {
    // a text's ids as its tokenizer makes them (BOS first where it adds one); what `echo` shows is
    // those tokens' text, which their offsets count (GPT-2: the text itself)
    const prompts = (typeof prompt === 'string' ? [prompt] : (prompt as string[])).map((x) => encodeText(tokenizer, x));
    return { prompts, texts: prompts.map((ids) => tokenizer.decode(ids)) };
  }
  const nested = typeof prompt[0] !== 'number';
  const lists = nested ? (prompt as number[][]) : [prompt as number[]];
  for (const [p, ids] of lists.entries())
    for (const [i, id] of ids.entries())
      if (id < 0 || id >= vocabSize)
        throw new BadRequestError(
          `body/prompt/${nested ? `${p}/` : ''}${i} is ${id}, not a token id (0..${vocabSize - 1})`,
          { index: nested ? [p, i] : i, token: id },
        );
  return { prompts: lists, texts: lists.map((ids) => tokenizer.decode(ids)) };
}

/** OpenAI's `usage`: prompt and completion tokens, and their sum. */
export const usageOf = (promptTokens: number, completionTokens: number) => ({
  prompt_tokens: promptTokens,
  completion_tokens: completionTokens,
  total_tokens: promptTokens + completionTokens,
});
