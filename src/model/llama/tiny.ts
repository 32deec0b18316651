import { mkdirSync } from 'node:fs';
import { Rng } from '../../util/rng.js';
import { writeTinyFiles } from '../gpt2/tiny.js';
import type { TensorSpec } from '../safetensors-write.js';
import type { StorageOptions } from '../tiny-weights.js';
import { type LLAMA_MODEL_TYPES, parseConfig } from './config.js';
import { expectedShapes } from './params.js';
import { type TinyTokenizerKind, tinyTokenizer } from './tiny-tokenizer.js';

/** Options of a random Llama-family checkpoint; every default gives one small enough for unit tests. */
export interface TinyLlamaOptions {
  /** Transformer blocks. Default 2. */
  layers?: number;
  /** Hidden size. Default 64. */
  embd?: number;
  /** Query heads. Default 4. */
  heads?: number;
  /** Key/value heads, a divisor of `heads`. Default `heads`. */
  kvHeads?: number;
  /** MLP width. Default 3 × embd. */
  inner?: number;
  /** Context length (max_position_embeddings). Default 128. */
  ctx?: number;
  /** PRNG seed: the same options give the same bytes. Default 0. */
  seed?: number;
  /** Llama's `attention_bias` (q, k, v and o biases). Default false. Qwen2 always has q, k, v biases, Mistral none. */
  bias?: boolean;
  /** `tie_word_embeddings`: no lm_head.weight in the file. Default false. */
  tied?: boolean;
  /** config.json's `rope_scaling`, as written. Default none. */
  ropeScaling?: Record<string, unknown>;
  /** config.json's `model_type`. Default 'llama'. */
  modelType?: (typeof LLAMA_MODEL_TYPES)[number];
  /** The weights' dtype in the files (`torch_dtype`). Default float32. */
  dtype?: StorageOptions['dtype'];
  /** Weights files (more than 1: shards and their index). Default 1. */
  shards?: number;
  /**
   * The tokenizer written: 'gpt2' (GPT-2's vocab.json + merges.txt, default), or a tokenizer.json of
   * the kind tiny-tokenizer.ts writes ('llama3', 'qwen2', 'sentencepiece'); the vocabulary size,
   * BOS and EOS in config.json follow it.
   */
  tokenizer?: 'gpt2' | TinyTokenizerKind;
}

const ARCHITECTURES = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', mistral: 'MistralForCausalLM' };

/**
 * Writes a deterministic random Llama-family checkpoint in the Hugging Face layout (config.json,
 * float32 model.safetensors, and the tokenizer `opts.tokenizer` names). Random weights generate
 * nonsense text; the config says so in `steerd_random_weights`.
 */
export function writeTinyLlamaCheckpoint(dir: string, opts: TinyLlamaOptions = {}): void {
  const embd = opts.embd ?? 64;
  const heads = opts.heads ?? 4;
  const modelType = opts.modelType ?? 'llama';
  const seed = opts.seed ?? 0;
  const kind = opts.tokenizer ?? 'gpt2';
  const tokenizer = kind === 'gpt2' ? undefined : tinyTokenizer(kind);
  const vocab = tokenizer?.info ?? { vocabSize: 50257, bosId: 50256, eosId: 50256 };
  const rawConfig: Record<string, unknown> = {
    architectures: [ARCHITECTURES[modelType]],
    ...(modelType === 'llama' && { attention_bias: opts.bias ?? false }),
    bos_token_id: vocab.bosId,
    eos_token_id: vocab.eosId,
    hidden_act: 'silu',
    hidden_size: embd,
    intermediate_size: opts.inner ?? 3 * embd,
    max_position_embeddings: opts.ctx ?? 128,
    model_type: modelType,
    num_attention_heads: heads,
    num_hidden_layers: opts.layers ?? 2,
    num_key_value_heads: opts.kvHeads ?? heads,
    rms_norm_eps: 1e-6,
    rope_scaling: opts.ropeScaling ?? null,
    rope_theta: 10000,
    tie_word_embeddings: opts.tied ?? false,
    torch_dtype: opts.dtype ?? 'float32',
    vocab_size: vocab.vocabSize,
    steerd_random_weights: { seed },
  };
  const config = parseConfig(rawConfig); // refuses impossible shapes before anything is written
  mkdirSync(dir, { recursive: true });
  tokenizer?.write(dir);

  // Not a trained model's scale: linear maps get sd 1/√in and embeddings sd 1, so that activations
  // are of order one and softmax, SiLU and RoPE's rotations act in their curved range (at the usual
  // 0.02 every head would attend almost uniformly). Norm gains are random around 1, so that a pass
  // that forgot one differs.
  const std = (name: string, shape: number[]) => {
    if (/norm\.weight$/.test(name)) return { mean: 1, sd: 0.1 };
    if (/bias$/.test(name)) return { mean: 0, sd: 0.1 };
    if (name === 'model.embed_tokens.weight') return { mean: 0, sd: 1 };
    if (name === 'lm_head.weight') return { mean: 0, sd: 0.5 };
    return { mean: 0, sd: 1 / Math.sqrt(shape[1]) };
  };
  const rng = new Rng(seed);
  const specs: TensorSpec[] = [...expectedShapes(config)].map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const { mean, sd } = std(name, shape);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + sd * rng.normal();
    return { name, shape, data: () => new Uint8Array(a.buffer) };
  });
  writeTinyFiles(dir, specs, rawConfig, kind === 'gpt2', { dtype: opts.dtype, shards: opts.shards });
}
