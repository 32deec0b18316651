import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { CheckpointError } from '../src/errors.ts';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { GPT2 } from '../src/model/gpt2/family.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-ckpt-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));

const good = join(root, 'good');
writeTinyCheckpoint(good, { layers: 2, embd: 32, heads: 2, ctx: 16 });
let n = 0;

/** A copy of the good checkpoint, altered by `edit`. */
function variant(edit: (dir: string) => void): string {
  const dir = join(root, `v${n++}`);
  mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt'])
    copyFileSync(join(good, f), join(dir, f));
  edit(dir);
  return dir;
}

function editConfig(dir: string, change: Record<string, unknown>) {
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...change }));
}

/** Asserts that opening fails with a CheckpointError naming `file` and matching `problem`. */
function refuses(tt: Test, dir: string, file: string, problem: RegExp, what: string) {
  try {
    openCheckpoint(dir);
    tt.fail(`${what}: expected an error`);
  } catch (e) {
    tt.type(e, CheckpointError, `${what}: a CheckpointError`);
    const err = e as CheckpointError;
    tt.equal(err.file, join(dir, file), `${what}: names ${file}`);
    tt.ok(err.message.startsWith(join(dir, file)), `${what}: message starts with the path`);
    tt.match(err.message, problem, `${what}: says ${problem}`);
  }
}

t.test('a good checkpoint opens with canonical names and a tied head', async (t) => {
  const ck = openCheckpoint(good, GPT2);
  t.equal(ck.config.n_layer, 2);
  t.equal(ck.config.n_inner, 128, 'n_inner null means 4 x n_embd');
  t.equal(ck.params.size, 2 + 12 * 2 + 2, 'every GPT-2 parameter and nothing else');
  t.ok(ck.tiedLmHead);
  const e = ck.params.get('h.1.attn.c_attn.weight')!;
  t.same(e.shape, [32, 96]);
  // the recorded offset really locates the tensor: compare with the bytes read independently
  const buf = readFileSync(join(good, 'model.safetensors'));
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + hlen).toString());
  t.equal(e.offset, 8 + hlen + header['h.1.attn.c_attn.weight'].data_offsets[0]);
  t.equal(e.length, 32 * 96 * 4);
});

t.test('layouts written by save_pretrained are accepted', async (t) => {
  const dir = join(root, 'saved');
  writeTinyCheckpoint(dir, {
    layers: 2,
    embd: 32,
    heads: 2,
    ctx: 16,
    prefix: 'transformer.',
    lmHead: 'copy',
    maskBuffers: true,
  });
  const ck = openCheckpoint(dir);
  t.ok(ck.params.has('h.0.ln_1.weight'), 'transformer. prefix dropped');
  t.notOk(
    [...ck.params.keys()].some((k) => k.endsWith('attn.bias') && !k.includes('c_')),
    'mask buffers ignored',
  );
  t.notOk(ck.tiedLmHead, 'explicit lm_head used');
});

t.test('bad checkpoints name the file and the problem', async (t) => {
  refuses(
    t,
    variant((d) => unlinkSync(join(d, 'config.json'))),
    'config.json',
    /cannot read \(ENOENT\)/,
    'missing config',
  );
  refuses(
    t,
    variant((d) => writeFileSync(join(d, 'config.json'), '{"model_type": "gpt2",')),
    'config.json',
    /not valid JSON/,
    'broken JSON',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { model_type: 'falcon', architectures: ['FalconForCausalLM'] })),
    'config.json',
    /model_type is "falcon" \(FalconForCausalLM\).*GPT-2/,
    'other architecture',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { activation_function: 'relu' })),
    'config.json',
    /activation_function "relu"/,
    'activation',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { n_head: 3 })),
    'config.json',
    /not a multiple of n_head/,
    'heads',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { n_layer: 0 })),
    'config.json',
    /"n_layer" must be a positive integer/,
    'layers',
  );
  refuses(
    t,
    variant((d) => unlinkSync(join(d, 'model.safetensors'))),
    'model.safetensors',
    /missing/,
    'missing weights',
  );
  refuses(
    t,
    variant((d) => {
      unlinkSync(join(d, 'model.safetensors'));
      writeFileSync(join(d, 'pytorch_model.bin'), 'x');
    }),
    'model.safetensors',
    /found pytorch_model\.bin/,
    'pickle only',
  );
  refuses(
    t,
    variant((d) => truncateSync(join(d, 'model.safetensors'), 4)),
    'model.safetensors',
    /truncated: 4 bytes/,
    'shorter than the length prefix',
  );
  refuses(
    t,
    variant((d) => {
      const f = join(d, 'model.safetensors');
      truncateSync(f, readFileSync(f).length - 100);
    }),
    'model.safetensors',
    /truncated: tensor ".*" ends at byte \d+ but the file has \d+ bytes/,
    'truncated data',
  );
  refuses(
    t,
    variant((d) => {
      const f = join(d, 'model.safetensors');
      const b = readFileSync(f);
      b.writeBigUInt64LE(BigInt(b.length * 2), 0);
      writeFileSync(f, b);
    }),
    'model.safetensors',
    /corrupt header: declares \d+ header bytes/,
    'header length beyond the file',
  );
  refuses(
    t,
    variant((d) => {
      const f = join(d, 'model.safetensors');
      const b = readFileSync(f);
      b.write('#', 9); // inside the JSON header
      writeFileSync(f, b);
    }),
    'model.safetensors',
    /corrupt header: not valid JSON/,
    'garbled header',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { n_inner: 64 })),
    'model.safetensors',
    /"h\.0\.mlp\.c_fc\.weight" has shape \[32, 128\], expected \[32, 64\]/,
    'wrong shape',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { n_layer: 3 })),
    'model.safetensors',
    /missing tensor "h\.2\./,
    'missing tensor',
  );
  refuses(
    t,
    variant((d) => editConfig(d, { n_layer: 1 })),
    'model.safetensors',
    /unexpected tensor "h\.1\./,
    'extra tensor',
  );
});

t.test('weights of a dtype steerd does not convert are refused with the reason', async (t) => {
  // the first tensor's dtype rewritten in the header, F32 to I32: the same width, so the same offsets
  const dir = variant((d) => {
    const file = join(d, 'model.safetensors');
    const buf = readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = buf
      .subarray(8, 8 + n)
      .toString('utf8')
      .replace('"dtype":"F32"', '"dtype":"I32"');
    writeFileSync(file, Buffer.concat([buf.subarray(0, 8), Buffer.from(header), buf.subarray(8 + n)]));
  });
  refuses(t, dir, 'model.safetensors', /is I32; steerd reads float32, bfloat16 and float16 weights/, 'I32');
});
