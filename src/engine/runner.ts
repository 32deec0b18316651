import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { SteerdError } from '../errors.js';
// the model family: checkpoint, graph builders, hook sites, tokenizer (src/model)
import { openCheckpoint } from '../model/checkpoint.js';
import { DTYPE_SUFFIX, type Dtype, dtypeProviders } from '../model/dtypes.js';
import { ensureFloat32Weights } from '../model/float32-weights.js';
import { buildGraph } from '../model/graph.js';
import { hookPoints, projName, readName, type Site, steerName } from '../model/hooks.js';
import { buildKvGraphBytes } from '../model/kv-graph.js';
import type { Tokenizer } from '../model/tokenizer.js';
import { ensureWeightsCopy } from '../model/weights-copies.js';
import type { DeviceKv, KvUpdater } from './kv/device-store.js';
import type { KvBlock, KvPast, KvShape } from './kv/store.js';
import { kvUpdater } from './kv/updater.js';
import { modelInfo, serveShape } from './model-info.js';
import type { ForwardInput, ForwardOutput, Pass } from './pass.js';
import { defaultRuntime, type RuntimeName, runtimeNamed } from './runtime/bindings.js';
import { CUDA_DEVICE_ID, cudaFreeMemory } from './runtime/device-memory.js';
import {
  f32,
  type GraphSession,
  type GraphSessionOptions,
  type HostBytes,
  type HostTensor,
  hostBytesOf,
  type Runtime,
  type Tensor,
} from './runtime/runtime.js';
import type { ModelInfo } from './types.js';

/** The intra-op threads a session gets for `threads` (RunnerOptions.threads): 0 is one per CPU. */
export const intraOpThreads = (threads = 0): number => threads || availableParallelism();

/** Options of the model runner (the one owner of the ONNX Runtime session). */
export interface RunnerOptions {
  /** Checkpoint directory (config.json, model.safetensors, tokenizer). */
  model: string;
  /** Execution provider: `cpu`, `cuda`, `webgpu`, ... Default `cpu`. */
  provider?: string;
  /**
   * Intra-op threads; 0: one per CPU this process may run on (`os.availableParallelism()`), not ONNX
   * Runtime's own choice for 0 (its count of physical cores, which gave one thread on a 2-vCPU
   * machine: a decode step 1.4x slower, measured with `npm run bench:step -- --threads 0` and `2`).
   * Default 0.
   */
  threads?: number;
  /** Hook sites the serving graph is built with (the others cannot be steered or read). Default all. */
  hookSites?: Site[];
  /**
   * The blocks' linear maps (dtypes.ts): `float16` multiplies them in float16, `int8` and `int4` (the
   * CPU provider) as blocks of integers with the unembedding too, each from a copy written once beside
   * the checkpoint. Default float32.
   */
  dtype?: Dtype;
  /**
   * Intra-op threads spin while they wait for work (ONNX Runtime's default), instead of sleeping.
   * Spinning saves a wake-up per parallel operator on an idle machine and costs the CPU time it
   * burns wherever other work shares the cores: measured with `npm run bench:step` (README,
   * Benchmarks). Default false (config.ts: STEERD_THREAD_SPINNING).
   */
  spinning?: boolean;
  /** More session options of the runtime's binding for the serving graph's session (profiling, benchmarks of session settings). Default none. */
  sessionOptions?: object;
  /**
   * A second, lean serving graph with one cache group and no hook points (no steering inputs,
   * projections or reads), run for passes where no row steers or reads and every row sits in one
   * size class (every prefill, and the decode of a batch of one class); the full graph otherwise.
   * The same arithmetic (a row's bits do not depend on which graph ran it: the engine tests check
   * it) with a third of the nodes (the empty groups' attention and the hook points' projections
   * are gone) and a tenth of the inputs; costs a second session, whose prepacked weights add their
   * size in memory (GPT-2 XL: about 6 GB more), for little at the measured loads (README, the decode
   * step). The CPU provider only; a lean session that cannot open leaves the full graph alone.
   * Default false (config.ts: STEERD_LEAN_GRAPH).
   */
  lean?: boolean;
  /**
   * The binding of ONNX Runtime that runs the graphs, by name (runtime/bindings.ts): `node`
   * (onnxruntime-node) or `capi` (the C API, whose KV cache stays on the device on every provider).
   * Default `capi` on CUDA, `node` elsewhere (bindings.ts defaultRuntime; config.ts: STEERD_BINDING).
   */
  runtime?: RuntimeName;
}

/** The serving variant of the graph, beside model.safetensors (see graph.ts); its device variant. */
export const SERVE_GRAPH = 'model.serve.onnx';
export const SERVE_GRAPH_DEVICE = 'model.serve.device.onnx';
/** The device variant with the host's arithmetic (the capi binding's: serve-graph.ts `exact`). */
export const SERVE_GRAPH_EXACT = 'model.serve.exact.onnx';

/** int64 [B, T] of rows of numbers. */
const i64 = (rt: Runtime, rows: number[][]) => {
  const B = rows.length;
  const T = rows[0].length;
  const a = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) a[b * T + t] = BigInt(rows[b][t]);
  return rt.int64(a, [B, T]);
};

const EMPTY = new Float32Array(0);
const isHost = (b: KvBlock): b is Float32Array => b instanceof Float32Array;

/**
 * The model runner: the one owner of the graphs' sessions, which it opens and runs through the
 * runtime (runtime/). It implements the scheduler's `Pass` (pass.ts).
 */
export class ModelRunner implements Pass {
  readonly kv: KvShape;
  private readonly rt: Runtime;
  private readonly zero: HostTensor;
  private readonly lastOnly: HostTensor;
  private readonly allPositions: HostTensor;
  /** No projections at a hook point: K = 0. */
  private readonly noProj: HostTensor;
  private readonly noLens: HostTensor;
  /** The graph's hook points (its sites), and their read names in the same order (the device graph's `read_idx`). */
  readonly hooks: { site: Site; layer: number }[];
  private readonly points: string[];
  /** Every output of the graph, in order (what a device pass fetches: see open()). */
  private readonly allOutputs: string[];
  private readonly fetches: string[];
  /** Counted on every run (device tensors are not). */
  private readonly bytes: HostBytes = { input: 0, output: 0, runs: 0 };
  /** `read_idx` when no hook point is read: empty, or one stand-in where the graph takes no empty tensor. */
  private readonly noReads: Tensor;
  /** Where the KV cache lives: `device` when the binding keeps tensors on the accelerator (WebGPU; capi). */
  readonly location: 'host' | 'device';
  /** Device tensors the passes returned since the last endStep() (their new keys and values). */
  private produced: DeviceKv[] = [];
  /** Runs the cache update graph where the cache is on the device (kv/updater.ts). */
  readonly updater?: KvUpdater;
  /**
   * What a fractional KV budget is a share of where the cache is on a CUDA device: the device's
   * free memory once the weights are on it (device-memory.ts), never the host's. Unknown there: the
   * budget must be given in tokens (STEERD_KV_CACHE_TOKENS) or bytes.
   */
  readonly available?: () => number;

  private constructor(
    private readonly session: GraphSession,
    readonly info: ModelInfo,
    readonly tokenizer: Tokenizer,
    /** Cache groups of the serving graph. */
    readonly groups: number,
    /** The KV cache's shape per layer: the family's key/value heads, not its query heads. */
    kv: KvShape,
    /** The cache update graph's session when the cache is on the device (kv-graph.ts). */
    private readonly kvSession?: GraphSession,
    /** The serving graph with one group and no hook points (RunnerOptions.lean). */
    private readonly lean?: GraphSession,
    /** The device variant keeps the host's outputs, which may be empty (serve-graph.ts `exact`). */
    exact = false,
  ) {
    const rt = session.runtime;
    this.rt = rt;
    this.kv = kv;
    this.location = kvSession ? 'device' : 'host';
    this.updater = kvSession && kvUpdater(kvSession, this.kv, (t) => (this.bytes.input += hostBytesOf(t)));
    if (info.provider === 'cuda' && kvSession) this.available = cudaKvMemory;
    this.zero = rt.float32(new Float32Array(1), [1, 1, 1]);
    this.lastOnly = rt.bool(false);
    this.allPositions = rt.bool(true);
    // the device graph takes no empty tensor (serve-graph.ts): one zero row stands in (its exact form
    // takes empty ones, as the host's: a lens row would cost an unembedding per pass)
    const n = kvSession && !exact ? 1 : 0;
    this.noReads = n ? rt.int64([0]) : rt.int64([], [0]);
    this.noProj = rt.float32(new Float32Array(n * info.n_embd), [1, n, info.n_embd]);
    this.noLens = rt.float32(new Float32Array(n * info.n_embd), [n, info.n_embd]);
    this.hooks = hookPoints(info.n_layer, info.hook_sites);
    this.points = this.hooks.map(({ site, layer }) => readName(site, layer));
    this.allOutputs = [...session.outputNames];
    this.fetches = ['last_logits', 'last_lse'];
    for (let l = 0; l < info.n_layer; l++) this.fetches.push(`new.${l}.key`, `new.${l}.value`);
  }

  /** The host byte counters, and the native values the binding holds now where it counts them (capi). */
  get hostBytes(): HostBytes {
    const live = this.rt.liveValues?.();
    return live === undefined ? { ...this.bytes } : { ...this.bytes, live };
  }

  static async open(opts: RunnerOptions): Promise<ModelRunner> {
    const ck = openCheckpoint(opts.model);
    const tokenizer = ck.family.tokenizer(opts.model);
    const provider = opts.provider ?? 'cpu';
    const binding = opts.runtime ?? defaultRuntime(provider);
    const shape = serveShape(provider, ck.shape.ctx, binding);
    const sites = opts.hookSites ?? [...ck.family.sites];
    const dtype = opts.dtype ?? 'float32';
    const runsOn = dtypeProviders(dtype);
    if (runsOn && !runsOn.includes(provider))
      throw new SteerdError(
        `dtype ${dtype} runs on the ${runsOn.join(', ')} provider, not ${provider} (float16 is the GPU providers' smaller dtype)`,
        400,
        'unsupported',
      );
    const fileName = (shape.exact ? SERVE_GRAPH_EXACT : shape.device ? SERVE_GRAPH_DEVICE : SERVE_GRAPH).replace(
      /\.onnx$/,
      `${DTYPE_SUFFIX[dtype]}.onnx`,
    );
    ensureFloat32Weights(ck); // made from a bfloat16, float16 or sharded checkpoint once; the other copies read it
    ensureWeightsCopy(ck, dtype);
    buildGraph(opts.model, { serving: { ...shape, sites, dtype }, fileName });
    const rt = runtimeNamed(binding);
    const known = rt.providers();
    if (!known.includes(provider)) {
      throw new SteerdError(
        `execution provider "${provider}" is not supported by ${rt.name} (it knows ${known.join(', ')})`,
        500,
        'provider_unavailable',
      );
    }
    let session: GraphSession;
    let kvSession: GraphSession | undefined;
    const base: GraphSessionOptions = {
      provider,
      threads: intraOpThreads(opts.threads),
      spinning: opts.spinning ?? false,
    };
    try {
      // on the device, the new keys and values stay there and everything else comes back (an output
      // stays where the runtime is told only when every output is fetched: forward() does)
      const deviceOutputs: string[] = [];
      for (let l = 0; l < ck.shape.layers; l++)
        for (const kind of ['key', 'value']) deviceOutputs.push(`new.${l}.${kind}`);
      session = await rt.open(join(opts.model, fileName), {
        ...base,
        bindingOptions: opts.sessionOptions,
        ...(shape.device && { deviceOutputs }),
      });
      if (shape.device) {
        const { layers, kvHeads, headDim } = ck.shape;
        kvSession = await rt.open(buildKvGraphBytes(layers, kvHeads, headDim), {
          ...base,
          deviceOutputs: 'all',
        });
      }
    } catch (e) {
      const hint =
        provider === 'cpu'
          ? ''
          : provider === 'webgpu'
            ? ' (no WebGPU adapter: is a Vulkan driver installed? see README, GPU notes)'
            : provider === 'cuda' && binding === 'capi'
              ? ' (are the CUDA provider libraries installed? npm run install:cuda; see README, GPU notes)'
              : ` (is the ${provider} build of ${rt.name} installed? see README, GPU notes)`;
      throw new SteerdError(
        `cannot start the ${provider} execution provider: ${(e as Error).message}${hint}`,
        500,
        'provider_unavailable',
      );
    }
    // the lean graph: the same body without hook points (see RunnerOptions.lean)
    let lean: GraphSession | undefined;
    if (opts.lean && provider === 'cpu' && !shape.device && (sites.length > 0 || shape.groups > 1)) {
      const leanName = fileName.replace(/\.onnx$/, '.lean.onnx');
      try {
        buildGraph(opts.model, { serving: { groups: 1, device: false, sites: [], dtype }, fileName: leanName });
        lean = await rt.open(join(opts.model, leanName), { ...base, bindingOptions: opts.sessionOptions });
      } catch (e) {
        // an optimisation: without it every pass runs the full graph, with the same bits
        console.warn(
          `steerd: the lean serving graph did not open (${(e as Error).message}); the full one serves alone`,
        );
      }
    }
    const info = modelInfo(ck, provider, sites, opts.dtype, binding);
    const kv: KvShape = { nLayer: ck.shape.layers, nHead: ck.shape.kvHeads, headDim: ck.shape.headDim };
    return new ModelRunner(session, info, tokenizer, shape.groups, kv, kvSession, lean, shape.exact);
  }

  async forward(inp: ForwardInput): Promise<ForwardOutput> {
    const { nLayer, nHead, headDim } = this.kv;
    const device = this.location === 'device';
    const B = inp.ids.length;
    const T = inp.ids[0].length;
    // a pass over fresh prompts has nothing cached: its rows are group 0's, with no slots (on the
    // device, which takes no empty tensor, the KV manager's block of masked zero slots: kv/manager.ts)
    if (!inp.groups.length && device) throw new Error('a device pass needs its cache groups (KvManager.empty)');
    const all: KvPast[] = inp.groups.length ? inp.groups : [{ k: [], v: [], P: 0, rows: B }];
    const reads = inp.read ?? [];
    // the lean graph (one cache group, no hook points) when no row steers or reads and the rows sit
    // in one group: that group is fed as the lean graph's only one
    const used = this.lean ? all.filter((grp) => grp && grp.rows > 0) : all;
    const lean =
      this.lean !== undefined && used.length <= 1 && !inp.steer.add.size && !inp.steer.proj.size && !reads.length;
    const groups = lean ? [used[0] ?? all[0]] : all;
    const G = lean ? 1 : this.groups;
    const rt = this.rt;
    const feeds: Record<string, Tensor> = {
      input_ids: i64(rt, inp.ids),
      position_ids: i64(rt, inp.pos),
      new_len: rt.int64(inp.newLen),
      past_len: rt.int64(inp.pastLen),
      group_rows: rt.int64(Array.from({ length: G }, (_, g) => groups[g]?.rows ?? 0)),
      logits_all: inp.logitsAll ? this.allPositions : this.lastOnly,
      lens_in: inp.lens ? rt.float32(inp.lens, [inp.lens.length / this.info.n_embd, this.info.n_embd]) : this.noLens,
    };
    for (let g = 0; g < G; g++) {
      const grp = groups[g];
      const dims = [grp?.rows ?? 0, nHead, grp?.P ?? 0, headDim];
      const has = grp && grp.rows > 0 && grp.P > 0;
      const feed = (b: KvBlock | undefined): Tensor => (b && !isHost(b) ? b : rt.float32(has && b ? b : EMPTY, dims));
      for (let l = 0; l < nLayer; l++) {
        feeds[`past.${l}.${g}.key`] = feed(grp?.k[l]);
        feeds[`past.${l}.${g}.value`] = feed(grp?.v[l]);
      }
    }
    const H = this.info.n_embd;
    for (const { site, layer } of lean ? [] : this.hooks) {
      const name = steerName(site, layer);
      const add = inp.steer.add.get(name);
      feeds[name] = add ? rt.float32(add, [B, T, H]) : this.zero;
      const p = inp.steer.proj.get(name);
      feeds[projName(site, layer, 'u')] = p ? rt.float32(p.u, [B, p.K, H]) : this.noProj;
      feeds[projName(site, layer, 'z')] = p ? rt.float32(p.z, [B, p.K, H]) : this.noProj;
    }
    let fetch: string[];
    if (device) {
      // every output, in order (see open()); the hook points asked come back through `reads` (none
      // in the exact form; WebGPU's takes no empty tensor: the first hook point stands in for none)
      const idx = reads.map((r) => this.points.indexOf(r));
      feeds.read_idx = idx.length ? rt.int64(idx) : this.noReads;
      feeds.lens_all = inp.lens ? this.allPositions : this.lastOnly;
      fetch = this.allOutputs;
    } else
      fetch = [...this.fetches, ...reads, ...(inp.logitsAll ? ['logits'] : []), ...(inp.lens ? ['lens_logits'] : [])];
    const out = await (lean ? this.lean! : this.session).run(feeds, fetch);
    this.bytes.runs++;
    for (const t of Object.values(feeds)) this.bytes.input += hostBytesOf(t);
    for (const t of Object.values(out)) this.bytes.output += hostBytesOf(t);
    const fresh = { k: [] as KvBlock[], v: [] as KvBlock[], T };
    for (let l = 0; l < nLayer; l++) {
      for (const [kind, list] of [
        ['key', fresh.k],
        ['value', fresh.v],
      ] as const) {
        const t = out[`new.${l}.${kind}`];
        list.push(t.location === 'cpu' ? f32(t) : t);
      }
    }
    if (device) this.produced.push(fresh as DeviceKv);
    const read = new Map<string, Float32Array>();
    if (device) {
      const all = f32(out.reads); // [R, B, T, H]
      for (const [i, name] of reads.entries()) read.set(name, all.subarray(i * B * T * H, (i + 1) * B * T * H));
    } else for (const name of reads) read.set(name, f32(out[name]));
    return {
      lastLogits: f32(out.last_logits),
      lastLse: f32(out.last_lse),
      fresh,
      read,
      ...(inp.logitsAll && { logits: f32(out.logits) }),
      ...(inp.lens && { lens: f32(out.lens_logits) }),
    };
  }

  /**
   * Gives back the device tensors the passes returned since the last call (their new keys and
   * values: the stores have copied what they keep). The scheduler calls it once its step is over.
   */
  endStep(): void {
    for (const t of this.produced) for (const x of [...t.k, ...t.v]) x.dispose();
    this.produced = [];
  }

  async close(): Promise<void> {
    this.endStep();
    await this.kvSession?.release();
    await this.lean?.release();
    await this.session.release();
  }
}

/**
 * What a KV budget on the CUDA device may be a share of: half the device's free memory, for a
 * device store rebuilds its cache beside the old one before giving the old one back
 * (kv/device-store.ts), holding both for a moment; a clear refusal where it cannot be known.
 */
function cudaKvMemory(): number {
  const free = cudaFreeMemory(CUDA_DEVICE_ID);
  if (free === undefined)
    throw new SteerdError(
      'the KV cache is on the CUDA device, whose free memory nvidia-smi did not report: set its size with STEERD_KV_CACHE_TOKENS (tokens) or STEERD_KV_CACHE_MEMORY in bytes (> 1)',
      500,
      'kv_budget_unknown',
    );
  return free / 2;
}
