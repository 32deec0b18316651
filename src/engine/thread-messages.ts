import type { KvUsage } from './kv/manager.js';
import type { ActivationsRequest, ActivationsResult, GenerateEvent, GenerateRequest, ModelInfo } from './types.js';

/** Messages from the main thread to the engine thread (thread.ts). */
export type ToThread =
  | { type: 'generate'; id: number; req: GenerateRequest }
  | { type: 'activations'; id: number; req: ActivationsRequest }
  | { type: 'cancel'; id: number }
  | { type: 'close' };

/** A SteerdError crossing the thread boundary. */
export interface WireError {
  message: string;
  status: number;
  code: string;
}

/** Messages from the engine thread to the main thread. */
export type FromThread =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'start-error'; error: WireError }
  | { type: 'event'; id: number; event: GenerateEvent }
  | { type: 'activations'; id: number; result: ActivationsResult }
  | { type: 'error'; id: number; error: WireError }
  | { type: 'kv'; usage: KvUsage }
  | { type: 'closed' };
