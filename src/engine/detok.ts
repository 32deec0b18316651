import type { Tokenizer } from '../model/tokenizer.js';

/**
 * Turns a row's generated tokens into text deltas. Text is released only when it is final: a
 * token that ends inside a UTF-8 character waits for the rest, and text that might be the start of
 * a stop string waits until it is known not to be one. A stop string ends the text before it.
 */
export class TextStream {
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  private released = '';
  private pending = '';
  stopped = false;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly stops: readonly string[] = [],
  ) {}

  /** Adds a token; returns the newly released text. */
  push(id: number): string {
    this.pending += this.decoder.decode(this.tokenizer.bytes([id]), { stream: true });
    return this.release(false);
  }

  /** Flushes what is held (at the end of generation); returns the released remainder. */
  finish(): string {
    if (this.stopped) return '';
    this.pending += this.decoder.decode();
    return this.release(true);
  }

  /** All text released so far. */
  get text(): string {
    return this.released;
  }

  private release(final: boolean): string {
    const full = this.released + this.pending;
    let cut = -1;
    for (const s of this.stops) {
      const i = full.indexOf(s, Math.max(0, this.released.length - s.length + 1));
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    let upto = full.length;
    if (cut >= 0) {
      upto = cut;
      this.stopped = true;
    } else if (!final) {
      // hold back the longest tail that could still grow into a stop string
      for (const s of this.stops) {
        for (let k = Math.min(s.length - 1, full.length); k > 0; k--) {
          if (full.endsWith(s.slice(0, k))) {
            upto = Math.min(upto, full.length - k);
            break;
          }
        }
      }
      upto = Math.max(upto, this.released.length);
    }
    const delta = full.slice(this.released.length, upto);
    this.released = full.slice(0, upto);
    this.pending = this.stopped ? '' : full.slice(upto);
    return delta;
  }
}
