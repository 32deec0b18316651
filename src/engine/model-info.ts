import { createHash } from 'node:crypto';
import type { Checkpoint } from '../model/checkpoint.js';
import type { Dtype } from '../model/half-weights.js';
import { SITES, type Site } from '../model/hooks.js';
import { buildServeGraphBytes } from '../model/serve-graph.js';
import { sizeClasses } from './kv/budget.js';
import type { ModelInfo } from './types.js';

/**
 * The serving graph's layout on a provider: one cache group per size class the context allows
 * (kv/budget.ts), except on WebGPU, where the cache stays on the device (kv/device-store.ts): there the
 * device variant, one group (a store's update rewrites it whole anyway, and the provider crashed on
 * the zero-size tensors that empty groups are: onnxruntime-node 1.30 on Mesa's lavapipe).
 */
export function serveShape(provider: string, nCtx: number): { groups: number; device: boolean } {
  return provider === 'webgpu' ? { groups: 1, device: true } : { groups: sizeClasses(nCtx).length, device: false };
}

/** What clients and validation need to know of a checkpoint. */
export function modelInfo(
  ck: Checkpoint,
  provider: string,
  sites: readonly Site[] = SITES,
  dtype: Dtype = 'float32',
): ModelInfo {
  const c = ck.config;
  return {
    n_layer: c.n_layer,
    n_embd: c.n_embd,
    n_head: c.n_head,
    n_positions: c.n_positions,
    vocab_size: c.vocab_size,
    eos_token_id: c.eos_token_id,
    fingerprint: ck.fingerprint,
    // the serving graph is a function of the checkpoint's layout and of this builder: its hash
    // names the computation a receipt ran (building it is cheap: no weight is read)
    graph_hash: createHash('sha256')
      .update(buildServeGraphBytes(ck, { ...serveShape(provider, c.n_positions), sites, half: dtype === 'float16' }))
      .digest('hex'),
    hook_sites: [...sites],
    provider,
    dtype,
  };
}
