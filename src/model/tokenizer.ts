/** Options of `Tokenizer.encode`. */
export interface EncodeOptions {
  /** Recognise special tokens (`<|endoftext|>`) written in the text, as Hugging Face does. Default true. */
  allowSpecial?: boolean;
}

/** A checkpoint's tokenizer, whatever its family: what the engine and the API need of one. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** Id of the token that ends a generation. */
  readonly eosId: number;
  /** Id of the token a sequence begins with where one is prepended (GPT-2: `<|endoftext|>`, Llama: `<s>`). */
  readonly bosId: number;
  /**
   * Whether the checkpoint's tokenizer prepends `bosId` to a text (Hugging Face's `add_special_tokens`
   * default): GPT-2 no, Llama 2 and 3 yes, Qwen2 no. `encode` never does; a prompt's `prepend_bos`
   * defaults to it.
   */
  readonly addBos: boolean;
  /**
   * The token of one space inside a text, what ActAdd pads a prompt with (GPT-2: `Ġ`, 220;
   * SentencePiece: `▁`): undefined where the vocabulary has none.
   */
  readonly spaceId: number | undefined;
  /** Encodes text to token ids. */
  encode(text: string, opts?: EncodeOptions): number[];
  /** Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: readonly number[]): string;
  /** The raw bytes of a token sequence (a token may hold part of a UTF-8 character). */
  bytes(ids: readonly number[]): Uint8Array;
  /** The token's string form in the vocabulary (GPT-2: `Ġworld`). */
  token(id: number): string | undefined;
}

/**
 * A text's token ids as the checkpoint's tokenizer makes them by default: BOS first where
 * `prependBos` says so, else where the tokenizer adds one (`addBos`).
 */
export function encodeText(
  tokenizer: Pick<Tokenizer, 'encode' | 'bosId' | 'addBos'>,
  text: string,
  prependBos = tokenizer.addBos,
): number[] {
  const ids = tokenizer.encode(text);
  return prependBos ? [tokenizer.bosId, ...ids] : ids;
}
