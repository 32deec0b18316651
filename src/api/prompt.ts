import { encodeText } from '../model/tokenizer.js';
import type { Service } from './service.js';

/**
 * A prompt's token ids, as Hugging Face tokenizes it: BOS first where `prepend_bos` says so, by
 * default where the checkpoint's tokenizer adds one (GPT-2 does not; Llama does).
 */
export function promptIds(svc: Service, text: string, prependBos?: boolean): number[] {
  return encodeText(svc.engine.tokenizer, text, prependBos);
}

/** `stop` as the engine takes it: a list (the API also takes one string). */
export const stopList = (stop: string | string[] | undefined): string[] | undefined =>
  typeof stop === 'string' ? [stop] : stop;
