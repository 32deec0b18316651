import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Engine } from '../engine/engine.js';
import type { ChatTemplate } from '../model/chat-template.js';
import type { VectorModel, VectorStore } from '../store/types.js';
import type { Metrics } from './metrics.js';

/** What the routes need of an engine: `Engine` in-process, `RemoteEngine` over Redis. */
export type EngineLike = Pick<
  Engine,
  'info' | 'tokenizer' | 'maxContext' | 'ready' | 'inFlight' | 'generate' | 'activations' | 'close'
>;

/** What the routes share: the engine, the vector store, the configuration and the counters. */
export interface Service {
  config: Config;
  /** The local engine, or the queue in front of `steerd worker` processes. */
  engine: EngineLike;
  store: VectorStore;
  /** The serving model's identity; vectors made for another are refused. */
  model: VectorModel & { name: string; random_weights: boolean };
  /**
   * The checkpoint's chat template (chat-template.ts), read once with the model, in every API
   * process (the workers take token ids); absent for a base model without one (GPT-2).
   */
  chatTemplate?: ChatTemplate;
  metrics: Metrics;
  /** Requests admitted and not finished (generation and activations). */
  inFlight: number;
  /** SIGTERM received: new work gets 503. */
  draining: boolean;
  /** Cancels the requests in flight (a drain past its timeout). */
  aborts: Set<() => void>;
  /** Redis mode: the connection for counters every API process shares (the rate limit). */
  redis?: Redis;
  /** Closed after the engine at shutdown (an in-process queue worker and its engine). */
  closers: (() => Promise<void>)[];
}
