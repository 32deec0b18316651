import type { WeightsCopy } from './dtypes.js';
import type { Site } from './hooks.js';
import type { GraphWriter } from './onnx-writer.js';
import type { LinearLayout } from './quantize.js';
import type { TensorEntry } from './safetensors.js';
import type { Tokenizer } from './tokenizer.js';
import type { StoredTensor } from './weight-files.js';

/**
 * The model-family seam (docs/architecture.md §8): what differs between architectures — how
 * config.json is read, the checkpoint's tensor names, the forward pass with its hook sites, the
 * tokenizer — behind one interface. Everything else is shared: the graph contract of inputs and
 * outputs that the engine feeds (graph.ts, serve-graph.ts), ONNX writing, safetensors, the hub.
 * A family lives in its own folder (gpt2/); the registry (families.ts) picks one for a checkpoint.
 */

/** A transformer's shape in the family-neutral terms the graphs and the engine use. */
export interface ModelShape {
  /** Transformer blocks. */
  layers: number;
  /** Hidden size (residual stream width). */
  embd: number;
  /** Query heads. */
  heads: number;
  /** Key and value heads: what the KV cache holds per layer (fewer than `heads` with grouped-query attention). */
  kvHeads: number;
  /** Width of one head. */
  headDim: number;
  /** Vocabulary size: rows of the embedding and of the unembedding. */
  vocab: number;
  /** Context length: the longest sequence the positions cover. */
  ctx: number;
  /** Token id that ends a generation (the first of `eosIds`). */
  eos: number;
  /**
   * Every token id that ends a generation: config.json's `eos_token_id` (one, or a list as Llama 3
   * writes) and generation_config.json's (where an instruct model adds its end of turn).
   */
  eosIds: number[];
}

/** A checkpoint directory whose layout has been validated; no weight has been read. */
export interface Checkpoint<C = unknown> {
  dir: string;
  /** The family its config.json names. */
  family: ModelFamily<C>;
  /** config.json's `model_type` (one of the family's `modelTypes`). */
  modelType: string;
  /** config.json as the family reads it; recorded in the graphs' metadata. */
  config: C;
  shape: ModelShape;
  /** The float32 file the graphs map: `model.safetensors`, or the float32 copy (`sources`). */
  weightsFile: string;
  /** Parameters by the family's canonical name (GPT-2: `wte.weight`, `h.3.attn.c_attn.weight`, ...), in `weightsFile`. */
  params: Map<string, TensorEntry>;
  /**
   * Where the parameters are stored, by canonical name, when that is not one float32 file (bfloat16,
   * float16, shards): `weightsFile` is then the float32 copy that ensureFloat32Weights writes.
   */
  sources?: Map<string, StoredTensor>;
  /** True when the file has no output projection of its own and the unembedding reuses the token embedding. */
  tiedLmHead: boolean;
  /** Hash of config.json and the weights files' headers: identifies the layout a graph depends on. */
  fingerprint: string;
  /** Total bytes of the parameters. */
  paramBytes: number;
}

/** Per layer: the new tokens' queries (pre-scaled by 1/√hd) [B, heads, T, hd], keys and values [B, kvHeads, T, hd]. */
export interface AttentionInput {
  layer: number;
  q: string;
  k: string;
  v: string;
}

/** What a family's forward pass gives the graph around it. */
export interface Body {
  /** The final norm's output: [B, T, H]. */
  hf: string;
  /** The final norm applied to another [.., H] tensor (the logit lens). */
  norm(input: string): string;
  /** The unembedding, [V, H]: the token embedding when tied, else the checkpoint's own output projection. */
  head: string;
  /** [.., H] → logits [.., V] through the unembedding, in the copy's dtype where it holds one; `output` names the result. */
  unembed(input: string, output?: string): string;
}

export interface BodyOptions {
  /** Hook sites with steering inputs and outputs (hooks.ts); the others pass through. Default the family's. */
  sites?: readonly Site[];
  /** Each hook point is a graph output (false: the caller reads them, by their names). Default true. */
  hookOutputs?: boolean;
  /**
   * Where the blocks' linear maps (and, quantized, the unembedding) come from: a copy beside the
   * weights in another dtype (weights.ts). Default none: all float32 from the checkpoint.
   */
  copy?: WeightsCopy;
}

/** The unembedding's canonical name: the checkpoint's own head, or the token embedding when tied. */
export const headParam = (ck: Checkpoint): string =>
  ck.tiedLmHead ? ck.family.embedding : ck.family.head(ck.config).name;

/**
 * One architecture. `C` is its own reading of config.json. Declared with methods, so that a family
 * of any config is a `ModelFamily` to the shared code, which only hands a family its own checkpoints.
 */
export interface ModelFamily<C = unknown> {
  /** Short name: the graphs are named after it (`gpt2_steerable`). */
  readonly id: string;
  /** Name in messages ("GPT-2"). */
  readonly name: string;
  /**
   * The normalisation before each block and the unembedding: `layernorm` subtracts each vector's
   * mean (what a steering vector has along the all-ones direction does nothing), `rmsnorm` does not.
   */
  readonly norm: 'layernorm' | 'rmsnorm';
  /** The config.json `model_type` values (Hugging Face's) that mark this family's checkpoints. */
  readonly modelTypes: readonly string[];
  /** The hook sites its forward pass wires (hooks.ts). */
  readonly sites: readonly Site[];
  /** Validates config.json, already parsed to an object; errors are CheckpointErrors naming `file`. */
  parseConfig(raw: Record<string, unknown>, file: string): C;
  shape(config: C): Omit<ModelShape, 'eosIds'>;
  /** Every parameter the checkpoint must hold, with its shape, by canonical name. */
  parameters(config: C): Map<string, number[]>;
  /** The output projection: optional in a checkpoint (absent, the unembedding is the token embedding). */
  head(config: C): { name: string; shape: number[] };
  /** The canonical name of a stored tensor, or undefined for a buffer the forward pass never reads. */
  canonicalKey(key: string): string | undefined;
  /** The token embedding's canonical name [V, H]: the unembedding too where the checkpoint has no head. */
  readonly embedding: string;
  /** How the checkpoint stores its blocks' linear maps: `in_out` [in, out] (GPT-2's Conv1D), `out_in` [out, in] (nn.Linear). */
  readonly linearLayout: LinearLayout;
  /** The blocks' linear maps (the float16 copy's weights, half-weights.ts; the 8- and 4-bit copies' with the unembedding), in file order. */
  halfNames(config: C): string[];
  /**
   * Writes the forward pass into `g`: embeddings, the blocks with their hook points, the final norm.
   * Attention is the caller's (the two graphs hold the KV cache differently): `attend` returns the
   * context [B, heads, T, hd] of a layer; `kvName` names the new keys and values of a layer.
   */
  body(
    g: GraphWriter,
    ck: Checkpoint<C>,
    attend: (a: AttentionInput) => string,
    kvName?: (l: number, kind: 'key' | 'value') => string,
    opts?: BodyOptions,
  ): Body;
  /** The tokenizer of a checkpoint directory. */
  tokenizer(dir: string): Tokenizer;
}
