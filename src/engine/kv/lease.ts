import type { KvSource, KvStore } from './store.js';

/**
 * A request's hold on the KV cache (docs/architecture.md §6 The KV cache): its size class, its rows
 * (a request and, with telemetry, its twin: one row each), and where its prompt's cache is until it
 * joins its class's store. Only the manager (manager.ts) changes it; the scheduler holds it.
 */
export class KvLease<R> {
  /** Reserved: counted against the budget and the batch capacity (manager.admit). */
  admitted = false;
  /** Given back (manager.release): its rows leave their store at the next join. */
  released = false;
  /** A long prompt's cache while it is prefilled chunk by chunk (row i: `rows[i]`). */
  staging?: KvStore;
  /** The prompt's cache, one source per row, ready to join the class's store. */
  sources?: KvSource[];

  constructor(
    /** Size class: an index into the manager's classes. */
    readonly cls: number,
    /** Tokens each row reserves (its class's size). */
    readonly tokens: number,
    /** The rows, in pass order. */
    readonly rows: readonly R[],
  ) {}
}
