import { randomInt } from 'node:crypto';
import { SteerdError, UnprocessableError } from '../errors.js';
import { seed32 } from '../util/rng.js';
import { TextStream } from './detok.js';
import { alignUp, type KvSource, KvStore } from './kv.js';
import { bytesPerToken, classOf, sizeClasses } from './kv-budget.js';
import type { ForwardOutput, ModelRunner, PastGroup } from './runner.js';
import { Sampler } from './sampler.js';
import { buildSteer, type RowSteering } from './steer.js';
import type { ActivationsRequest, ActivationsResult, FinishReason, GenerateEvent, GenerateRequest } from './types.js';

/** Scheduling options; every default suits a CPU and GPT-2 small. */
export interface SchedulerOptions {
  /** Rows decoded together at most (running requests). Default 32. */
  batchCapacity?: number;
  /**
   * Prompt tokens prefilled per scheduler step at most (padding counted). A longer prompt is
   * prefilled in chunks of this size, one chunk per step, so running rows wait at most one chunk
   * between two of their tokens. The chunks start at fixed positions (multiples of this), so a
   * prompt's numbers never depend on the load. Default 256.
   */
  tokenBudget?: number;
  /** Tokens of KV cache, all rows together (kv-budget.ts). Default: batch capacity × context. */
  kvCacheTokens?: number;
}

/** What the scheduler reports of its KV cache. */
export interface KvUsage {
  /** Tokens reserved by admitted requests (their size classes). */
  used: number;
  /** The budget. */
  tokens: number;
  /** Host bytes the stores commit now. */
  bytes: number;
}

/** What the scheduler reports to its owner (the worker posts these to the main thread). */
export interface SchedulerSink {
  event(id: number, e: GenerateEvent): void;
  activations(id: number, r: ActivationsResult): void;
  error(id: number, e: SteerdError): void;
}

type State = 'waiting' | 'prefill' | 'decoding' | 'done';

/** A request in flight: llama.cpp's slot, with explicit states. */
interface Slot {
  id: number;
  req: GenerateRequest;
  state: State;
  steering: RowSteering;
  sampler: Sampler;
  text: TextStream;
  seed: number;
  maxNew: number;
  /** Size class (index into the scheduler's classes) and the tokens it reserves once admitted. */
  kvClass: number;
  reserved: number;
  /** Prompt tokens already in the cache (chunked prefill). */
  prefilled: number;
  /** A long prompt's cache while it is prefilled chunk by chunk. */
  staging?: KvStore;
  /** The prompt's cache, ready to join the running batch. */
  source?: KvSource;
  /** Generated tokens (EOS excluded). */
  generated: number[];
  /** The token to feed at the next decode step. */
  next?: number;
  cancelled: boolean;
  finish?: FinishReason;
  submitted: number;
  started?: number;
  firstToken?: number;
}

interface ActivationJob {
  id: number;
  req: ActivationsRequest;
}

const now = () => performance.timeOrigin + performance.now();

/** The rows of one size class and the store that holds their cache: row r of `store` is `rows[r]`. */
interface ClassRows {
  store: KvStore;
  rows: Slot[];
}

/**
 * Continuous batching: between any two decode steps, finished rows leave, waiting requests are
 * admitted in order while their size class fits the KV budget (kv-budget.ts), prefilled (chunked,
 * within a token budget), and their caches join their class's store (kv.ts). One `step()` = at most
 * one prefill pass + one decode pass, in which each class is one cache group of the serving graph.
 */
export class Scheduler {
  private readonly capacity: number;
  private readonly prefillBudget: number;
  /** KV budget in tokens, and its size classes (ascending). */
  readonly kvTokens: number;
  readonly classes: number[];
  private kvUsed = 0;
  private readonly slots = new Map<number, Slot>();
  private readonly waiting: Slot[] = [];
  private readonly jobs: ActivationJob[] = [];
  private byClass: ClassRows[];

  constructor(
    private readonly runner: ModelRunner,
    private readonly sink: SchedulerSink,
    opts: SchedulerOptions = {},
  ) {
    this.capacity = opts.batchCapacity ?? 32;
    this.prefillBudget = opts.tokenBudget ?? 256;
    const ctx = runner.info.n_positions;
    this.kvTokens = opts.kvCacheTokens ?? this.capacity * ctx;
    this.classes = sizeClasses(Math.min(ctx, this.kvTokens));
    if (this.classes.length > runner.groups)
      throw new Error(`${this.classes.length} size classes, the graph has ${runner.groups} groups`);
    this.byClass = this.emptyClasses();
  }

  private emptyClasses(): ClassRows[] {
    return this.classes.map((cap) => ({
      store: new KvStore(this.runner.kv, Math.min(this.capacity, Math.floor(this.kvTokens / cap)), cap),
      rows: [],
    }));
  }

  /** KV cache reserved, budget, and bytes held. */
  get kv(): KvUsage {
    return { used: this.kvUsed, tokens: this.kvTokens, bytes: this.byClass.reduce((a, c) => a + c.store.bytes, 0) };
  }

  /** Requests not finished yet (waiting, prefilling or decoding) plus pending activation jobs. */
  get pending(): number {
    return this.slots.size + this.jobs.length;
  }

  submit(id: number, req: GenerateRequest): void {
    const seed = req.seed ?? randomInt(0, 2 ** 32);
    const slot: Slot = {
      id,
      req,
      state: 'waiting',
      steering: { interventions: req.interventions ?? [], promptLength: req.prompt.length },
      sampler: new Sampler(
        {
          temperature: req.temperature ?? 1,
          top_k: req.top_k ?? 0,
          top_p: req.top_p ?? 1,
          frequency_penalty: req.frequency_penalty ?? 0,
          presence_penalty: req.presence_penalty ?? 0,
        },
        seed32(seed),
        this.runner.info.vocab_size,
      ),
      text: new TextStream(this.runner.tokenizer, req.stop ?? []),
      seed,
      maxNew: req.max_new_tokens ?? 64,
      kvClass: 0,
      reserved: 0,
      prefilled: 0,
      generated: [],
      cancelled: false,
      submitted: now(),
    };
    // validation refused requests that can never fit (validate.ts)
    slot.kvClass = classOf(this.classes, req.prompt.length + slot.maxNew);
    if (slot.kvClass < 0) throw new Error(`request of ${req.prompt.length + slot.maxNew} tokens beyond the KV budget`);
    this.slots.set(id, slot);
    this.waiting.push(slot);
  }

  cancel(id: number): void {
    const s = this.slots.get(id);
    if (s) s.cancelled = true;
  }

  activations(id: number, req: ActivationsRequest): void {
    this.jobs.push({ id, req });
  }

  /** Forgets every request (after a failed forward pass, whose requests were failed by the caller). */
  reset(): void {
    this.slots.clear();
    this.waiting.length = 0;
    this.jobs.length = 0;
    this.kvUsed = 0;
    this.byClass = this.emptyClasses();
  }

  /** One scheduling step; returns false when there was nothing to do. */
  async step(): Promise<boolean> {
    if (this.pending === 0) return false;
    this.retireCancelled();
    const job = this.jobs.shift();
    if (job) await this.runActivations(job);
    // admit in order while the next request's size class fits: a large request that waits is not
    // overtaken by smaller ones, so it cannot starve
    while (this.waiting.length && this.slots.size - this.waiting.length < this.capacity) {
      const next = this.waiting[0];
      const need = this.classes[next.kvClass];
      if (this.kvUsed + need > this.kvTokens) break;
      this.waiting.shift();
      next.state = 'prefill';
      next.reserved = need;
      this.kvUsed += need;
    }
    await this.prefill();
    await this.decode();
    return true;
  }

  private retireCancelled(): void {
    for (const s of this.slots.values()) {
      if (!s.cancelled || s.state === 'done') continue;
      if (s.state === 'waiting') this.waiting.splice(this.waiting.indexOf(s), 1);
      this.finish(s, 'cancelled');
    }
  }

  /** Picks prefill work within the token budget: a chunk of one long prompt, or several whole short ones. */
  private async prefill(): Promise<void> {
    const candidates = [...this.slots.values()].filter((s) => s.state === 'prefill');
    if (!candidates.length) return;
    const first = candidates[0];
    if (first.prefilled > 0 || first.req.prompt.length > this.prefillBudget) {
      await this.prefillChunk(first);
      return;
    }
    const group: Slot[] = [];
    let T = 0;
    for (const s of candidates) {
      if (s.prefilled > 0 || s.req.prompt.length > this.prefillBudget) continue;
      const t = Math.max(T, alignUp(s.req.prompt.length));
      if (group.length && (group.length + 1) * t > this.prefillBudget) break;
      group.push(s);
      T = t;
    }
    await this.prefillGroup(group, T);
  }

  /** Whole prompts of several new rows in one right-padded pass (nothing cached yet). */
  private async prefillGroup(group: Slot[], T: number): Promise<void> {
    const prompts = group.map((s) => s.req.prompt);
    for (const s of group) s.started ??= now();
    const positions = prompts.map((p) => p.map((_, i) => i));
    const out = await this.runner.forward({
      ...padRows(prompts, positions, T),
      newLen: prompts.map((p) => p.length),
      pastLen: prompts.map(() => 0),
      groups: [],
      steer: this.steer(group, positions, T),
    });
    group.forEach((s, b) => {
      const L = s.req.prompt.length;
      s.prefilled = L;
      s.source = { k: out.fresh.k, v: out.fresh.v, S: T, b, from: 0, count: L };
      this.afterPrefill(s, out, b);
    });
  }

  /**
   * The next chunk of one row's prompt, on top of its cache so far. Chunks start at multiples of
   * the prefill budget whatever else is running, so a long prompt is always cut the same way.
   */
  private async prefillChunk(s: Slot): Promise<void> {
    s.started ??= now();
    const L = s.req.prompt.length;
    if (!s.staging) {
      s.staging = new KvStore(this.runner.kv, 1, this.classes[s.kvClass]);
      s.staging.pushEmpty(L);
    }
    const from = s.prefilled;
    const to = Math.min(L, from + this.prefillBudget);
    const chunk = [s.req.prompt.slice(from, to)];
    const positions = [chunk[0].map((_, i) => from + i)];
    const T = alignUp(chunk[0].length);
    const out = await this.runner.forward({
      ...padRows(chunk, positions, T),
      newLen: [chunk[0].length],
      pastLen: [from],
      groups: [s.staging.past()],
      steer: this.steer([s], positions, T),
    });
    s.staging.append(0, { k: out.fresh.k, v: out.fresh.v, S: T, b: 0, from: 0, count: chunk[0].length });
    s.prefilled = to;
    if (to === L) {
      s.source = { k: s.staging.k, v: s.staging.v, S: s.staging.P, b: 0, from: 0, count: L };
      s.staging = undefined;
      this.afterPrefill(s, out, 0);
    }
  }

  /** The `steer.{l}` inputs of a pass: rows' interventions at their tokens' positions (padding: none). */
  private steer(rows: Slot[], positions: number[][], T: number) {
    const padded = positions.map((p) => [...p, ...new Array(T - p.length).fill(-1)]);
    const { n_layer, n_embd } = this.runner.info;
    return buildSteer(
      rows.map((s) => s.steering),
      padded,
      n_layer,
      n_embd,
    );
  }

  /** The prompt is in the cache: sample the first token and join the running batch. */
  private afterPrefill(s: Slot, out: ForwardOutput, b: number): void {
    const V = this.runner.info.vocab_size;
    if (s.cancelled) {
      this.finish(s, 'cancelled');
      return;
    }
    s.state = 'decoding';
    this.accept(s, out.lastLogits.subarray(b * V, (b + 1) * V), out.lastLse[b]);
  }

  /** Samples from a row's logits, emits the token, and finishes the row when it should stop. */
  private accept(s: Slot, logits: Float32Array, lse: number): void {
    if (!Number.isFinite(lse)) {
      // a coefficient large enough to overflow float32 in the residual stream (LayerNorm squares it)
      this.abort(
        s,
        new UnprocessableError(
          'the logits are not finite: the steered residual stream overflowed float32; lower the coeff of the interventions',
        ),
      );
      return;
    }
    const { id, logprob } = s.sampler.sample(logits, lse);
    s.sampler.observe(id);
    s.firstToken ??= now();
    if (id === this.runner.info.eos_token_id && s.req.stop_at_eos !== false) {
      this.finish(s, 'eos');
      return;
    }
    s.generated.push(id);
    s.next = id;
    const text = s.text.push(id);
    this.sink.event(s.id, { type: 'token', id, text, logprob });
    if (s.text.stopped) {
      this.finish(s, 'stop');
      return;
    }
    if (s.generated.length >= s.maxNew) {
      this.finish(s, 'length');
      return;
    }
  }

  /** Ends a row with an error instead of a done event; its cache is zeroed (it may hold NaNs). */
  private abort(s: Slot, e: SteerdError): void {
    const c = this.byClass[s.kvClass];
    const r = c.rows.indexOf(s);
    if (r >= 0) c.store.zero(r);
    this.release(s);
    s.state = 'done';
    s.source = undefined;
    s.staging = undefined;
    this.slots.delete(s.id);
    this.sink.error(s.id, e);
  }

  /** Gives back an admitted request's KV reservation. */
  private release(s: Slot): void {
    this.kvUsed -= s.reserved;
    s.reserved = 0;
  }

  private finish(s: Slot, reason: FinishReason): void {
    if (s.state === 'done') return;
    this.release(s);
    s.state = 'done';
    s.source = undefined;
    s.staging = undefined;
    const text = reason === 'cancelled' || reason === 'stop' ? '' : s.text.finish();
    if (text) this.sink.event(s.id, { type: 'token', id: -1, text, logprob: 0 });
    const end = now();
    this.slots.delete(s.id);
    this.sink.event(s.id, {
      type: 'done',
      finish_reason: reason,
      text: s.text.text,
      seed: s.seed,
      usage: { prompt_tokens: s.req.prompt.length, completion_tokens: s.generated.length },
      timings: {
        queue_ms: (s.started ?? end) - s.submitted,
        first_token_ms: (s.firstToken ?? end) - s.submitted,
        total_ms: end - s.submitted,
      },
    });
  }

  /**
   * Rows that finished leave their class's store, new ones join, then one decode step for all: the
   * batch is the classes' rows in class order, each class one cache group of the pass.
   */
  private async decode(): Promise<void> {
    for (const c of this.byClass) {
      for (let r = c.rows.length - 1; r >= 0; r--) {
        if (c.rows[r].state === 'decoding') continue;
        if (c.store.remove(r) >= 0) c.rows[r] = c.rows[c.rows.length - 1];
        c.rows.pop();
      }
    }
    this.limitMemory();
    for (const s of this.slots.values()) {
      if (s.state !== 'decoding' || !s.source) continue;
      const c = this.byClass[s.kvClass];
      c.store.push(s.source);
      c.rows.push(s);
      s.source = undefined;
    }
    const rows = this.byClass.flatMap((c) => c.rows);
    if (!rows.length) return;
    const groups: PastGroup[] = [];
    const positions: number[][] = [];
    for (const c of this.byClass) {
      if (c.rows.length) c.store.reserve(Math.max(...c.store.len) + 1);
      groups.push(c.store.past());
      for (const n of c.store.len) positions.push([n]); // the new token's position = tokens already cached
    }
    const out = await this.runner.forward({
      ids: rows.map((s) => [s.next!]),
      pos: positions,
      newLen: rows.map(() => 1),
      pastLen: positions.map(([n]) => n),
      groups,
      steer: this.steer(rows, positions, 1),
    });
    const V = this.runner.info.vocab_size;
    let b = 0;
    for (const c of this.byClass) {
      // accept() may end a row (its store keeps it until the next step): index by a copy
      for (const [r, s] of [...c.rows].entries()) {
        c.store.append(r, { k: out.fresh.k, v: out.fresh.v, S: 1, b, from: 0, count: 1 });
        if (s.state === 'decoding') {
          if (s.cancelled) this.finish(s, 'cancelled');
          else this.accept(s, out.lastLogits.subarray(b * V, (b + 1) * V), out.lastLse[b]);
        }
        b++;
      }
    }
  }

  /**
   * Keeps the pages the stores commit within the budget: rows that left leave their pages written
   * until a store is reallocated, so the stores with the most such slack are compacted first.
   */
  private limitMemory(): void {
    const limit = this.kvTokens * bytesPerToken(this.runner.kv);
    const stores = this.byClass.map((c) => c.store);
    let bytes = stores.reduce((a, st) => a + st.bytes, 0);
    for (const st of [...stores].sort((a, b) => b.slack - a.slack)) {
      if (bytes <= limit || st.slack === 0) break;
      bytes -= st.slack;
      st.compact();
    }
  }

  private async runActivations(job: ActivationJob): Promise<void> {
    const { req } = job;
    try {
      const T = req.prompt.length;
      const H = this.runner.info.n_embd;
      const positions = [req.prompt.map((_, i) => i)];
      const steering = { interventions: req.interventions ?? [], promptLength: T };
      const layers = [...new Set(req.layers)];
      const Tp = alignUp(T);
      const padded = [[...positions[0], ...new Array(Tp - T).fill(-1)]];
      const out = await this.runner.forward({
        ...padRows([req.prompt], positions, Tp),
        newLen: [T],
        pastLen: [0],
        groups: [],
        steer: buildSteer([steering], padded, this.runner.info.n_layer, H),
        resid: layers,
      });
      const reduce = req.reduce ?? 'none';
      const activations: Record<number, Float32Array> = {};
      for (const l of layers) {
        const all = out.resid.get(l)!.subarray(0, T * H); // [1, T, H] of [1, Tp, H]
        if (reduce === 'none') activations[l] = all.slice();
        else if (reduce === 'last') activations[l] = all.slice((T - 1) * H, T * H);
        else {
          const sum = new Float64Array(H);
          for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) sum[i] += all[t * H + i];
          activations[l] = Float32Array.from(sum, (v) => v / T);
        }
      }
      this.sink.activations(job.id, { tokens: req.prompt, activations, rows: reduce === 'none' ? T : 1 });
    } catch (e) {
      this.sink.error(
        job.id,
        e instanceof SteerdError ? e : new SteerdError(String((e as Error).message), 500, 'engine_error'),
      );
    }
  }
}

/** Token ids and positions right-padded to T (padding: token 0 at position 0, never attended). */
function padRows(ids: number[][], positions: number[][], T: number) {
  const pad = (r: number[]) => [...r, ...new Array(T - r.length).fill(0)];
  return { ids: ids.map(pad), pos: positions.map(pad) };
}
