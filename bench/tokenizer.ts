/**
 * Encoding speed: steerd's GPT-2 reader (Gpt2Tokenizer, vocab.json + merges.txt) against the
 * tokenizer.json reader (HfTokenizer, @huggingface/tokenizers) on the same vocabulary and text,
 * then HfTokenizer on the random Llama 3, Qwen2 and SentencePiece tokenizers; the Rust tokenizers
 * (the reference the tests compare with) on each for scale. The text is the project's README and design
 * document, `--repeat` times over. Each reader encodes it once cold (empty caches), then `--runs`
 * times; the best warm run is reported.
 *
 *   npm run bench:tokenizer [-- --repeat 4 --runs 5]
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Tokenizer as Reference } from 'tokenizers';
import { bundledVocabDir } from '../src/model/gpt2/tiny.ts';
import { Gpt2Tokenizer } from '../src/model/gpt2/tokenizer.ts';
import { HfTokenizer } from '../src/model/hf-tokenizer.ts';
import { TINY_TOKENIZER_KINDS, writeTinyTokenizer } from '../src/model/llama/tiny-tokenizer.ts';

const { values: o } = parseArgs({
  options: { repeat: { type: 'string', default: '4' }, runs: { type: 'string', default: '5' } },
});
const root = join(import.meta.dirname, '..');
const text = ['README.md', 'docs/architecture.md']
  .map((f) => readFileSync(join(root, f), 'utf8'))
  .join('\n')
  .repeat(Number(o.repeat));

const dir = mkdtempSync(join(tmpdir(), 'steerd-bench-tok-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// GPT-2's vocabulary both ways: vocab.json + merges.txt, and the tokenizer.json of the same
const gpt2 = join(dir, 'gpt2');
const vocab = bundledVocabDir();
mkdirSync(gpt2);
copyFileSync(join(vocab, 'encoder.json'), join(gpt2, 'vocab.json'));
copyFileSync(join(vocab, 'vocab.bpe'), join(gpt2, 'merges.txt'));
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
writeFileSync(
  join(gpt2, 'tokenizer.json'),
  JSON.stringify({
    added_tokens: [
      {
        id: 50256,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      vocab: JSON.parse(readFileSync(join(vocab, 'encoder.json'), 'utf8')),
      merges: readFileSync(join(vocab, 'vocab.bpe'), 'utf8')
        .split('\n')
        .filter((l) => l && !l.startsWith('#version')),
    },
  }),
);
writeFileSync(join(gpt2, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>' }));

function time(name: string, load: () => { encode(s: string): number[] }) {
  let t0 = performance.now();
  const tok = load();
  const loadMs = performance.now() - t0;
  t0 = performance.now();
  const n = tok.encode(text).length;
  const cold = performance.now() - t0;
  let best = Infinity;
  for (let i = 0; i < Number(o.runs); i++) {
    t0 = performance.now();
    tok.encode(text);
    best = Math.min(best, performance.now() - t0);
  }
  report(name, n, loadMs, cold, best);
}

function report(name: string, n: number, loadMs: number, cold: number, warm: number) {
  const mb = text.length / 1e6;
  console.log(
    `${name.padEnd(34)} ${String(n).padStart(8)} tokens  load ${loadMs.toFixed(0).padStart(5)} ms  ` +
      `cold ${cold.toFixed(0).padStart(5)} ms  warm ${warm.toFixed(0).padStart(5)} ms  ` +
      `${(mb / (warm / 1000)).toFixed(2)} MB/s  ${((n / warm) * 1000).toFixed(0)} tokens/s`,
  );
}

console.log(`# ${(text.length / 1e6).toFixed(2)} M characters`);
time('Gpt2Tokenizer (vocab.json)', () => Gpt2Tokenizer.fromDir(gpt2));
time('HfTokenizer (GPT-2 tokenizer.json)', () => HfTokenizer.fromDir(gpt2));
for (const kind of TINY_TOKENIZER_KINDS) {
  const d = join(dir, kind);
  mkdirSync(d);
  writeTinyTokenizer(d, kind);
  time(`HfTokenizer (${kind})`, () => HfTokenizer.fromDir(d));
}
for (const [name, d] of [['GPT-2', gpt2], ...TINY_TOKENIZER_KINDS.map((k) => [k, join(dir, k)])]) {
  let t0 = performance.now();
  const ref = Reference.fromFile(join(d, 'tokenizer.json'));
  const loadMs = performance.now() - t0;
  const encode = async () => (await ref.encode(text, null, { addSpecialTokens: false })).getIds().length;
  t0 = performance.now();
  const n = await encode();
  const cold = performance.now() - t0;
  let best = Infinity;
  for (let i = 0; i < Number(o.runs); i++) {
    t0 = performance.now();
    await encode();
    best = Math.min(best, performance.now() - t0);
  }
  report(`Rust tokenizers (${name})`, n, loadMs, cold, best);
}
