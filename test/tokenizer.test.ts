import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import oracle from 'gpt-3-encoder';
import t from 'tap';
import { CheckpointError } from '../src/errors.ts';
import { bundledVocabDir, Rng } from '../src/model/gpt2/tiny.ts';
import { Gpt2Tokenizer } from '../src/model/gpt2/tokenizer.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-tok-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const vocabDir = join(root, 'vocab');
mkdirSync(vocabDir);
writeFileSync(join(vocabDir, 'vocab.json'), readFileSync(join(bundledVocabDir(), 'encoder.json')));
writeFileSync(join(vocabDir, 'merges.txt'), readFileSync(join(bundledVocabDir(), 'vocab.bpe')));
const tok = Gpt2Tokenizer.fromDir(vocabDir);

// Hand-picked strings, one per difficulty, then random mixtures of the same ingredients.
const seeds = [
  'Hello world',
  'hello world',
  'HELLO WORLD',
  ' Hello',
  '  Hello',
  'Hello ',
  'Hello  ',
  '',
  "I'm",
  "you're",
  "we've",
  "they'll",
  "he'd",
  "it's",
  "DON'T",
  "I'M",
  "'s'",
  "rock 'n' roll",
  "o'clock",
  '1',
  '12',
  '123',
  '1234',
  '12345678901234567890',
  '3.14159',
  '-42',
  '1,000,000',
  '2024-01-01',
  '0x1F',
  '1e-5',
  '٣٤٥',
  'naïve café',
  'Ünïcödé',
  'straße',
  'Москва',
  'Ελληνικά',
  'עברית',
  'العربية',
  'हिन्दी',
  '中文字符',
  '日本語のテキスト',
  '한국어',
  '😀',
  '👍🏽',
  '👨‍👩‍👧‍👦',
  '🇫🇷',
  '❤️',
  'a😀b',
  ' 😀 ',
  '✓ ✗ → ← ∑ ∫',
  '\n',
  '\n\n',
  '\t',
  ' \t\n',
  'a\n\nb',
  'line1\r\nline2',
  '   leading',
  'trailing   ',
  'a    b',
  '\u00a0nbsp',
  'x\u2003em-space',
  '\u3000ideographic',
  'function f(x) { return x * 2; }',
  'def f(x):\n    return x ** 2\n',
  'if (a && b || !c) {}',
  '<div class="x">Hi</div>',
  'SELECT * FROM t WHERE id = 1;',
  '#include <stdio.h>',
  'x += 1; // comment',
  '{"key": [1, 2, {"n": null}]}',
  'https://example.com/path?q=1&r=2',
  'user@example.com',
  '$100.00',
  '50%',
  '#hashtag',
  '@mention',
  '...',
  '!!!???',
  '—–-',
  '«quotes»',
  '"double" and \'single\'',
  'ALLCAPS',
  'camelCaseWord',
  'snake_case_word',
  'kebab-case-word',
  'Mr. Smith',
  'e.g.',
  'U.S.A.',
  'The quick brown fox jumps over the lazy dog.',
  'Love and hate are two sides of the same coin.',
  'A'.repeat(40),
  'ab'.repeat(30),
  ' '.repeat(17),
  '\n'.repeat(7),
  'x\u0301',
  '\u200bzero-width',
];
const ingredients = [
  ...seeds.filter((s) => s.length < 30),
  ' ',
  '  ',
  '\n',
  '\t',
  "'",
  "'ll",
  '0',
  '99',
  'é',
  '🙂',
  '​',
];
const rng = new Rng(7);
const corpus = [...seeds];
while (corpus.length < 260) {
  const parts = 1 + Math.floor(rng.next() * 5);
  let s = '';
  for (let i = 0; i < parts; i++) s += ingredients[Math.floor(rng.next() * ingredients.length)];
  corpus.push(s);
}

t.test('matches an independent GPT-2 encoder on a varied corpus', async (t) => {
  t.ok(corpus.length >= 200, `${corpus.length} strings`);
  const mismatches = corpus.filter((s) => JSON.stringify(tok.encode(s)) !== JSON.stringify(oracle.encode(s)));
  t.same(mismatches, [], 'no string encodes differently');
  t.same(tok.encode('Hello world'), [15496, 995]);
});

t.test('decode(encode(s)) = s', async (t) => {
  const broken = corpus.filter((s) => tok.decode(tok.encode(s)) !== s);
  t.same(broken, []);
  // decode agrees with the independent decoder on ids it did not produce
  const ids = oracle.encode('Steering vectors, ça marche 🎯');
  t.equal(tok.decode(ids), oracle.decode(ids));
});

t.test('special token and whitespace classes', async (t) => {
  t.equal(tok.eosId, 50256);
  t.same(
    tok.encode('a<|endoftext|>b'),
    [...tok.encode('a'), 50256, ...tok.encode('b')],
    'recognised as Hugging Face does',
  );
  t.same(tok.encode('a<|endoftext|>b', { allowSpecial: false }), oracle.encode('a<|endoftext|>b'), 'or spelled out');
  t.equal(tok.decode([50256]), '<|endoftext|>');
  // U+0085 is Unicode White_Space (as in HF tokenizers), so it splits like "\n" does: "a", "\u0085",
  // "\u0085", "b" (JavaScript's \s, which the oracle uses, would keep "\u0085\u0085" in one piece).
  const nel = tok.encode('\u0085');
  t.same(tok.encode('a\u0085\u0085b'), [...tok.encode('a'), ...nel, ...nel, ...tok.encode('b')]);
  t.same(tok.encode('a\n\nb'), [...tok.encode('a'), ...tok.encode('\n'), ...tok.encode('\n'), ...tok.encode('b')]);
  t.equal(tok.decode(tok.encode('\ufeffBOM')), '\ufeffBOM', 'a leading U+FEFF survives decoding');
  t.throws(() => tok.decode([50257]), RangeError, 'ids outside the vocabulary are refused');
  // a token that is half a UTF-8 character decodes to U+FFFD, never to a crash
  const [first] = tok.encode('😀');
  t.equal(tok.decode([first]), '\ufffd');
});

t.test('tokenizer.json gives the same ids (both merge spellings)', async (t) => {
  const vocab = JSON.parse(readFileSync(join(vocabDir, 'vocab.json'), 'utf8'));
  const merges = readFileSync(join(vocabDir, 'merges.txt'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'));
  for (const [name, m] of [
    ['strings', merges],
    ['pairs', merges.map((x) => x.split(' '))],
  ] as const) {
    const dir = join(root, `tj-${name}`);
    mkdirSync(dir);
    writeFileSync(
      join(dir, 'tokenizer.json'),
      JSON.stringify({
        model: { type: 'BPE', vocab, merges: m },
        added_tokens: [{ id: 50256, content: '<|endoftext|>', special: true }],
      }),
    );
    const tj = Gpt2Tokenizer.fromDir(dir);
    t.same(
      corpus.filter((s) => JSON.stringify(tj.encode(s)) !== JSON.stringify(tok.encode(s))),
      [],
      name,
    );
    t.same(tj.encode('x<|endoftext|>'), [87, 50256]);
  }
});

t.test('missing or broken tokenizer files name the file', async (t) => {
  const empty = join(root, 'empty');
  mkdirSync(empty);
  t.throws(() => Gpt2Tokenizer.fromDir(empty), { name: 'CheckpointError', message: /vocab\.json: missing tokenizer/ });
  const bad = join(root, 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'vocab.json'), '{');
  writeFileSync(join(bad, 'merges.txt'), '#version: 0.2\na b\n');
  t.throws(() => Gpt2Tokenizer.fromDir(bad), CheckpointError);
  const badMerges = join(root, 'bad-merges');
  mkdirSync(badMerges);
  writeFileSync(join(badMerges, 'vocab.json'), '{"a": 0, "<|endoftext|>": 1}');
  writeFileSync(join(badMerges, 'merges.txt'), 'a b c\n');
  t.throws(() => Gpt2Tokenizer.fromDir(badMerges), { message: /merges\.txt: line 1 is not a merge/ });
});
