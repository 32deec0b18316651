/**
 * Tokenizers from Hugging Face's tokenizer.json (hf-tokenizer.ts) against the independent official
 * implementation, the Rust `tokenizers` library (its Node bindings): every random tokenizer kind
 * steerd writes (Llama 3, Qwen2, SentencePiece as in Llama 2), plus the Metaspace spelling of newer
 * SentencePiece conversions and GPT-2's own as a tokenizer.json. Encodings of a varied corpus,
 * decoding, the bytes of one token at a time, BOS/EOS/addBos and their precedence, what is
 * refused, and a random checkpoint of each kind through the engine.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Tokenizer as Reference } from 'tokenizers';
import { TextStream } from '../src/engine/detok.ts';
import { CheckpointError } from '../src/errors.ts';
import { loadTokenizer } from '../src/model/families.ts';
import { bundledVocabDir, Rng } from '../src/model/gpt2/tiny.ts';
import { HfTokenizer } from '../src/model/hf-tokenizer.ts';
import { writeTinyLlamaCheckpoint } from '../src/model/llama/tiny.ts';
import { TINY_TOKENIZER_KINDS, writeTinyTokenizer } from '../src/model/llama/tiny-tokenizer.ts';
import { encodeText } from '../src/model/tokenizer.ts';
import { collect } from './helpers/engine-util.ts';
import { startEngine } from './helpers/provider.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-hftok-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

type Json = Record<string, unknown>;
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Json;
const writeJson = (file: string, v: unknown) => writeFileSync(file, JSON.stringify(v));

/** A folder with a tokenizer.json (and tokenizer_config.json) derived from a written one by `edit`. */
function variant(from: string, name: string, edit: (j: Json) => void, config?: Json): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const j = readJson(join(from, 'tokenizer.json'));
  edit(j);
  writeJson(join(dir, 'tokenizer.json'), j);
  writeJson(join(dir, 'tokenizer_config.json'), config ?? readJson(join(from, 'tokenizer_config.json')));
  return dir;
}

// The kinds: steerd's random tokenizers, and two spellings real checkpoints have besides.
const dirs: Record<string, string> = {};
for (const kind of TINY_TOKENIZER_KINDS) {
  dirs[kind] = join(root, kind);
  mkdirSync(dirs[kind]);
  writeTinyTokenizer(dirs[kind], kind);
}
// Newer conversions of Llama 2 and Mistral: no normalizer, a Metaspace pre-tokenizer that prepends
// `▁` to the first section only
dirs.metaspace = variant(dirs.sentencepiece, 'metaspace', (j) => {
  j.normalizer = null;
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
});
// GPT-2's own vocabulary as a tokenizer.json: a ByteLevel pre-tokenizer with GPT-2's pattern
{
  const dir = join(root, 'gpt2');
  mkdirSync(dir);
  const vocab = readJson(join(bundledVocabDir(), 'encoder.json'));
  const merges = readFileSync(join(bundledVocabDir(), 'vocab.bpe'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#version'));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  writeJson(join(dir, 'tokenizer.json'), {
    version: '1.0',
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
    model: { type: 'BPE', vocab, merges },
  });
  writeJson(join(dir, 'tokenizer_config.json'), { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' });
  dirs.gpt2 = dir;
}
const KINDS = Object.keys(dirs);
const SENTENCEPIECE = new Set(['sentencepiece', 'metaspace']);

// ---------------------------------------------------------------------------------------------
// The corpus: hand-picked strings, one per difficulty, then random mixtures of the same.

const seeds = [
  'Hello world',
  'The quick brown fox jumps over the lazy dog.',
  ' Hello',
  '  Hello',
  'Hello ',
  'Hello   ',
  '   leading and trailing   ',
  '',
  ' ',
  "I'm you're we've they'll he'd it's",
  "DON'T I'M YOU'RE",
  "rock 'n' roll o'clock",
  '1',
  '12',
  '123',
  '1234',
  '12345678901234567890',
  '3.14159 -42 1,000,000 2024-01-01 0x1F 1e-5',
  '$100.00 50% #hashtag @mention',
  '٣٤٥ ๑๒๓',
  'naïve café résumé',
  'Ünïcödé straße',
  'Москва Ελληνικά עברית العربية हिन्दी',
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
  'e\u0301',
  '\u00e9',
  'cafe\u0301 vs caf\u00e9',
  'A\u030a\u0327 Å',
  '\u1100\u1161\u11a8 각',
  'x\u0301\u0302\u0303',
  '\n',
  '\n\n',
  '\t',
  ' \t\n',
  'a\n\nb',
  'line1\r\nline2\r\n',
  'a    b',
  '\u00a0nbsp',
  'x\u2003em-space',
  '\u3000ideographic',
  '\u0085nel\u0085',
  '\ufeffBOM',
  '\u200bzero-width',
  'function f(x) { return x * 2; }',
  'def f(x):\n    return x ** 2\n',
  '\tif (a && b || !c) {\n\t\treturn;\n\t}',
  '<div class="x">Hi</div>',
  'SELECT * FROM t WHERE id = 1;',
  '{"key": [1, 2, {"n": null}]}',
  'https://example.com/path?q=1&r=2',
  '...',
  '!!!???',
  '—–-',
  '«quotes» "double" \'single\'',
  'camelCaseWord snake_case_word kebab-case-word',
  'A'.repeat(40),
  'ab'.repeat(30),
  ' '.repeat(17),
  '\n'.repeat(7),
  '0'.repeat(25),
];
// each kind's special tokens written inline
const specials = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|eot_id|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|endoftext|>',
  '<|im_start|>',
  '<|im_end|>',
  '<s>',
  '</s>',
  '<unk>',
];
const inline = [
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>',
  '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n',
  '<s>[INST] Hello [/INST] Hi</s>',
  'a<|endoftext|>b',
  'x <s> y',
  '<s>Hello',
  'Hello</s>',
  '<<s>>',
  '<|eot_id|><|eot_id|>',
];
const ingredients = [...seeds.filter((s) => s.length < 30), ...specials, ' ', '  ', '\n', "'", "'ll", '0', '99', '🙂'];
const rng = new Rng(11);
const corpus = [...seeds, ...inline];
while (corpus.length < 300) {
  const parts = 1 + Math.floor(rng.next() * 5);
  let s = '';
  for (let i = 0; i < parts; i++) s += ingredients[Math.floor(rng.next() * ingredients.length)];
  // now and then, the same text in its decomposed form
  corpus.push(rng.next() < 0.15 ? s.normalize('NFD') : s);
}
const hasSpecial = (s: string) => specials.some((x) => s.includes(x));

const reference = (dir: string) => Reference.fromFile(join(dir, 'tokenizer.json'));
const referenceIds = async (ref: Reference, texts: string[], addSpecialTokens = false) =>
  (await ref.encodeBatch(texts, { addSpecialTokens })).map((e) => e.getIds());

// ---------------------------------------------------------------------------------------------

for (const kind of KINDS) {
  t.test(`${kind}: encodings equal the Rust tokenizers'`, async (t) => {
    const tok = HfTokenizer.fromDir(dirs[kind]);
    t.ok(corpus.length >= 300, `${corpus.length} strings`);
    const want = await referenceIds(reference(dirs[kind]), corpus);
    const differ = corpus.filter((s, i) => JSON.stringify(tok.encode(s)) !== JSON.stringify(want[i]));
    t.same(differ, [], 'no string encodes differently');
  });

  t.test(
    `${kind}: a long text (the corpus joined, ${'>'}100k characters) encodes as the Rust tokenizers do`,
    async (t) => {
      const tok = HfTokenizer.fromDir(dirs[kind]);
      const long = corpus
        .filter((s) => !hasSpecial(s))
        .join(' ')
        .repeat(24);
      t.ok(long.length > 100_000, `${long.length} characters`);
      const [want] = await referenceIds(reference(dirs[kind]), [long]);
      const got = tok.encode(long);
      t.equal(got.length, want.length, `${want.length} tokens`);
      t.ok(JSON.stringify(got) === JSON.stringify(want), 'the same ids');
    },
  );

  t.test(`${kind}: special tokens spelled out (allowSpecial false)`, async (t) => {
    const tok = HfTokenizer.fromDir(dirs[kind]);
    // the reference: the same tokenizer.json with its special tokens taken out
    const plain = variant(dirs[kind], `${kind}-plain`, (j) => {
      j.added_tokens = (j.added_tokens as Json[]).filter((a) => a.special !== true);
    });
    const texts = corpus.filter(hasSpecial);
    const want = await referenceIds(reference(plain), texts);
    const differ = texts.filter(
      (s, i) => JSON.stringify(tok.encode(s, { allowSpecial: false })) !== JSON.stringify(want[i]),
    );
    t.same(differ, []);
    t.ok(
      texts.some((s) => JSON.stringify(tok.encode(s)) !== JSON.stringify(tok.encode(s, { allowSpecial: false }))),
      'and recognised by default',
    );
  });

  t.test(`${kind}: decoding and the bytes of one token at a time`, async (t) => {
    const tok = HfTokenizer.fromDir(dirs[kind]);
    // Hugging Face's SentencePiece decoders strip the space their normalizer prepended; steerd
    // keeps it (its tokens continue a prompt): the reference for those is the same decoder
    // without its Strip step.
    const refDir = SENTENCEPIECE.has(kind)
      ? variant(dirs[kind], `${kind}-nostrip`, (j) => {
          const d = j.decoder as { decoders: Json[] };
          d.decoders = d.decoders.filter((s) => s.type !== 'Strip');
        })
      : dirs[kind];
    const ref = reference(refDir);
    const encodings = corpus.map((s) => tok.encode(s)).filter((ids) => ids.length > 0);
    const want = await ref.decodeBatch(encodings, false);
    t.same(
      encodings.filter((ids, i) => tok.decode(ids) !== want[i]),
      [],
      'decode equals the reference decoder',
    );
    // every token alone: its bytes as the decoder spells them (half characters become U+FFFD)
    const all = Array.from({ length: tok.vocabSize }, (_, id) => [id]);
    const single = await ref.decodeBatch(all, false);
    t.same(
      all.filter(([id]) => tok.decode([id]) !== single[id]).slice(0, 10),
      [],
      `each of the ${tok.vocabSize} tokens alone`,
    );
    // streaming: the tokens' bytes one at a time are the whole text's UTF-8
    const torn = encodings.filter((ids, i) => {
      const bytes = Buffer.concat(ids.map((id) => tok.bytes([id])));
      const stream = new TextStream(tok);
      let text = '';
      for (const id of ids) text += stream.push(id);
      text += stream.finish();
      return !bytes.equals(Buffer.from(want[i], 'utf8')) || text !== want[i];
    });
    t.same(torn, [], 'bytes of one token at a time, and the stream');
    t.ok(
      encodings.some((ids) => ids.some((id) => tok.decode([id]).includes('\ufffd'))),
      'the corpus has tokens that hold part of a character',
    );
    t.throws(() => tok.bytes([tok.vocabSize]), RangeError, 'ids outside the vocabulary are refused');
    // a model with more embedding rows than tokens: the rows between are padding, decoded as nothing
    const padded = join(root, `${kind}-padded`);
    cpSync(dirs[kind], padded, { recursive: true });
    const file = join(padded, 'config.json');
    const config = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
    writeFileSync(file, JSON.stringify({ ...config, vocab_size: tok.vocabSize + 7 }));
    const p = HfTokenizer.fromDir(padded);
    t.equal(p.bytes([1, tok.vocabSize + 6, 2]).length, tok.bytes([1, 2]).length, 'a padding row: no bytes');
    t.equal(p.decode([tok.vocabSize]), '');
    t.throws(() => p.bytes([tok.vocabSize + 7]), RangeError, 'beyond the rows: refused');
  });

  t.test(`${kind}: decode(encode(x)) gives x back`, async (t) => {
    const tok = HfTokenizer.fromDir(dirs[kind]);
    const normalizer = (readJson(join(dirs[kind], 'tokenizer.json')).normalizer as Json | null)?.type;
    const back = (s: string) => {
      const x = normalizer === 'NFC' ? s.normalize('NFC') : s;
      // the `▁` prepended to a text decodes to a space (Metaspace prepends none to one that starts with a space)
      if (kind === 'sentencepiece' && x !== '') return ` ${x}`;
      if (kind === 'metaspace' && x !== '' && !x.startsWith(' ')) return ` ${x}`;
      return x;
    };
    const texts = SENTENCEPIECE.has(kind) ? corpus.filter((s) => !hasSpecial(s)) : corpus;
    t.same(
      texts.filter((s) => tok.decode(tok.encode(s)) !== back(s)),
      [],
      normalizer === 'NFC' ? 'as NFC' : SENTENCEPIECE.has(kind) ? 'after a space' : 'exactly',
    );
    if (normalizer === 'NFC') t.equal(tok.decode(tok.encode('cafe\u0301')), 'caf\u00e9');
  });

  t.test(`${kind}: BOS, EOS and addBos as the files say`, async (t) => {
    const tok = HfTokenizer.fromDir(dirs[kind]);
    const ref = reference(dirs[kind]);
    const config = readJson(join(dirs[kind], 'tokenizer_config.json'));
    const [plain, withSpecial] = await Promise.all([
      referenceIds(ref, ['Hello world']),
      referenceIds(ref, ['Hello world'], true),
    ]);
    // what the reference's post-processor adds is what encodeText prepends by default
    t.same(encodeText(tok, 'Hello world'), withSpecial[0], 'the BOS the post-processor adds');
    t.equal(tok.addBos, withSpecial[0].length > plain[0].length);
    t.equal(tok.eosId, ref.tokenToId(config.eos_token as string), 'EOS is the tokenizer config eos_token');
    if (tok.addBos) t.equal(tok.bosId, ref.tokenToId(config.bos_token as string));
    t.equal(tok.token(tok.eosId), config.eos_token);
    t.equal(tok.vocabSize, ref.getVocabSize(true));
  });
}

t.test('the kinds: BOS, EOS and addBos of Llama 3, Qwen2 and Llama 2', async (t) => {
  const get = (kind: string) => HfTokenizer.fromDir(dirs[kind]);
  const [l3, qw, sp] = [get('llama3'), get('qwen2'), get('sentencepiece')];
  t.same([l3.token(l3.bosId), l3.token(l3.eosId), l3.addBos], ['<|begin_of_text|>', '<|end_of_text|>', true]);
  t.same([qw.token(qw.eosId), qw.addBos], ['<|endoftext|>', false]);
  t.same([sp.token(sp.bosId), sp.token(sp.eosId), sp.addBos], ['<s>', '</s>', true]);
  t.same([sp.bosId, sp.eosId], [1, 2]);
});

t.test('precedence: config.json, tokenizer_config.json and the post-processor', async (t) => {
  const l3 = dirs.llama3;
  const ref = reference(l3);
  const id = (s: string) => ref.tokenToId(s)!;
  const cfg = readJson(join(l3, 'tokenizer_config.json'));
  const same = (j: Json) => j;
  // config.json's eos_token_id wins, the first of a list
  let dir = variant(l3, 'p-eos-list', same);
  writeJson(join(dir, 'config.json'), { eos_token_id: [id('<|eot_id|>'), id('<|end_of_text|>')] });
  t.equal(HfTokenizer.fromDir(dir).eosId, id('<|eot_id|>'), 'config.json eos_token_id, first of a list');
  // add_bos_token false in tokenizer_config.json overrides the template
  dir = variant(l3, 'p-no-bos', same, { ...cfg, add_bos_token: false });
  t.equal(HfTokenizer.fromDir(dir).addBos, false, 'add_bos_token false beats the template');
  // without add_bos_token, the template decides
  const { add_bos_token: _, ...noFlag } = cfg;
  dir = variant(l3, 'p-template', same, { ...noFlag, bos_token: { content: '<|begin_of_text|>' } });
  t.same([HfTokenizer.fromDir(dir).addBos, HfTokenizer.fromDir(dir).bosId], [true, id('<|begin_of_text|>')]);
  // Qwen2 has no template and no bos_token: BOS is config.json's, not added
  dir = variant(dirs.qwen2, 'p-qwen', same);
  writeJson(join(dir, 'config.json'), { bos_token_id: 7, eos_token_id: 50258 });
  const qw = HfTokenizer.fromDir(dir);
  t.same([qw.bosId, qw.eosId, qw.addBos], [7, 50258, false]);
  // names the vocabulary lacks, ids outside it
  dir = variant(l3, 'p-bad-bos', same, { ...cfg, bos_token: '<|nope|>' });
  t.throws(() => HfTokenizer.fromDir(dir), {
    name: 'CheckpointError',
    message: /tokenizer_config\.json: bos_token "<\|nope\|>" is not in tokenizer\.json/,
  });
  dir = variant(l3, 'p-bad-eos', same);
  writeJson(join(dir, 'config.json'), { eos_token_id: 10 ** 6 });
  t.throws(() => HfTokenizer.fromDir(dir), { message: /config\.json: eos_token_id 1000000 is not a token/ });
  dir = variant(l3, 'p-no-eos', same, {});
  t.throws(() => HfTokenizer.fromDir(dir), { message: /names no eos_token_id/ });
});

t.test('refused: what cannot be tokenized as Hugging Face does, naming the file', async (t) => {
  const sp = dirs.sentencepiece;
  const refused = (name: string, edit: (j: Json) => void, message: RegExp) => {
    const dir = variant(sp, `r-${name}`, edit);
    t.throws(
      () => HfTokenizer.fromDir(dir),
      { name: 'CheckpointError', message: new RegExp(`tokenizer\\.json: .*${message.source}`) },
      name,
    );
  };
  const model = (j: Json) => j.model as Json;
  refused('unigram', (j) => Object.assign(model(j), { type: 'Unigram' }), /model is "Unigram"/);
  refused('dropout', (j) => Object.assign(model(j), { dropout: 0.1 }), /dropout 0\.1/);
  refused('prefix', (j) => Object.assign(model(j), { continuing_subword_prefix: '##' }), /continuing_subword_prefix/);
  refused('metaspace-split', (j) => (j.pre_tokenizer = { type: 'Metaspace', split: true }), /splits at spaces/);
  refused(
    'split-merged',
    (j) => (j.pre_tokenizer = { type: 'Split', pattern: { Regex: '\\s' }, behavior: 'MergedWithPrevious' }),
    /"MergedWithPrevious" behaviour/,
  );
  refused('bert', (j) => (j.pre_tokenizer = { type: 'BertPreTokenizer' }), /pre-tokenizer "BertPreTokenizer"/);
  refused('precompiled', (j) => (j.normalizer = { type: 'Precompiled', precompiled_charsmap: '' }), /"Precompiled"/);
  refused('wordpiece', (j) => (j.decoder = { type: 'WordPiece' }), /decoder "WordPiece"/);
  refused('no-decoder', (j) => (j.decoder = null), /no decoder/);
  refused('single-word', (j) => ((j.added_tokens as Json[])[1].single_word = true), /"<s>" is single_word/);
  refused('fuse-unk', (j) => delete (model(j).vocab as Json)['<0x41>'], /fuses unknown tokens/);
  // what the library itself cannot read: a pattern its regex translation rejects
  refused(
    'regex',
    (j) => (j.pre_tokenizer = { type: 'Split', pattern: { Regex: '[a&&]' }, behavior: 'Isolated', invert: false }),
    /cannot be read/,
  );
  const dir = variant(sp, 'r-json', () => {});
  writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
  t.throws(() => HfTokenizer.fromDir(dir), {
    name: 'CheckpointError',
    message: /tokenizer\.json: cannot read as JSON/,
  });
});

t.test('a Llama checkpoint: tokenizer.json first, vocab.json + merges.txt, never tokenizer.model alone', async (t) => {
  const dir = join(root, 'ck');
  writeTinyLlamaCheckpoint(dir, { layers: 1, embd: 16, heads: 2, ctx: 8 });
  t.equal(loadTokenizer(dir).constructor.name, 'Gpt2Tokenizer', 'GPT-2 files: the byte-level BPE reader');
  writeFileSync(join(dir, 'tokenizer.json'), readFileSync(join(dirs.gpt2, 'tokenizer.json')));
  t.type(loadTokenizer(dir), HfTokenizer, 'a tokenizer.json is read by the library');
  rmSync(join(dir, 'tokenizer.json'));
  rmSync(join(dir, 'vocab.json'));
  writeFileSync(join(dir, 'tokenizer.model'), '');
  let e: unknown;
  try {
    loadTokenizer(dir);
  } catch (err) {
    e = err;
  }
  t.type(e, CheckpointError);
  t.equal((e as CheckpointError).file, join(dir, 'tokenizer.model'));
  t.match(
    (e as Error).message,
    /tokenizer\.model: is a SentencePiece model, which steerd does not read: it needs the checkpoint's tokenizer\.json/,
  );
});

t.test('a random checkpoint of each kind loads and generates through the engine', async (t) => {
  for (const kind of TINY_TOKENIZER_KINDS) {
    const dir = join(root, `engine-${kind}`);
    writeTinyLlamaCheckpoint(dir, { layers: 2, embd: 32, heads: 4, kvHeads: 2, ctx: 32, seed: 3, tokenizer: kind });
    const cfg = readJson(join(dir, 'config.json'));
    const engine = await startEngine({ model: dir });
    try {
      const tok = engine.tokenizer;
      t.type(tok, HfTokenizer, kind);
      t.same(
        [cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id],
        [tok.vocabSize, tok.bosId, tok.eosId],
        `${kind}: config.json follows the tokenizer`,
      );
      const prompt = encodeText(tok, 'Hello, world! 😀');
      t.equal(prompt[0] === tok.bosId, tok.addBos, `${kind}: BOS where the tokenizer adds one`);
      const got = await collect(engine.generate({ prompt, max_new_tokens: 6, temperature: 0, stop_at_eos: false }));
      t.equal(got.ids.length, 6, `${kind}: six tokens`);
      t.ok(
        got.ids.every((id) => id >= 0 && id < tok.vocabSize),
        `${kind}: ids in the vocabulary`,
      );
      t.equal(got.text, tok.decode(got.ids), `${kind}: the streamed text is the tokens' text`);
    } finally {
      await engine.close();
    }
  }
});
