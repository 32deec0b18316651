import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { SteerdError } from '../errors.js';
import { openCheckpoint } from '../model/checkpoint.js';
import { buildGraph } from '../model/graph.js';
import { Gpt2Tokenizer } from '../model/tokenizer.js';
import type { KvShape } from './kv.js';
import { modelInfo } from './model-info.js';
import type { ModelInfo } from './types.js';

/** Options of the model runner (the one owner of the ONNX Runtime session). */
export interface RunnerOptions {
  /** Checkpoint directory (config.json, model.safetensors, tokenizer). */
  model: string;
  /** Execution provider: `cpu`, `cuda`, `webgpu`, ... Default `cpu`. */
  provider?: string;
  /** Intra-op threads; 0 lets ONNX Runtime choose (one per core). Default 0. */
  threads?: number;
}

/** The serving variant of the graph, beside model.safetensors (see graph.ts). */
export const SERVE_GRAPH = 'model.serve.onnx';

export interface ForwardInput {
  /** [B][T] token ids, [B][P+T] mask (1 real, 0 padding), [B][T] positions. */
  ids: number[][];
  mask: number[][];
  pos: number[][];
  /** [B, n_head, P, head_dim] per layer, or none for P = 0 (masked slots allowed). */
  past?: { k: Float32Array[]; v: Float32Array[]; P: number };
  /** Per hook point: [B, T, H] or null (a broadcast zero). */
  steer: (Float32Array | null)[];
  /** Hook points whose resid.{l} to fetch. */
  resid?: number[];
}

export interface ForwardOutput {
  /** [B, V] */
  lastLogits: Float32Array;
  /** [B]: log-sum-exp of each row of `lastLogits`. */
  lastLse: Float32Array;
  /** The new tokens' keys and values: [B, n_head, T, head_dim] per layer. */
  fresh: { k: Float32Array[]; v: Float32Array[]; T: number };
  /** [B, T, H] per requested hook point. */
  resid: Map<number, Float32Array>;
}

const i64 = (rows: number[][]) => {
  const B = rows.length;
  const T = rows[0].length;
  const a = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) a[b * T + t] = BigInt(rows[b][t]);
  return new ort.Tensor('int64', a, [B, T]);
};

export class ModelRunner {
  readonly kv: KvShape;
  private readonly zero = new ort.Tensor('float32', new Float32Array(1), [1, 1, 1]);
  private readonly lastOnly = new ort.Tensor('bool', Uint8Array.of(0), []);
  private readonly fetches: string[];

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly info: ModelInfo,
    readonly tokenizer: Gpt2Tokenizer,
  ) {
    this.kv = { nLayer: info.n_layer, nHead: info.n_head, headDim: info.n_embd / info.n_head };
    this.fetches = ['last_logits', 'last_lse'];
    for (let l = 0; l < info.n_layer; l++) this.fetches.push(`new.${l}.key`, `new.${l}.value`);
  }

  static async open(opts: RunnerOptions): Promise<ModelRunner> {
    const ck = openCheckpoint(opts.model);
    const tokenizer = Gpt2Tokenizer.fromDir(opts.model);
    buildGraph(opts.model, { serving: true, fileName: SERVE_GRAPH });
    const provider = opts.provider ?? 'cpu';
    const known = ort.listSupportedBackends().map((b) => b.name);
    if (!known.includes(provider)) {
      throw new SteerdError(
        `execution provider "${provider}" is not supported by onnxruntime-node (it knows ${known.join(', ')})`,
        500,
        'provider_unavailable',
      );
    }
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(join(opts.model, SERVE_GRAPH), {
        executionProviders: [provider],
        intraOpNumThreads: opts.threads ?? 0,
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      });
    } catch (e) {
      const hint =
        provider === 'cpu' ? '' : ` (is the ${provider} build of onnxruntime-node installed? see README, GPU notes)`;
      throw new SteerdError(
        `cannot start the ${provider} execution provider: ${(e as Error).message}${hint}`,
        500,
        'provider_unavailable',
      );
    }
    const info = modelInfo(ck, provider);
    return new ModelRunner(session, info, tokenizer);
  }

  async forward(inp: ForwardInput): Promise<ForwardOutput> {
    const B = inp.ids.length;
    const { nLayer, nHead, headDim } = this.kv;
    const P = inp.past?.P ?? 0;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(inp.ids),
      attention_mask: i64(inp.mask),
      position_ids: i64(inp.pos),
      logits_all: this.lastOnly,
    };
    const T = inp.ids[0].length;
    const empty = new Float32Array(0);
    for (let l = 0; l < nLayer; l++) {
      feeds[`past.${l}.key`] = new ort.Tensor('float32', inp.past?.k[l] ?? empty, [B, nHead, P, headDim]);
      feeds[`past.${l}.value`] = new ort.Tensor('float32', inp.past?.v[l] ?? empty, [B, nHead, P, headDim]);
    }
    for (let l = 0; l <= nLayer; l++) {
      const s = inp.steer[l];
      feeds[`steer.${l}`] = s ? new ort.Tensor('float32', s, [B, T, this.info.n_embd]) : this.zero;
    }
    const fetch = [...this.fetches, ...(inp.resid ?? []).map((l) => `resid.${l}`)];
    const out = await this.session.run(feeds, fetch);
    const fresh = { k: [] as Float32Array[], v: [] as Float32Array[], T };
    for (let l = 0; l < nLayer; l++) {
      fresh.k.push(out[`new.${l}.key`].data as Float32Array);
      fresh.v.push(out[`new.${l}.value`].data as Float32Array);
    }
    const resid = new Map<number, Float32Array>();
    for (const l of inp.resid ?? []) resid.set(l, out[`resid.${l}`].data as Float32Array);
    return {
      lastLogits: out.last_logits.data as Float32Array,
      lastLse: out.last_lse.data as Float32Array,
      fresh,
      resid,
    };
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
