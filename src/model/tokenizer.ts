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
  /** Encodes text to token ids. */
  encode(text: string, opts?: EncodeOptions): number[];
  /** Decodes ids to text; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: readonly number[]): string;
  /** The raw bytes of a token sequence (a token may hold part of a UTF-8 character). */
  bytes(ids: readonly number[]): Uint8Array;
  /** The token's string form in the vocabulary (GPT-2: `Ġworld`). */
  token(id: number): string | undefined;
}
