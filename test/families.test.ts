import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CheckpointError } from '../src/errors.ts';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { FAMILIES, familyOf, loadTokenizer } from '../src/model/families.ts';
import { GPT2 } from '../src/model/gpt2/family.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { Gpt2Tokenizer } from '../src/model/gpt2/tokenizer.ts';
import { buildServeGraphBytes } from '../src/model/serve-graph.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-families-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const dir = join(root, 'tiny');
writeTinyCheckpoint(dir, { layers: 2, embd: 32, heads: 2, ctx: 16 });
const config = () => JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));

t.test('the registry picks GPT-2 for a generated checkpoint', async (t) => {
  t.equal(familyOf(config(), 'config.json'), GPT2);
  const ck = openCheckpoint(dir);
  t.equal(ck.family, GPT2);
  t.same(ck.shape, {
    layers: 2,
    embd: 32,
    heads: 2,
    kvHeads: 2,
    headDim: 16,
    vocab: 50257,
    ctx: 16,
    eos: 50256,
    eosIds: [50256],
  });
  t.type(loadTokenizer(dir), Gpt2Tokenizer, "the family's tokenizer");
  t.same(GPT2.sites, ['resid_pre', 'ln1', 'attn_out', 'resid_mid', 'ln2', 'mlp_out'], 'GPT-2 wires every hook site');
  t.same(
    FAMILIES.flatMap((f) => f.modelTypes),
    [...new Set(FAMILIES.flatMap((f) => f.modelTypes))],
    'no model_type is claimed by two families',
  );
});

t.test('an unknown model_type is refused with a typed error naming the field', async (t) => {
  const file = join(root, 'config.json');
  const raw = { ...config(), model_type: 'mamba', architectures: ['MambaForCausalLM'] };
  for (const [what, fn] of [
    ['familyOf', () => familyOf(raw, file)],
    [
      'openCheckpoint',
      () => {
        const other = join(root, 'other');
        writeTinyCheckpoint(other, { layers: 1, embd: 16, heads: 2, ctx: 8 });
        writeFileSync(join(other, 'config.json'), JSON.stringify(raw));
        return openCheckpoint(other);
      },
    ],
  ] as const) {
    try {
      fn();
      t.fail(`${what}: expected an error`);
    } catch (e) {
      t.type(e, CheckpointError, `${what}: a CheckpointError`);
      const err = e as CheckpointError;
      t.equal(err.status, 422, `${what}: status 422`);
      t.equal(err.code, 'bad_checkpoint', what);
      t.equal(err.field, 'model_type', `${what}: names the field`);
      t.match(err.details, { field: 'model_type' }, `${what}: in the details`);
      t.match(
        err.message,
        /config\.json: model_type is "mamba" \(MambaForCausalLM\); steerd serves GPT-2 \(model_type "gpt2"\)/,
      );
    }
  }
  t.throws(() => familyOf({ ...config(), model_type: undefined }, file), {
    field: 'model_type',
    message: /model_type is undefined/,
  });
});

t.test('opening for one family refuses a checkpoint of another', async (t) => {
  const other = { ...GPT2, id: 'other', name: 'Other', modelTypes: ['other'] };
  t.throws(() => openCheckpoint(dir, other), {
    name: 'CheckpointError',
    field: 'model_type',
    message: /config\.json: is a GPT-2 checkpoint, expected Other/,
  });
  t.equal(openCheckpoint(dir, GPT2).config.n_inner, 128, "the family's own config");
});

t.test('a serving graph asks only for hook sites its family wires', async (t) => {
  const ck = openCheckpoint(dir);
  const fewer = { ...ck, family: { ...GPT2, sites: ['resid_pre'] as const } };
  t.ok(buildServeGraphBytes(fewer, { sites: ['resid_pre'] }).length > 0);
  t.throws(() => buildServeGraphBytes(fewer, { sites: ['resid_pre', 'ln1'] }), {
    code: 'bad_config',
    message: /GPT-2 has no hook site ln1 \(it has resid_pre\)/,
  });
});
