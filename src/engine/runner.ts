import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { SteerdError } from '../errors.js';
import { openCheckpoint } from '../model/checkpoint.js';
import { buildGraph } from '../model/graph.js';
import { hookPoints, projName, SITES, type Site, steerName } from '../model/hooks.js';
import { Gpt2Tokenizer } from '../model/tokenizer.js';
import { type KvShape, SLOT_ALIGN } from './kv.js';
import { modelInfo, serveShape } from './model-info.js';
import type { PassSteering } from './steer.js';
import type { ModelInfo } from './types.js';

/** Options of the model runner (the one owner of the ONNX Runtime session). */
export interface RunnerOptions {
  /** Checkpoint directory (config.json, model.safetensors, tokenizer). */
  model: string;
  /** Execution provider: `cpu`, `cuda`, `webgpu`, ... Default `cpu`. */
  provider?: string;
  /** Intra-op threads; 0 lets ONNX Runtime choose (one per core). Default 0. */
  threads?: number;
  /** Hook sites the serving graph is built with (the others cannot be steered or read). Default all. */
  hookSites?: Site[];
}

/** The serving variant of the graph, beside model.safetensors (see graph.ts); its WebGPU layout. */
export const SERVE_GRAPH = 'model.serve.onnx';
export const SERVE_GRAPH_NON_EMPTY = 'model.serve.non-empty.onnx';

/** One cache group's rows, in batch order: [rows, n_head, P, head_dim] per layer (views; rows may be 0). */
export interface PastGroup {
  k: Float32Array[];
  v: Float32Array[];
  P: number;
  rows: number;
}

export interface ForwardInput {
  /** [B][T] token ids, each row's real tokens first (right-padded), and their positions. */
  ids: number[][];
  pos: number[][];
  /** [B] real new tokens of each row. */
  newLen: number[];
  /** [B] tokens each row already holds in its group's cache. */
  pastLen: number[];
  /** The cache groups, rows in batch order (Σ rows = B); missing groups are empty; none: all rows in group 0 with nothing cached. */
  groups: PastGroup[];
  /** The pass's steering (steer.ts): adds per `steer.*` input, projections per hook point. */
  steer: PassSteering;
  /** Hook-point outputs to fetch (hooks.ts readName: `resid.{l}`, `ln1.{l}`, ...). */
  read?: string[];
  /** Also project every position (`logits`): a prompt scored token by token. Default false. */
  logitsAll?: boolean;
  /** Vectors [N × H] for the logit lens (`lens_in`). Default none. */
  lens?: Float32Array;
}

export interface ForwardOutput {
  /** [B, V]: each row's logits at its last real token. */
  lastLogits: Float32Array;
  /** [B]: log-sum-exp of each row of `lastLogits`. */
  lastLse: Float32Array;
  /** The new tokens' keys and values: [B, n_head, T, head_dim] per layer. */
  fresh: { k: Float32Array[]; v: Float32Array[]; T: number };
  /** [B, T, H] per hook-point output read. */
  read: Map<string, Float32Array>;
  /** [B, T, V] with `logitsAll`. */
  logits?: Float32Array;
  /** [N, V] with `lens`: each vector through ln_f and the unembedding. */
  lens?: Float32Array;
}

const i64 = (rows: number[][]) => {
  const B = rows.length;
  const T = rows[0].length;
  const a = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) a[b * T + t] = BigInt(rows[b][t]);
  return new ort.Tensor('int64', a, [B, T]);
};
const i64v = (v: number[]) => new ort.Tensor('int64', BigInt64Array.from(v, BigInt), [v.length]);

const EMPTY = new Float32Array(0);

/** Host bytes passed into and returned from session runs since the runner opened. */
export interface HostBytes {
  input: number;
  output: number;
  /** Session runs (forward passes). */
  runs: number;
}

const bytesOf = (t: ort.Tensor) => (t.location === 'cpu' ? (t.data as ArrayBufferView).byteLength : 0);

export class ModelRunner {
  readonly kv: KvShape;
  private readonly zero = new ort.Tensor('float32', new Float32Array(1), [1, 1, 1]);
  private readonly lastOnly = new ort.Tensor('bool', Uint8Array.of(0), []);
  private readonly allPositions = new ort.Tensor('bool', Uint8Array.of(1), []);
  /** No projections at a hook point: K = 0. */
  private readonly noProj: ort.Tensor;
  private readonly noLens: ort.Tensor;
  /** The graph's hook points (its sites). */
  readonly hooks: { site: Site; layer: number }[];
  private readonly fetches: string[];
  /** Counted on every run (device tensors are not). */
  readonly hostBytes: HostBytes = { input: 0, output: 0, runs: 0 };

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly info: ModelInfo,
    readonly tokenizer: Gpt2Tokenizer,
    /** Cache groups of the serving graph. */
    readonly groups: number,
    /** No empty tensor is fed (serve-graph.ts `nonEmpty`): one masked cache slot, projection row and lens vector of zeros stand in. */
    private readonly nonEmpty: boolean,
  ) {
    this.kv = { nLayer: info.n_layer, nHead: info.n_head, headDim: info.n_embd / info.n_head };
    const n = nonEmpty ? 1 : 0;
    this.noProj = new ort.Tensor('float32', new Float32Array(n * info.n_embd), [1, n, info.n_embd]);
    this.noLens = new ort.Tensor('float32', new Float32Array(n * info.n_embd), [n, info.n_embd]);
    this.hooks = hookPoints(info.n_layer, info.hook_sites);
    this.fetches = ['last_logits', 'last_lse'];
    for (let l = 0; l < info.n_layer; l++) this.fetches.push(`new.${l}.key`, `new.${l}.value`);
  }

  static async open(opts: RunnerOptions): Promise<ModelRunner> {
    const ck = openCheckpoint(opts.model);
    const tokenizer = Gpt2Tokenizer.fromDir(opts.model);
    const provider = opts.provider ?? 'cpu';
    const shape = serveShape(provider, ck.config.n_positions);
    const sites = opts.hookSites ?? [...SITES];
    const fileName = shape.nonEmpty ? SERVE_GRAPH_NON_EMPTY : SERVE_GRAPH;
    buildGraph(opts.model, { serving: { ...shape, sites }, fileName });
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
      session = await ort.InferenceSession.create(join(opts.model, fileName), {
        executionProviders: [provider],
        intraOpNumThreads: opts.threads ?? 0,
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      });
    } catch (e) {
      const hint =
        provider === 'cpu'
          ? ''
          : provider === 'webgpu'
            ? ' (no WebGPU adapter: is a Vulkan driver installed? see README, GPU notes)'
            : ` (is the ${provider} build of onnxruntime-node installed? see README, GPU notes)`;
      throw new SteerdError(
        `cannot start the ${provider} execution provider: ${(e as Error).message}${hint}`,
        500,
        'provider_unavailable',
      );
    }
    const info = modelInfo(ck, provider, sites);
    return new ModelRunner(session, info, tokenizer, shape.groups, shape.nonEmpty);
  }

  async forward(inp: ForwardInput): Promise<ForwardOutput> {
    const { nLayer, nHead, headDim } = this.kv;
    const B = inp.ids.length;
    const T = inp.ids[0].length;
    // a pass over fresh prompts has nothing cached: its rows are group 0's, with no slots (or,
    // without empty tensors, one aligned block of masked zeros: a row's bits do not depend on P)
    const groups = inp.groups.length ? inp.groups : [this.noPast(B)];
    const feeds: Record<string, ort.Tensor> = {
      input_ids: i64(inp.ids),
      position_ids: i64(inp.pos),
      new_len: i64v(inp.newLen),
      past_len: i64v(inp.pastLen),
      group_rows: i64v(Array.from({ length: this.groups }, (_, g) => groups[g]?.rows ?? 0)),
      logits_all: inp.logitsAll ? this.allPositions : this.lastOnly,
      lens_in: inp.lens
        ? new ort.Tensor('float32', inp.lens, [inp.lens.length / this.info.n_embd, this.info.n_embd])
        : this.noLens,
    };
    for (let g = 0; g < this.groups; g++) {
      const grp = groups[g];
      const dims = [grp?.rows ?? 0, nHead, grp?.P ?? 0, headDim];
      const has = grp && grp.rows > 0 && grp.P > 0;
      for (let l = 0; l < nLayer; l++) {
        feeds[`past.${l}.${g}.key`] = new ort.Tensor('float32', has ? grp.k[l] : EMPTY, dims);
        feeds[`past.${l}.${g}.value`] = new ort.Tensor('float32', has ? grp.v[l] : EMPTY, dims);
      }
    }
    const H = this.info.n_embd;
    for (const { site, layer } of this.hooks) {
      const name = steerName(site, layer);
      const add = inp.steer.add.get(name);
      feeds[name] = add ? new ort.Tensor('float32', add, [B, T, H]) : this.zero;
      const p = inp.steer.proj.get(name);
      feeds[projName(site, layer, 'u')] = p ? new ort.Tensor('float32', p.u, [B, p.K, H]) : this.noProj;
      feeds[projName(site, layer, 'z')] = p ? new ort.Tensor('float32', p.z, [B, p.K, H]) : this.noProj;
    }
    const fetch = [
      ...this.fetches,
      ...(inp.read ?? []),
      ...(inp.logitsAll ? ['logits'] : []),
      ...(inp.lens ? ['lens_logits'] : []),
    ];
    const out = await this.session.run(feeds, fetch);
    this.hostBytes.runs++;
    for (const t of Object.values(feeds)) this.hostBytes.input += bytesOf(t);
    for (const t of Object.values(out)) this.hostBytes.output += bytesOf(t);
    const fresh = { k: [] as Float32Array[], v: [] as Float32Array[], T };
    for (let l = 0; l < nLayer; l++) {
      fresh.k.push(out[`new.${l}.key`].data as Float32Array);
      fresh.v.push(out[`new.${l}.value`].data as Float32Array);
    }
    const read = new Map<string, Float32Array>();
    for (const name of inp.read ?? []) read.set(name, out[name].data as Float32Array);
    return {
      lastLogits: out.last_logits.data as Float32Array,
      lastLse: out.last_lse.data as Float32Array,
      fresh,
      read,
      ...(inp.logitsAll && { logits: out.logits.data as Float32Array }),
      ...(inp.lens && { lens: out.lens_logits.data as Float32Array }),
    };
  }

  /** Zeros for `noPast`, grown to the most rows asked (never written: only fed). */
  private zeros = new Float32Array(0);

  /** The cache of rows that have none. */
  private noPast(rows: number): PastGroup {
    if (!this.nonEmpty) return { k: [], v: [], P: 0, rows };
    const { nLayer, nHead, headDim } = this.kv;
    const P = SLOT_ALIGN;
    const n = rows * nHead * P * headDim;
    if (this.zeros.length < n) this.zeros = new Float32Array(n);
    const zeros = this.zeros.subarray(0, n);
    return { k: new Array(nLayer).fill(zeros), v: new Array(nLayer).fill(zeros), P, rows };
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
