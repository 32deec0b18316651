import type { Config } from '../config.js';
import type { Engine } from '../engine/engine.js';
import type { VectorModel, VectorStore } from '../store/vectors.js';
import type { Metrics } from './metrics.js';

/** What the routes share: the engine, the vector store, the configuration and the counters. */
export interface Service {
  config: Config;
  engine: Engine;
  store: VectorStore;
  /** The serving model's identity; vectors made for another are refused. */
  model: VectorModel & { name: string; random_weights: boolean };
  metrics: Metrics;
  /** Requests admitted and not finished (generation and activations). */
  inFlight: number;
  /** SIGTERM received: new work gets 503. */
  draining: boolean;
  /** Cancels the requests in flight (a drain past its timeout). */
  aborts: Set<() => void>;
}
