/**
 * A stand-in for the model runner (src/engine/pass.ts `Pass`) without ONNX Runtime, for driving the
 * scheduler in tests. Its "model" is a rule on token sequences: the next token is `nextToken(seq)`,
 * one more (mod 13) on a row steered at its last position. A row's sequence is read from the cache
 * the pass is given (its keys hold the tokens, its values their positions) plus its new tokens, so
 * a row fed the wrong cache generates the wrong tokens. Every pass is logged.
 */
import type { ForwardInput, ForwardOutput, Pass } from '../../src/engine/pass.ts';
import type { ModelInfo } from '../../src/engine/types.ts';
import type { Tokenizer } from '../../src/model/tokenizer.ts';

export const VOCAB = 16;
export const EOS = 15;
const H = 4;

/** The rule the fake model follows (never EOS). */
export const nextToken = (seq: readonly number[]) => (seq.reduce((a, b) => a + b, 0) * 7 + seq.length) % 13;

/** The tokens a request generates alone: greedy under the rule, `steered` shifting each by one. */
export function reference(prompt: readonly number[], maxNew: number, steered = false): number[] {
  const seq = [...prompt];
  const out: number[] = [];
  for (let i = 0; i < maxNew; i++) {
    const t = steered ? (nextToken(seq) + 1) % 13 : nextToken(seq);
    seq.push(t);
    out.push(t);
  }
  return out;
}

/** One pass as the fake saw it: each row's whole sequence (cache + new tokens) and the pass's shape. */
export interface PassLog {
  B: number;
  T: number;
  newLen: number[];
  pastLen: number[];
  seqs: number[][];
}

export class FakePass implements Pass {
  readonly info: ModelInfo = {
    architecture: 'fake',
    model_type: 'fake',
    norm: 'layernorm',
    n_layer: 1,
    n_embd: H,
    n_head: 1,
    n_kv_head: 1,
    n_positions: 128,
    vocab_size: VOCAB,
    eos_token_id: EOS,
    eos_token_ids: [EOS],
    fingerprint: 'fake',
    graph_hash: 'fake',
    hook_sites: ['resid_pre'],
    provider: 'fake',
    binding: 'node',
    dtype: 'float32',
  };
  readonly tokenizer = {
    bytes: (ids: number[]) => Uint8Array.from(ids, (id) => 97 + id),
  } as unknown as Tokenizer;
  readonly groups = 2;
  readonly kv = { nLayer: 1, nHead: 1, headDim: 1 };
  readonly hostBytes = { input: 0, output: 0, runs: 0 };
  readonly log: PassLog[] = [];
  endSteps = 0;
  /** The next pass throws. */
  failNext = false;

  async forward(inp: ForwardInput): Promise<ForwardOutput> {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('the pass failed');
    }
    this.hostBytes.runs++;
    const B = inp.ids.length;
    const T = inp.ids[0].length;
    // each row's cached tokens: group by group, rows in batch order
    const cached: number[][] = [];
    for (const g of inp.groups) {
      for (let r = 0; r < g.rows; r++) {
        const b = cached.length;
        const k = g.k[0] as Float32Array | undefined;
        const v = g.v[0] as Float32Array | undefined;
        const row: number[] = [];
        for (let p = 0; p < inp.pastLen[b]; p++) {
          if (v![r * g.P + p] !== p) throw new Error(`row ${b}: slot ${p} holds position ${v![r * g.P + p]}`);
          row.push(k![r * g.P + p]);
        }
        cached.push(row);
      }
    }
    if (cached.length !== B) throw new Error(`${cached.length} cached rows for a batch of ${B}`);
    const seqs: number[][] = [];
    const lastLogits = new Float32Array(B * VOCAB);
    const lastLse = new Float32Array(B);
    const logits = inp.logitsAll ? new Float32Array(B * T * VOCAB) : undefined;
    const freshK = new Float32Array(B * T);
    const freshV = new Float32Array(B * T);
    for (let b = 0; b < B; b++) {
      const seq = [...cached[b]];
      for (let t = 0; t < inp.newLen[b]; t++) {
        if (inp.pos[b][t] !== inp.pastLen[b] + t) throw new Error(`row ${b}: token ${t} at position ${inp.pos[b][t]}`);
        seq.push(inp.ids[b][t]);
        freshK[b * T + t] = inp.ids[b][t];
        freshV[b * T + t] = inp.pos[b][t];
        if (logits) this.logitsOf(seq, false, logits, (b * T + t) * VOCAB);
      }
      seqs.push(seq);
      lastLse[b] = this.logitsOf(seq, this.steered(inp, b, inp.newLen[b] - 1), lastLogits, b * VOCAB);
    }
    this.log.push({ B, T, newLen: [...inp.newLen], pastLen: [...inp.pastLen], seqs });
    const read = new Map((inp.read ?? []).map((name) => [name, new Float32Array(B * T * H)]));
    return { lastLogits, lastLse, fresh: { k: [freshK], v: [freshV], T }, read, ...(logits && { logits }) };
  }

  endStep(): void {
    this.endSteps++;
  }

  /** Whether row b is steered at its token t (any add there). */
  private steered(inp: ForwardInput, b: number, t: number): boolean {
    const T = inp.ids[0].length;
    for (const add of inp.steer.add.values())
      for (let i = 0; i < H; i++) if (add[(b * T + t) * H + i] !== 0) return true;
    return false;
  }

  /** Writes the logits after `seq` at `at` (peaked at the rule's token); returns their log-sum-exp. */
  private logitsOf(seq: number[], steered: boolean, out: Float32Array, at: number): number {
    const want = steered ? (nextToken(seq) + 1) % 13 : nextToken(seq);
    let sum = 0;
    for (let i = 0; i < VOCAB; i++) {
      out[at + i] = -2 * Math.abs(i - want);
      sum += Math.exp(out[at + i]);
    }
    return Math.log(sum);
  }
}
