import type { Service } from './service.js';

/** A prompt's token ids, as Hugging Face tokenizes for GPT-2: no `<|endoftext|>` first unless `prepend_bos`. */
export function promptIds(svc: Service, text: string, prependBos = false): number[] {
  const { tokenizer } = svc.engine;
  return [...(prependBos ? [tokenizer.eosId] : []), ...tokenizer.encode(text)];
}

/** `stop` as the engine takes it: a list (the API also takes one string). */
export const stopList = (stop: string | string[] | undefined): string[] | undefined =>
  typeof stop === 'string' ? [stop] : stop;
