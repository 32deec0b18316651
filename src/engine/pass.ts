import type { Tokenizer } from '../model/tokenizer.js';
import type { KvMemory } from './kv/manager.js';
import type { KvBlock, KvPast } from './kv/store.js';
import type { HostBytes } from './runtime/runtime.js';
import type { PassSteering } from './steer.js';
import type { ModelInfo } from './types.js';

/**
 * A forward pass as the scheduler sees it (docs/architecture.md §2 A request's path, §5 Slots and
 * the scheduler): what goes in, what comes out, and the interface of what runs it. The model
 * runner (runner.ts) implements `Pass` with ONNX Runtime; the scheduler's tests with a fake.
 */

export interface ForwardInput {
  /** [B][T] token ids, each row's real tokens first (right-padded), and their positions. */
  ids: number[][];
  pos: number[][];
  /** [B] real new tokens of each row. */
  newLen: number[];
  /** [B] tokens each row already holds in its group's cache. */
  pastLen: number[];
  /** The cache groups, rows in batch order (Σ rows = B); missing groups are empty; none: all rows in group 0 with nothing cached (host cache only). */
  groups: KvPast[];
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
  /** The new tokens' keys and values: [B, n_head, T, head_dim] per layer (on the device there; see endStep()). */
  fresh: { k: KvBlock[]; v: KvBlock[]; T: number };
  /** [B, T, H] per hook-point output read. */
  read: Map<string, Float32Array>;
  /** [B, T, V] with `logitsAll`. */
  logits?: Float32Array;
  /** [N, V] with `lens`: each vector through ln_f and the unembedding. */
  lens?: Float32Array;
}

/** What the scheduler needs of the model runner. */
export interface Pass extends KvMemory {
  readonly info: ModelInfo;
  readonly tokenizer: Tokenizer;
  /** Cache groups of the serving graph. */
  readonly groups: number;
  /** Host bytes passed into and returned from session runs so far. */
  readonly hostBytes: HostBytes;
  forward(inp: ForwardInput): Promise<ForwardOutput>;
  /** Gives back what the passes returned on the device since the last call (the step is over). */
  endStep(): void;
}

/** Token ids and positions right-padded to T (padding: token 0 at position 0, never attended). */
export function padRows(ids: number[][], positions: number[][], T: number) {
  const pad = (r: number[]) => [...r, ...new Array(T - r.length).fill(0)];
  return { ids: ids.map(pad), pos: positions.map(pad) };
}
