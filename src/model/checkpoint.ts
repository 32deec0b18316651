import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.js';
import { type Gpt2Config, readConfig } from './config.js';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';

export const WEIGHTS_FILE = 'model.safetensors';

/** A checkpoint directory whose layout has been validated; no weight has been read. */
export interface Checkpoint {
  dir: string;
  config: Gpt2Config;
  weightsFile: string;
  /** Parameters by canonical GPT-2 name (`wte.weight`, `h.3.attn.c_attn.weight`, ...). */
  params: Map<string, TensorEntry>;
  /** True when the file has no `lm_head.weight` and the output projection reuses `wte`. */
  tiedLmHead: boolean;
  /** Hash of config.json and the safetensors header: identifies the layout a graph depends on. */
  fingerprint: string;
  /** Total bytes of the parameters. */
  paramBytes: number;
}

/** Expected parameter shapes for a config, by canonical name. `lm_head.weight` is optional. */
export function expectedShapes(c: Gpt2Config): Map<string, number[]> {
  const H = c.n_embd;
  const m = new Map<string, number[]>([
    ['wte.weight', [c.vocab_size, H]],
    ['wpe.weight', [c.n_positions, H]],
  ]);
  for (let i = 0; i < c.n_layer; i++) {
    const p = `h.${i}.`;
    m.set(`${p}ln_1.weight`, [H]);
    m.set(`${p}ln_1.bias`, [H]);
    m.set(`${p}attn.c_attn.weight`, [H, 3 * H]);
    m.set(`${p}attn.c_attn.bias`, [3 * H]);
    m.set(`${p}attn.c_proj.weight`, [H, H]);
    m.set(`${p}attn.c_proj.bias`, [H]);
    m.set(`${p}ln_2.weight`, [H]);
    m.set(`${p}ln_2.bias`, [H]);
    m.set(`${p}mlp.c_fc.weight`, [H, c.n_inner]);
    m.set(`${p}mlp.c_fc.bias`, [c.n_inner]);
    m.set(`${p}mlp.c_proj.weight`, [c.n_inner, H]);
    m.set(`${p}mlp.c_proj.bias`, [H]);
  }
  m.set('ln_f.weight', [H]);
  m.set('ln_f.bias', [H]);
  return m;
}

// Causal-mask buffers that older HF versions saved with the weights; steerd builds its own mask.
const IGNORED = /^h\.\d+\.attn\.(bias|masked_bias)$/;

/** Maps a stored key to its canonical name: `transformer.h.0...` and `h.0...` are the same tensor. */
function canonical(key: string): string {
  return key.startsWith('transformer.') ? key.slice('transformer.'.length) : key;
}

/** Opens and validates a Hugging Face GPT-2 checkpoint directory. */
export function openCheckpoint(dir: string): Checkpoint {
  const config = readConfig(dir);
  const weightsFile = join(dir, WEIGHTS_FILE);
  if (!existsSync(weightsFile)) {
    const alt = ['pytorch_model.bin', 'model.safetensors.index.json'].find((f) => existsSync(join(dir, f)));
    throw new CheckpointError(
      weightsFile,
      alt ? `missing (found ${alt}; steerd reads a single model.safetensors file)` : 'missing',
    );
  }
  const header = readSafetensorsHeader(weightsFile);
  const expected = expectedShapes(config);
  const params = new Map<string, TensorEntry>();
  for (const [key, entry] of header.tensors) {
    const name = canonical(key);
    if (IGNORED.test(name)) continue;
    if (!expected.has(name) && name !== 'lm_head.weight') {
      throw new CheckpointError(weightsFile, `unexpected tensor "${key}" (not a GPT-2 parameter)`);
    }
    if (params.has(name)) throw new CheckpointError(weightsFile, `tensor "${name}" is stored twice`);
    if (entry.dtype !== 'F32') {
      throw new CheckpointError(
        weightsFile,
        `tensor "${key}" is ${entry.dtype}; steerd maps weights in place and needs float32 (F32) tensors — convert the checkpoint to float32`,
      );
    }
    params.set(name, entry);
  }
  for (const [name, shape] of expected) {
    const entry = params.get(name);
    if (!entry) throw new CheckpointError(weightsFile, `missing tensor "${name}"`);
    if (entry.shape.join() !== shape.join()) {
      throw new CheckpointError(
        weightsFile,
        `tensor "${name}" has shape [${entry.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
      );
    }
  }
  const lm = params.get('lm_head.weight');
  if (lm && lm.shape.join() !== [config.vocab_size, config.n_embd].join()) {
    throw new CheckpointError(
      weightsFile,
      `tensor "lm_head.weight" has shape [${lm.shape.join(', ')}], expected [${config.vocab_size}, ${config.n_embd}]`,
    );
  }
  const fingerprint = createHash('sha256')
    .update(readFileSync(join(dir, 'config.json')))
    .update(header.headerBytes)
    .update(String(header.size))
    .digest('hex');
  let paramBytes = 0;
  for (const e of params.values()) paramBytes += e.length;
  return { dir, config, weightsFile, params, tiedLmHead: !lm, fingerprint, paramBytes };
}
