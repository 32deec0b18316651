import { SteerdError, UnprocessableError } from '../errors.js';
import { readName } from '../model/hooks.js';
import { alignUp, type KvCache } from './kv.js';
import { bytesPerToken, classOf, sizeClasses } from './kv-budget.js';
import { logSumExp, topLogprobs } from './logprobs.js';
import type { ForwardOutput, HostBytes, ModelRunner, PastGroup } from './runner.js';
import { newSlot, rowsOf, type Slot } from './slot.js';
import { buildSteer, siteOf } from './steer.js';
import { argmax, dot, klDivergence } from './telemetry.js';
import type {
  ActivationsRequest,
  ActivationsResult,
  DoneEvent,
  FinishReason,
  GenerateEvent,
  GenerateRequest,
  TokenTelemetry,
} from './types.js';

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
  /** Bytes the stores hold now (host or device memory: the runner's `location`). */
  bytes: number;
  /** Host bytes passed into and returned from session runs so far (runner.ts). */
  hostBytes: HostBytes;
}

/** What /metrics sums over engines (a Redis worker's report: queue/protocol.ts). */
export type KvReport = Pick<KvUsage, 'used' | 'tokens'> & Partial<Pick<KvUsage, 'hostBytes'>>;

/** What the scheduler reports to its owner (the engine thread posts these to the main thread). */
export interface SchedulerSink {
  event(id: number, e: GenerateEvent): void;
  activations(id: number, r: ActivationsResult): void;
  error(id: number, e: SteerdError): void;
}

interface ActivationJob {
  id: number;
  req: ActivationsRequest;
}

const now = () => performance.timeOrigin + performance.now();

/** The rows of one size class and the store that holds their cache: row r of `store` is `rows[r]`. */
interface ClassRows {
  store: KvCache;
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
  /** Rows admitted (a telemetry request is two: itself and its twin). */
  private rowsUsed = 0;
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
    // one class per cache group of the graph (a graph with one group holds every row in one store)
    const top = Math.min(ctx, this.kvTokens);
    this.classes = runner.groups === 1 ? [top] : sizeClasses(top);
    if (this.classes.length > runner.groups)
      throw new Error(`${this.classes.length} size classes, the graph has ${runner.groups} groups`);
    this.byClass = this.emptyClasses();
  }

  private emptyClasses(): ClassRows[] {
    return this.classes.map((cap) => ({
      store: this.runner.newStore(Math.min(this.capacity, Math.floor(this.kvTokens / cap)), cap),
      rows: [],
    }));
  }

  /** KV cache reserved, budget, and bytes held. */
  get kv(): KvUsage {
    return {
      used: this.kvUsed,
      tokens: this.kvTokens,
      bytes: this.byClass.reduce((a, c) => a + c.store.bytes, 0),
      hostBytes: { ...this.runner.hostBytes },
    };
  }

  /** Requests not finished yet (waiting, prefilling or decoding) plus pending activation jobs. */
  get pending(): number {
    return this.slots.size + this.jobs.length;
  }

  submit(id: number, req: GenerateRequest): void {
    const slot = newSlot(id, req, this.runner.tokenizer, this.runner.info.vocab_size);
    // validation refused requests that can never fit (validate.ts)
    slot.kvClass = classOf(this.classes, req.prompt.length + slot.maxNew);
    if (slot.kvClass < 0) throw new Error(`request of ${req.prompt.length + slot.maxNew} tokens beyond the KV budget`);
    if (slot.twin) slot.twin.kvClass = slot.kvClass;
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
    for (const s of this.slots.values()) s.staging?.dispose();
    this.slots.clear();
    this.waiting.length = 0;
    this.jobs.length = 0;
    this.kvUsed = 0;
    this.rowsUsed = 0;
    for (const c of this.byClass) c.store.dispose();
    this.disposeRetired();
    this.runner.endStep();
    this.byClass = this.emptyClasses();
  }

  /** Stores whose rows left for their class's store this step (a prompt's staging), given back after it. */
  private retired: KvCache[] = [];

  private disposeRetired(): void {
    for (const st of this.retired) st.dispose();
    this.retired = [];
  }

  /** One scheduling step; returns false when there was nothing to do. */
  async step(): Promise<boolean> {
    if (this.pending === 0) return false;
    try {
      await this.steps();
    } finally {
      // the passes' device outputs were copied where they are kept (device-kv.ts): give them back
      this.disposeRetired();
      this.runner.endStep();
    }
    return true;
  }

  private async steps(): Promise<void> {
    this.retireCancelled();
    const job = this.jobs.shift();
    if (job) await this.runActivations(job);
    // admit in order while the next request's size class fits: a large request that waits is not
    // overtaken by smaller ones, so it cannot starve
    while (this.waiting.length) {
      const rows = rowsOf(this.waiting[0]);
      const need = this.classes[rows[0].kvClass];
      if (this.rowsUsed + rows.length > this.capacity || this.kvUsed + need * rows.length > this.kvTokens) break;
      this.waiting.shift();
      for (const r of rows) {
        r.state = 'prefill';
        r.reserved = need;
        this.kvUsed += need;
        this.rowsUsed++;
      }
    }
    await this.prefill();
    await this.decode();
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
    let rows = 0;
    let T = 0;
    for (const s of candidates) {
      if (s.prefilled > 0 || s.req.prompt.length > this.prefillBudget) continue;
      const t = Math.max(T, alignUp(s.req.prompt.length));
      const n = rowsOf(s).length;
      if (group.length && (rows + n) * t > this.prefillBudget) break;
      group.push(s);
      rows += n;
      T = t;
    }
    await this.prefillGroup(group, T);
  }

  /** Whole prompts of several new rows (and their twins) in one right-padded pass (nothing cached yet). */
  private async prefillGroup(group: Slot[], T: number): Promise<void> {
    const rows = group.flatMap(rowsOf);
    const prompts = rows.map((s) => s.req.prompt);
    for (const s of rows) s.started ??= now();
    const positions = prompts.map((p) => p.map((_, i) => i));
    const out = await this.runner.forward({
      ...padRows(prompts, positions, T),
      newLen: prompts.map((p) => p.length),
      pastLen: prompts.map(() => 0),
      groups: [],
      steer: this.steer(rows, positions, T),
      read: this.telemetryReads(group),
      logitsAll: group.some((s) => s.req.prompt_logprobs !== undefined),
    });
    for (const s of group) this.scorePrompt(s, out, rows.indexOf(s), T, 0, s.req.prompt.length);
    for (const [b, s] of rows.entries()) {
      s.prefilled = s.req.prompt.length;
      s.source = { k: out.fresh.k, v: out.fresh.v, S: T, b, from: 0, count: s.prefilled };
    }
    for (const s of group) this.afterPrefill(s, out, rows, T, s.req.prompt.length - 1);
  }

  /**
   * The next chunk of one row's prompt, on top of its cache so far. Chunks start at multiples of
   * the prefill budget whatever else is running, so a long prompt is always cut the same way.
   */
  private async prefillChunk(s: Slot): Promise<void> {
    const rows = rowsOf(s);
    s.started ??= now();
    const L = s.req.prompt.length;
    if (!s.staging) {
      s.staging = this.runner.newStore(rows.length, this.classes[s.kvClass]);
      for (const _ of rows) s.staging.pushEmpty(L);
    }
    const staging = s.staging;
    const from = s.prefilled;
    const to = Math.min(L, from + this.prefillBudget);
    const chunk = rows.map(() => s.req.prompt.slice(from, to));
    const positions = chunk.map((c) => c.map((_, i) => from + i));
    const T = alignUp(chunk[0].length);
    const out = await this.runner.forward({
      ...padRows(chunk, positions, T),
      newLen: chunk.map((c) => c.length),
      pastLen: chunk.map(() => from),
      groups: [await staging.past()],
      steer: this.steer(rows, positions, T),
      read: to === L ? this.telemetryReads([s]) : [],
      logitsAll: s.req.prompt_logprobs !== undefined,
    });
    this.scorePrompt(s, out, 0, T, from, to);
    for (const b of rows.keys())
      staging.append(b, { k: out.fresh.k, v: out.fresh.v, S: T, b, from: 0, count: chunk[b].length });
    await staging.flush();
    s.prefilled = to;
    if (to === L) {
      for (const [b, r] of rows.entries()) r.source = staging.source(b);
      this.retired.push(staging);
      s.staging = undefined;
      this.afterPrefill(s, out, rows, T, chunk[0].length - 1);
    }
  }

  /**
   * Scores prompt tokens [from, to) of slot s from a pass's `logits` (row b, T positions starting at
   * `from`): each token's logprob given those before it (the first prompt token: null), and the
   * most likely alternatives at each position.
   */
  private scorePrompt(s: Slot, out: ForwardOutput, b: number, T: number, from: number, to: number): void {
    const k = s.req.prompt_logprobs;
    if (k === undefined || !out.logits) return;
    const V = this.runner.info.vocab_size;
    const p = s.req.prompt;
    s.promptLogprobs ??= [{ id: p[0], logprob: null, top_logprobs: [] }];
    // the logits at position t predict prompt token t + 1 (the last position predicts the first
    // generated token: no prompt token)
    for (let t = from; t < Math.min(to, p.length - 1); t++) {
      const row = out.logits.subarray((b * T + t - from) * V, (b * T + t - from + 1) * V);
      const lse = logSumExp(row);
      s.promptLogprobs.push({ id: p[t + 1], logprob: row[p[t + 1]] - lse, top_logprobs: topLogprobs(row, lse, k) });
    }
  }

  /** Hook-point outputs telemetry projects: every hook point the slots' interventions steer. */
  private telemetryReads(slots: Slot[]): string[] {
    const names = new Set<string>();
    for (const s of slots)
      if (s.twin) for (const iv of s.steering.interventions) names.add(readName(siteOf(iv), iv.layer));
    return [...names];
  }

  /** The `steer.{l}` inputs of a pass: rows' interventions at their tokens' positions (padding: none). */
  private steer(rows: Slot[], positions: number[][], T: number) {
    const padded = positions.map((p) => [...p, ...new Array(T - p.length).fill(-1)]);
    return buildSteer(
      rows.map((s) => s.steering),
      padded,
      this.runner.info.n_embd,
    );
  }

  /**
   * The prompt is in the cache: sample the first token and join the running batch. `rows` are the
   * pass's rows (a row's index is its place there), `T` its length, `last` the prompt's last token
   * in it.
   */
  private afterPrefill(s: Slot, out: ForwardOutput, rows: Slot[], T: number, last: number): void {
    if (s.cancelled) {
      this.finish(s, 'cancelled');
      return;
    }
    if (s.maxNew === 0) {
      // the prompt's pass was all it asked for (its scores, with prompt_logprobs)
      this.finish(s, 'length');
      return;
    }
    s.state = 'decoding';
    if (s.twin) s.twin.state = 'decoding';
    this.accept(s, out, rows.indexOf(s), rows.indexOf(s.twin!), T, last);
  }

  /**
   * Samples row b's next token from the pass's logits, emits it, and finishes the slot when it should
   * stop. With telemetry, `bt` is its twin's row and `pos` the place, within the pass's T, of the
   * token whose logits chose the next one.
   */
  private accept(s: Slot, out: ForwardOutput, b: number, bt: number, T: number, pos: number): void {
    const V = this.runner.info.vocab_size;
    const logits = out.lastLogits.subarray(b * V, (b + 1) * V);
    const lse = out.lastLse[b];
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
    let telemetry: TokenTelemetry | undefined;
    if (s.twin) {
      const base = out.lastLogits.subarray(bt * V, (bt + 1) * V);
      const baseLse = out.lastLse[bt];
      const at = (b * T + pos) * this.runner.info.n_embd;
      telemetry = {
        baseline_logprob: base[id] - baseLse,
        kl: klDivergence(logits, lse, base, baseLse),
        top1_flip: argmax(logits) !== argmax(base),
        projections: s.units!.map((u, i) => {
          const iv = s.steering.interventions[i];
          return u ? dot(out.read.get(readName(siteOf(iv), iv.layer))!, at, u) : null;
        }),
      };
      s.totals!.add(telemetry, logprob);
      s.twin.next = id; // the twin is fed the steered row's tokens
    }
    const top = s.req.top_logprobs ? topLogprobs(logits, lse, s.req.top_logprobs) : undefined;
    if (id === this.runner.info.eos_token_id && s.req.stop_at_eos !== false) {
      this.finish(s, 'eos', { id, logprob, ...(top && { top_logprobs: top }) });
      return;
    }
    s.generated.push(id);
    s.next = id;
    const text = s.text.push(id);
    this.sink.event(s.id, {
      type: 'token',
      id,
      text,
      logprob,
      ...(telemetry && { telemetry }),
      ...(top && { top_logprobs: top }),
    });
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
    for (const row of rowsOf(s)) {
      const r = c.rows.indexOf(row);
      if (r >= 0) c.store.zero(r);
    }
    this.release(s);
    this.slots.delete(s.id);
    this.sink.error(s.id, e);
  }

  /** Ends a slot and its twin, and gives back their rows and KV reservation. */
  private release(s: Slot): void {
    for (const r of rowsOf(s)) {
      if (r.reserved) this.rowsUsed--;
      this.kvUsed -= r.reserved;
      r.reserved = 0;
      r.state = 'done';
      r.source = undefined;
    }
    if (s.staging) this.retired.push(s.staging);
    s.staging = undefined;
  }

  private finish(s: Slot, reason: FinishReason, eos?: DoneEvent['eos']): void {
    if (s.state === 'done') return;
    this.release(s);
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
      ...(s.totals && { telemetry: s.totals.summary() }),
      ...(s.promptLogprobs && { prompt_logprobs: s.promptLogprobs }),
      ...(eos && { eos }),
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
      for (const r of rowsOf(s)) {
        c.store.push(r.source!);
        c.rows.push(r);
        r.source = undefined;
      }
    }
    const rows = this.byClass.flatMap((c) => c.rows);
    if (!rows.length) return;
    const groups: PastGroup[] = [];
    const positions: number[][] = [];
    for (const c of this.byClass) {
      if (c.rows.length) c.store.reserve(Math.max(...c.store.len) + 1);
      groups.push(c.rows.length ? await c.store.past() : { k: [], v: [], P: 0, rows: 0 });
      for (const n of c.store.len) positions.push([n]); // the new token's position = tokens already cached
    }
    const out = await this.runner.forward({
      ids: rows.map((s) => [s.next!]),
      pos: positions,
      newLen: rows.map(() => 1),
      pastLen: positions.map(([n]) => n),
      groups,
      steer: this.steer(rows, positions, 1),
      read: this.telemetryReads(rows),
    });
    let b = 0;
    for (const c of this.byClass) {
      for (const [r] of c.rows.entries())
        c.store.append(r, { k: out.fresh.k, v: out.fresh.v, S: 1, b: b++, from: 0, count: 1 });
      await c.store.flush();
    }
    // accept() may end a slot (its rows stay in their store until the next step)
    for (const [b, s] of rows.entries()) {
      if (s.of || s.state !== 'decoding') continue; // a twin is fed by its slot
      if (s.cancelled) this.finish(s, 'cancelled');
      else this.accept(s, out, b, s.twin ? rows.indexOf(s.twin) : -1, 1, 0);
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
      const site = req.site ?? 'resid_pre';
      const Tp = alignUp(T);
      const padded = [[...positions[0], ...new Array(Tp - T).fill(-1)]];
      const out = await this.runner.forward({
        ...padRows([req.prompt], positions, Tp),
        newLen: [T],
        pastLen: [0],
        groups: [],
        steer: buildSteer([steering], padded, H),
        read: layers.map((l) => readName(site, l)),
        lens: req.lens,
      });
      const reduce = req.reduce ?? 'none';
      const activations: Record<number, Float32Array> = {};
      for (const l of layers) {
        const all = out.read.get(readName(site, l))!.subarray(0, T * H); // [1, T, H] of [1, Tp, H]
        if (reduce === 'none') activations[l] = all.slice();
        else if (reduce === 'last') activations[l] = all.slice((T - 1) * H, T * H);
        else {
          const sum = new Float64Array(H);
          for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) sum[i] += all[t * H + i];
          activations[l] = Float32Array.from(sum, (v) => v / T);
        }
      }
      this.sink.activations(job.id, {
        tokens: req.prompt,
        activations,
        rows: reduce === 'none' ? T : 1,
        ...(out.lens && { lens: out.lens }),
      });
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
