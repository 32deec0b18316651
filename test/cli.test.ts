import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { GPT2 } from '../src/model/gpt2/family.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-cli-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const steerd = (...args: string[]) =>
  spawnSync(process.execPath, [join(import.meta.dirname, '..', 'bin', 'steerd.js'), ...args], { encoding: 'utf8' });

t.test('model tiny then model build, through the package bin', async (t) => {
  const dir = join(root, 'tiny');
  const tiny = steerd(
    'model',
    'tiny',
    dir,
    '--layers',
    '3',
    '--embd',
    '48',
    '--heads',
    '3',
    '--ctx',
    '32',
    '--seed',
    '9',
  );
  t.equal(tiny.status, 0, tiny.stderr);
  const ck = openCheckpoint(dir, GPT2);
  t.same(
    [ck.config.n_layer, ck.config.n_embd, ck.config.n_head, ck.config.n_positions, ck.config.vocab_size],
    [3, 48, 3, 32, 50257],
  );

  const first = steerd('model', 'build', dir);
  t.equal(first.status, 0, first.stderr);
  t.match(first.stdout, /built .*model\.onnx/);
  const mtime = statSync(join(dir, 'model.onnx')).mtimeMs;
  const second = steerd('model', 'build', dir);
  t.match(second.stdout, /up to date/);
  t.equal(statSync(join(dir, 'model.onnx')).mtimeMs, mtime);
});

t.test('the same options give the same checkpoint bytes', async (t) => {
  const a = join(root, 'a');
  const b = join(root, 'b');
  for (const d of [a, b])
    steerd('model', 'tiny', d, '--layers', '1', '--embd', '16', '--heads', '2', '--ctx', '8', '--seed', '3');
  const { readFileSync } = await import('node:fs');
  t.ok(readFileSync(join(a, 'model.safetensors')).equals(readFileSync(join(b, 'model.safetensors'))));
});

t.test('model tiny --arch: a Llama-family checkpoint in bfloat16 shards, then model build', async (t) => {
  const dir = join(root, 'qwen2');
  const made = steerd(
    'model',
    'tiny',
    dir,
    ...['--arch', 'qwen2', '--layers', '1', '--embd', '16', '--heads', '4', '--kv-heads', '2', '--ctx', '8'],
    ...['--weights-dtype', 'bfloat16', '--shards', '2', '--tokenizer', 'qwen2', '--chat-template', 'chatml'],
  );
  t.equal(made.status, 0, made.stderr);
  t.match(made.stdout, /random qwen2 checkpoint .*2 key\/value heads, bfloat16, 2 shards, qwen2 tokenizer/);
  const { readFileSync } = await import('node:fs');
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  t.match(config, { model_type: 'qwen2', num_key_value_heads: 2, torch_dtype: 'bfloat16' });
  t.ok(statSync(join(dir, 'tokenizer.json')).size > 0, "Qwen2's tokenizer.json");
  const tokConfig = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
  t.match(tokConfig.chat_template, /<\|im_start\|>/, 'and a ChatML template');
  const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
  t.same(new Set(Object.values(index.weight_map)).size, 2, 'two shards');
  const built = steerd('model', 'build', dir);
  t.equal(built.status, 0, built.stderr);
  t.ok(statSync(join(dir, 'model.f32.safetensors')).size > 0, 'the float32 copy beside it');
  const gpt2 = steerd('model', 'tiny', join(root, 'g'), '--shards', '2');
  t.equal(gpt2.status, 1);
  t.match(gpt2.stderr, /^steerd: .*--shards .*Llama family/);
  const arch = steerd('model', 'tiny', join(root, 'h'), '--arch', 'bert');
  t.not(arch.status, 0);
  t.match(arch.stderr, /--arch.*bert.*gpt2, llama, qwen2, mistral/s);
});

t.test('errors exit non-zero with one clear line', async (t) => {
  const r = steerd('model', 'build', join(root, 'nowhere'));
  t.equal(r.status, 1);
  t.match(r.stderr, /^steerd: .*nowhere\/config\.json: cannot read \(ENOENT\)\n$/);
  const bad = steerd('model', 'tiny', join(root, 'x'), '--layers', 'two');
  t.not(bad.status, 0);
  t.match(bad.stderr, /--layers.*expected a positive integer/);
  const heads = steerd('model', 'tiny', join(root, 'y'), '--embd', '30', '--heads', '4');
  t.equal(heads.status, 1);
  t.match(heads.stderr, /not a multiple of n_head/);
});

t.test('serve: a default model that cannot be pulled exits with the offline alternative', async (t) => {
  const r = spawnSync(
    process.execPath,
    [join(import.meta.dirname, '..', 'bin', 'steerd.js'), 'serve', '--port', '0', '--data', join(root, 'd')],
    {
      encoding: 'utf8',
      env: {
        ...process.env,
        HF_ENDPOINT: 'http://127.0.0.1:9',
        STEERD_CACHE: join(root, 'cache'),
        HF_HUB_CACHE: join(root, 'hub-cache'),
        HF_HOME: '',
        HF_HUB_OFFLINE: '',
        STEERD_MODEL: '',
      },
      timeout: 60_000,
    },
  );
  t.equal(r.status, 1, r.stderr);
  t.match(r.stderr, /cannot get model "gpt2-xl".*cannot reach.*--model tiny/s);
  t.notOk(
    statSync(join(root, 'cache'), { throwIfNoEntry: false })?.isDirectory() &&
      statSync(join(root, 'cache', 'models', 'tiny'), { throwIfNoEntry: false }),
    'no random model was made',
  );
  t.notOk(statSync(join(root, 'hub-cache'), { throwIfNoEntry: false }), 'nothing was written to the hub cache');
});

t.test('configuration from the environment is checked', async (t) => {
  const { loadConfig } = await import('../src/config.ts');
  t.equal(loadConfig({ STEERD_BATCH_CAPACITY: '8', PORT: '0' }).batchCapacity, 8);
  t.throws(() => loadConfig({ STEERD_BATCH_CAPACITY: '0' }), {
    message: /STEERD_BATCH_CAPACITY="0": expected an integer >= 1/,
  });
  t.throws(() => loadConfig({ STEERD_QUEUE_DEPTH: 'abc' }), { message: /STEERD_QUEUE_DEPTH/ });
  t.throws(() => loadConfig({ STEERD_TOKEN_BUDGET: '2.5' }), { message: /STEERD_TOKEN_BUDGET/ });
  t.equal(loadConfig({}).binding, undefined, 'no binding set: the provider chooses (capi on cuda, node elsewhere)');
  t.equal(loadConfig({ STEERD_BINDING: 'capi' }).binding, 'capi');
  t.throws(() => loadConfig({ STEERD_BINDING: 'cuda' }), { message: /STEERD_BINDING must be one of node, capi/ });
  const r = spawnSync(process.execPath, [join(import.meta.dirname, '..', 'bin', 'steerd.js'), 'serve'], {
    encoding: 'utf8',
    env: { ...process.env, STEERD_QUEUE_DEPTH: '-1' },
  });
  t.equal(r.status, 1);
  t.match(r.stderr, /^steerd: STEERD_QUEUE_DEPTH="-1": expected an integer >= 1\n$/);
});
