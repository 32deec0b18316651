import { readFileSync } from 'node:fs';
import { freemem } from 'node:os';
import type { KvShape } from './store.js';

/**
 * The KV cache budget: how many tokens of keys and values the engine holds at once, all rows
 * together (docs/architecture.md §6 The KV cache), and the size classes rows are held in.
 *
 * A request reserves its size class when it is admitted: prompt + max_new_tokens rounded up to a
 * power of two (at least 64; the largest class is the context, or the budget when that is
 * smaller). Rows of one class share a store whose slot count follows its longest row, so a short
 * request never attends over a long one's slots, and the memory the stores can commit never
 * exceeds the tokens reserved (a row's slots never exceed its class). Requests that do not fit
 * wait, in order; one larger than the budget is refused.
 */

/** Smallest size class. */
const MIN_CLASS = 64;

/** Size classes, ascending: powers of two from 64, the last one `top` (the context or the budget). */
export function sizeClasses(top: number): number[] {
  const classes: number[] = [];
  for (let c = MIN_CLASS; c < top; c *= 2) classes.push(c);
  classes.push(top);
  return classes;
}

/** Index of the smallest class holding `tokens`, or -1 when none does. */
export function classOf(classes: readonly number[], tokens: number): number {
  return classes.findIndex((c) => c >= tokens);
}

/**
 * Tokens a request of `tokens` (prompt + max_new_tokens) reserves once admitted: its class's size,
 * or the tokens themselves beyond the largest class (such a request is refused before it waits).
 */
export function reservedTokens(classes: readonly number[], tokens: number): number {
  return classes[classOf(classes, tokens)] ?? tokens;
}

/** Bytes of keys and values per token, all layers. */
export const bytesPerToken = (s: KvShape) => 2 * s.nLayer * s.nHead * s.headDim * 4;

export interface KvBudgetOptions {
  /** Tokens of KV cache, all rows together. Default: from `kvCacheMemory`. */
  kvCacheTokens?: number;
  /**
   * Memory for the KV cache when `kvCacheTokens` is not given: a fraction (0 < f ≤ 1) of the memory
   * available when the engine starts (after the weights are loaded), or bytes (> 1). Default 0.5.
   */
  kvCacheMemory?: number;
}

/** Memory the system can still give (Linux: MemAvailable; elsewhere: free memory). */
export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return freemem();
}

/**
 * The budget in tokens: as given, or the memory share divided by the bytes per token, at most
 * `ceiling`. `available` says what a fraction is of (asked only then): the host's memory, or the
 * device's where the cache lives on a CUDA device (runner.ts).
 */
export function kvBudget(
  opts: KvBudgetOptions,
  shape: KvShape,
  ceiling: number,
  available: () => number = availableMemory,
): number {
  if (opts.kvCacheTokens !== undefined) return opts.kvCacheTokens;
  const share = opts.kvCacheMemory ?? 0.5;
  const bytes = share <= 1 ? share * available() : share;
  return Math.max(1, Math.min(ceiling, Math.floor(bytes / bytesPerToken(shape))));
}
