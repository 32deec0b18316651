import { randomInt } from 'node:crypto';
import { SteerdError, UnprocessableError } from '../errors.js';
import { seed32 } from '../util/rng.js';
import { TextStream } from './detok.js';
import { type KvSource, KvStore } from './kv.js';
import type { ForwardOutput, ModelRunner } from './runner.js';
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
   * between two of their tokens. Default 256.
   */
  tokenBudget?: number;
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

/**
 * Continuous batching: between any two decode steps, finished rows leave, waiting requests are
 * admitted and prefilled (chunked, within a token budget), and their caches join the running
 * batch's KV store (kv.ts). One `step()` = at most one prefill pass + one decode pass.
 */
export class Scheduler {
  private readonly capacity: number;
  private readonly budget: number;
  private readonly slots = new Map<number, Slot>();
  private readonly waiting: Slot[] = [];
  private readonly jobs: ActivationJob[] = [];
  /** The running batch: row r of `batch` is `rows[r]`. */
  private rows: Slot[] = [];
  private batch: KvStore;

  constructor(
    private readonly runner: ModelRunner,
    private readonly sink: SchedulerSink,
    opts: SchedulerOptions = {},
  ) {
    this.capacity = opts.batchCapacity ?? 32;
    this.budget = opts.tokenBudget ?? 256;
    this.batch = new KvStore(runner.kv, this.capacity, runner.info.n_positions);
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
      prefilled: 0,
      generated: [],
      cancelled: false,
      submitted: now(),
    };
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
    this.rows = [];
    this.batch = new KvStore(this.runner.kv, this.capacity, this.runner.info.n_positions);
  }

  /** One scheduling step; returns false when there was nothing to do. */
  async step(): Promise<boolean> {
    if (this.pending === 0) return false;
    this.retireCancelled();
    const job = this.jobs.shift();
    if (job) await this.runActivations(job);
    while (this.waiting.length && this.slots.size - this.waiting.length < this.capacity) {
      this.waiting.shift()!.state = 'prefill';
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
    const remaining = (s: Slot) => s.req.prompt.length - s.prefilled;
    if (first.prefilled > 0 || remaining(first) > this.budget) {
      await this.prefillChunk(first);
      return;
    }
    const group: Slot[] = [];
    let T = 0;
    for (const s of candidates) {
      if (s.prefilled > 0) continue;
      const t = Math.max(T, remaining(s));
      if ((group.length + 1) * t > this.budget) break;
      group.push(s);
      T = t;
    }
    await this.prefillGroup(group, T);
  }

  /** Whole prompts of several new rows in one left-padded pass (P = 0). */
  private async prefillGroup(group: Slot[], T: number): Promise<void> {
    const eos = this.runner.info.eos_token_id;
    const ids: number[][] = [];
    const mask: number[][] = [];
    const pos: number[][] = [];
    for (const s of group) {
      s.started ??= now();
      const p = s.req.prompt;
      const pad = T - p.length;
      ids.push([...new Array(pad).fill(eos), ...p]);
      mask.push([...new Array(pad).fill(0), ...new Array(p.length).fill(1)]);
      pos.push([...new Array(pad).fill(-1), ...p.map((_, i) => i)]);
    }
    const steer = buildSteer(
      group.map((s) => s.steering),
      pos,
      this.runner.info.n_layer,
      this.runner.info.n_embd,
    );
    const out = await this.runner.forward({ ids, mask, pos: pos.map((r) => r.map((p) => Math.max(p, 0))), steer });
    group.forEach((s, b) => {
      const L = s.req.prompt.length;
      s.prefilled = L;
      s.source = { k: out.fresh.k, v: out.fresh.v, S: T, b, from: T - L, count: L }; // right-aligned
      this.afterPrefill(s, out, b);
    });
  }

  /** The next chunk of one row's prompt, on top of its cache so far (free slots masked). */
  private async prefillChunk(s: Slot): Promise<void> {
    s.started ??= now();
    const L = s.req.prompt.length;
    if (!s.staging) {
      s.staging = new KvStore(this.runner.kv, 1, L);
      s.staging.reserve(L);
      s.staging.pushEmpty();
    }
    const from = s.prefilled;
    const to = Math.min(L, from + this.budget);
    const chunk = s.req.prompt.slice(from, to);
    const positions = [chunk.map((_, i) => from + i)];
    const out = await this.runner.forward({
      ids: [chunk],
      mask: [s.staging.maskRow(0, chunk.length)],
      pos: positions,
      past: s.staging.past(),
      steer: buildSteer([s.steering], positions, this.runner.info.n_layer, this.runner.info.n_embd),
    });
    s.staging.append(0, { k: out.fresh.k, v: out.fresh.v, S: chunk.length, b: 0, from: 0, count: chunk.length });
    s.prefilled = to;
    if (to === L) {
      s.source = { k: s.staging.k, v: s.staging.v, S: s.staging.P, b: 0, from: 0, count: L };
      s.staging = undefined;
      this.afterPrefill(s, out, 0);
    }
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
    const r = this.rows.indexOf(s);
    if (r >= 0) this.batch.zero(r);
    s.state = 'done';
    s.source = undefined;
    s.staging = undefined;
    this.slots.delete(s.id);
    this.sink.error(s.id, e);
  }

  private finish(s: Slot, reason: FinishReason): void {
    if (s.state === 'done') return;
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

  /** Rows that finished leave the running batch, new ones join, then one decode step for all. */
  private async decode(): Promise<void> {
    const batch = this.batch;
    for (let r = this.rows.length - 1; r >= 0; r--) {
      if (this.rows[r].state === 'decoding') continue;
      if (batch.remove(r) >= 0) this.rows[r] = this.rows[this.rows.length - 1];
      this.rows.pop();
    }
    for (const s of this.slots.values()) {
      if (s.state !== 'decoding' || !s.source) continue;
      batch.push(s.source);
      this.rows.push(s);
      s.source = undefined;
    }
    const rows = this.rows;
    if (!rows.length) return;
    batch.reserve(Math.max(...batch.len) + 1);
    const positions = batch.len.map((n) => [n]); // the new token's position = tokens already cached
    const out = await this.runner.forward({
      ids: rows.map((s) => [s.next!]),
      mask: rows.map((_, r) => batch.maskRow(r, 1)),
      pos: positions,
      past: batch.past(),
      steer: buildSteer(
        rows.map((s) => s.steering),
        positions,
        this.runner.info.n_layer,
        this.runner.info.n_embd,
      ),
    });
    const V = this.runner.info.vocab_size;
    for (const [r, s] of rows.entries()) {
      batch.append(r, { k: out.fresh.k, v: out.fresh.v, S: 1, b: r, from: 0, count: 1 });
      if (s.state !== 'decoding') continue;
      if (s.cancelled) this.finish(s, 'cancelled');
      else this.accept(s, out.lastLogits.subarray(r * V, (r + 1) * V), out.lastLse[r]);
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
      const out = await this.runner.forward({
        ids: [req.prompt],
        mask: [new Array(T).fill(1)],
        pos: positions,
        steer: buildSteer([steering], positions, this.runner.info.n_layer, H),
        resid: layers,
      });
      const reduce = req.reduce ?? 'none';
      const activations: Record<number, Float32Array> = {};
      for (const l of layers) {
        const all = out.resid.get(l)!; // [1, T, H]
        if (reduce === 'none') activations[l] = all;
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
