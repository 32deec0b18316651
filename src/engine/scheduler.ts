import { SteerdError, UnprocessableError } from '../errors.js';
import { activations } from './activations.js';
import type { KvBudgetOptions } from './kv/budget.js';
import { KvManager, type KvUsage } from './kv/manager.js';
import { alignUp } from './kv/store.js';
import { topLogprobs } from './logprobs.js';
import { type ForwardOutput, type Pass, padRows } from './pass.js';
import { scorePrompt } from './prompt-scores.js';
import { steerRows, telemetryReads } from './rows.js';
import { doneEvent, newSlot, rowsOf, type Slot } from './slot.js';
import { tokenTelemetry } from './telemetry.js';
import type {
  ActivationsRequest,
  ActivationsResult,
  DoneEvent,
  FinishReason,
  GenerateEvent,
  GenerateRequest,
  KvCacheInfo,
  TokenTelemetry,
} from './types.js';

/** Scheduling options; every default suits a CPU and GPT-2 small. The KV budget's: kv/budget.ts. */
export interface SchedulerOptions extends KvBudgetOptions {
  /** Rows decoded together at most (running requests). Default 32. */
  batchCapacity?: number;
  /**
   * Prompt tokens prefilled per scheduler step at most (padding counted). A longer prompt is
   * prefilled in chunks of this size, one chunk per step, so running rows wait at most one chunk
   * between two of their tokens. The chunks start at fixed positions (multiples of this), so a
   * prompt's numbers never depend on the load. Default 256.
   */
  tokenBudget?: number;
}

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

/**
 * The slot state machine (docs/architecture.md §5 Slots and the scheduler): continuous batching.
 * Between any two decode steps, finished rows leave, waiting requests are admitted in order while
 * the KV manager (kv/manager.ts) can hold their size class, prefilled (chunked, within a token
 * budget), and join the running batch. One `step()` = at most one prefill pass + one decode pass.
 * A slot is waiting → prefill → decoding → done; a telemetry request's twin follows its slot.
 */
export class Scheduler {
  private readonly capacity: number;
  private readonly prefillBudget: number;
  private readonly kv: KvManager<Slot>;
  private readonly slots = new Map<number, Slot>();
  private readonly waiting: Slot[] = [];
  private readonly jobs: ActivationJob[] = [];

  constructor(
    private readonly pass: Pass,
    private readonly sink: SchedulerSink,
    opts: SchedulerOptions = {},
  ) {
    this.capacity = opts.batchCapacity ?? 32;
    this.prefillBudget = opts.tokenBudget ?? 256;
    this.kv = new KvManager(pass, {
      ...opts,
      rows: this.capacity,
      context: pass.info.n_positions,
      groups: pass.groups,
    });
  }

  /** KV cache reserved, budget, and bytes held. */
  get kvUsage(): KvUsage {
    return this.kv.usage(this.pass.hostBytes);
  }

  /** The KV cache as clients see it (ModelInfo.kv_cache). */
  get kvCache(): KvCacheInfo {
    return this.kv.info;
  }

  /** Requests not finished yet (waiting, prefilling or decoding) plus pending activation jobs. */
  get pending(): number {
    return this.slots.size + this.jobs.length;
  }

  submit(id: number, req: GenerateRequest): void {
    const slot = newSlot(id, req, this.pass.tokenizer, this.pass.info.vocab_size);
    slot.lease = this.kv.lease(rowsOf(slot), req.prompt.length + slot.maxNew);
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
    this.kv.reset();
    this.pass.endStep();
  }

  /** Gives back the KV cache (the engine is closing). */
  close(): void {
    this.kv.close();
  }

  /** One scheduling step; returns false when there was nothing to do. */
  async step(): Promise<boolean> {
    if (this.pending === 0) return false;
    try {
      await this.steps();
    } finally {
      // the passes' device outputs were copied where they are kept (kv/device-store.ts): give them back
      this.kv.endStep();
      this.pass.endStep();
    }
    return true;
  }

  private async steps(): Promise<void> {
    this.retireCancelled();
    const job = this.jobs.shift();
    if (job) await this.runActivations(job);
    // admit in order while the next request's size class fits: a large request that waits is not
    // overtaken by smaller ones, so it cannot starve
    while (this.waiting.length && this.kv.admit(this.waiting[0].lease!)) {
      for (const r of rowsOf(this.waiting.shift()!)) r.state = 'prefill';
    }
    await this.prefill();
    await this.decode();
  }

  private async runActivations(job: ActivationJob): Promise<void> {
    try {
      this.sink.activations(job.id, await activations(this.pass, (rows) => this.kv.empty(rows), job.req));
    } catch (e) {
      this.sink.error(
        job.id,
        e instanceof SteerdError ? e : new SteerdError(String((e as Error).message), 500, 'engine_error'),
      );
    }
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
    const out = await this.pass.forward({
      ...padRows(prompts, positions, T),
      newLen: prompts.map((p) => p.length),
      pastLen: prompts.map(() => 0),
      groups: [await this.kv.empty(rows.length)],
      steer: steerRows(rows, positions, T, this.pass.info.n_embd),
      read: telemetryReads(group),
      logitsAll: group.some((s) => s.req.prompt_logprobs !== undefined),
    });
    const V = this.pass.info.vocab_size;
    for (const s of group) scorePrompt(s, out.logits, V, rows.indexOf(s), T, 0, s.req.prompt.length);
    for (const r of rows) r.prefilled = r.req.prompt.length;
    for (const s of group) this.kv.prefilled(s.lease!, out.fresh, T, rows.indexOf(s), s.req.prompt.length);
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
    const from = s.prefilled;
    const to = Math.min(L, from + this.prefillBudget);
    const chunk = rows.map(() => s.req.prompt.slice(from, to));
    const positions = chunk.map((c) => c.map((_, i) => from + i));
    const T = alignUp(chunk[0].length);
    const out = await this.pass.forward({
      ...padRows(chunk, positions, T),
      newLen: chunk.map((c) => c.length),
      pastLen: chunk.map(() => from),
      groups: [await this.kv.stage(s.lease!, L)],
      steer: steerRows(rows, positions, T, this.pass.info.n_embd),
      read: to === L ? telemetryReads([s]) : [],
      logitsAll: s.req.prompt_logprobs !== undefined,
    });
    scorePrompt(s, out.logits, this.pass.info.vocab_size, 0, T, from, to);
    await this.kv.staged(s.lease!, out.fresh, T, chunk[0].length, to === L);
    s.prefilled = to;
    if (to === L) this.afterPrefill(s, out, rows, T, chunk[0].length - 1);
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
    const V = this.pass.info.vocab_size;
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
      const at = (b * T + pos) * this.pass.info.n_embd;
      const ivs = s.steering.interventions;
      telemetry = tokenTelemetry(id, logits, lse, base, out.lastLse[bt], ivs, s.units!, out.read, at);
      s.totals!.add(telemetry, logprob);
      s.twin.next = id; // the twin is fed the steered row's tokens
    }
    const top = s.req.top_logprobs ? topLogprobs(logits, lse, s.req.top_logprobs) : undefined;
    if (this.pass.info.eos_token_ids.includes(id) && s.req.stop_at_eos !== false) {
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
    if (s.text.stopped) this.finish(s, 'stop');
    else if (s.generated.length >= s.maxNew) this.finish(s, 'length');
  }

  /** Ends a row with an error instead of a done event; its cache is zeroed (it may hold NaNs). */
  private abort(s: Slot, e: SteerdError): void {
    this.kv.abort(s.lease!);
    for (const r of rowsOf(s)) r.state = 'done';
    this.slots.delete(s.id);
    this.sink.error(s.id, e);
  }

  private finish(s: Slot, reason: FinishReason, eos?: DoneEvent['eos']): void {
    if (s.state === 'done') return;
    this.kv.release(s.lease!);
    for (const r of rowsOf(s)) r.state = 'done';
    const text = reason === 'cancelled' || reason === 'stop' ? '' : s.text.finish();
    if (text) this.sink.event(s.id, { type: 'token', id: -1, text, logprob: 0 });
    this.slots.delete(s.id);
    this.sink.event(s.id, doneEvent(s, reason, eos));
  }

  /**
   * Rows that finished leave the cache, new ones join (kv/manager.ts join()), then one decode step
   * for all: the batch is the size classes' rows in class order, each class one cache group.
   */
  private async decode(): Promise<void> {
    const batch = await this.kv.join();
    if (!batch) return;
    const { rows, groups, pastLen } = batch;
    const positions = pastLen.map((n) => [n]); // the new token's position = tokens already cached
    const out = await this.pass.forward({
      ids: rows.map((s) => [s.next!]),
      pos: positions,
      newLen: rows.map(() => 1),
      pastLen,
      groups,
      steer: steerRows(rows, positions, 1, this.pass.info.n_embd),
      read: telemetryReads(rows),
    });
    await this.kv.append(out.fresh);
    // accept() may end a slot (its rows stay in the cache until the next step)
    for (const [b, s] of rows.entries()) {
      if (s.of || s.state !== 'decoding') continue; // a twin is fed by its slot
      if (s.cancelled) this.finish(s, 'cancelled');
      else this.accept(s, out, b, s.twin ? rows.indexOf(s.twin) : -1, 1, 0);
    }
  }
}
