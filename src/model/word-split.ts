import type { TokenizerJson } from './hf-tokenizer-format.js';

type Json = Record<string, unknown>;

/**
 * Splits a text for a SentencePiece-style BPE tokenizer (Llama 2, Mistral, TinyLlama) into pieces
 * whose encodings, joined, are the whole text's.
 *
 * Such a tokenizer has no pre-tokenizer that splits words: its BPE merges over the whole text as
 * one word, and the runtime library's cost grows faster than the text (about 1.4 s for 160k
 * characters). But where no token of the vocabulary holds the replacement character `▁` right after
 * another character (a token is `▁…▁` or begins with its `▁`s: what SentencePiece's whitespace
 * splitting makes), no merge can join the two sides of such a place, so the text can be cut there
 * and each piece encoded alone with the same result. A piece after the first starts with the space
 * that becomes its `▁`: under a Prepend normalizer (which prepends to every text) it is given
 * without it, the prepended `▁` standing for it; under Metaspace (which prepends only to a text
 * that does not begin with one) it is given as it is. Where anything about the layout is otherwise, or the text holds an added
 * token (whose neighbours the library normalizes apart), nothing is split.
 *
 * Returns undefined where the layout does not allow it.
 */
export function wordSplitter(json: TokenizerJson): ((text: string) => string[]) | undefined {
  const layout = sentencePieceLayout(json);
  if (!layout) return undefined;
  const r = layout.replacement;
  for (const tok of Object.keys(json.model.vocab)) {
    for (let i = 1; i < tok.length; i++) if (tok[i] === r && tok[i - 1] !== r) return undefined;
  }
  const added = json.added_tokens.map((t) => t.content).filter((c) => c.length > 0);
  const isSpace = (c: string) => c === ' ' || c === r;
  return (text) => {
    if (added.some((a) => text.includes(a))) return [text];
    const pieces: string[] = [];
    let start = 0;
    for (let i = 1; i < text.length; i++) {
      if (isSpace(text[i]) && !isSpace(text[i - 1])) {
        pieces.push(text.slice(start, i));
        start = i;
      }
    }
    const last = text.slice(start);
    // a run of spaces at the end stays with the piece before it (nothing would prepend its first `▁`)
    if (pieces.length && [...last].every(isSpace)) pieces[pieces.length - 1] += last;
    else pieces.push(last);
    return layout.prepends ? pieces.map((p, i) => (i === 0 ? p : p.slice(1))) : pieces;
  };
}

/** The two layouts of SentencePiece-style tokenizer.json files: a normalizer, or a Metaspace pre-tokenizer. */
function sentencePieceLayout(json: TokenizerJson): { replacement: string; prepends: boolean } | undefined {
  const n = json.normalizer;
  const pre = json.pre_tokenizer;
  // Prepend ▁, then every space replaced by ▁, and no pre-tokenizer (Llama 2's conversion)
  if (n?.type === 'Sequence' && pre === null) {
    const [a, b, ...rest] = (n.normalizers as Json[] | undefined) ?? [];
    const pattern = b?.pattern as Json | undefined;
    if (rest.length || a?.type !== 'Prepend' || b?.type !== 'Replace' || pattern?.String !== ' ') return undefined;
    if (typeof a.prepend !== 'string' || a.prepend !== b.content || [...a.prepend].length !== 1) return undefined;
    return { replacement: a.prepend, prepends: true };
  }
  // no normalizer, a Metaspace pre-tokenizer that does not split (the newer conversion): it prepends
  // `▁` only to a text that does not begin with one, so a piece keeps its space
  if (n === null && pre?.type === 'Metaspace' && pre.split === false && typeof pre.replacement === 'string') {
    if ([...pre.replacement].length !== 1) return undefined;
    return { replacement: pre.replacement, prepends: false };
  }
  return undefined;
}
