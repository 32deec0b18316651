import { createHash } from 'node:crypto';
import type { Dtype } from '../model/dtypes.js';
import type { Checkpoint } from '../model/family.js';
import { SITES, type Site } from '../model/hooks.js';
import { buildServeGraphBytes } from '../model/serve-graph.js';
import { sizeClasses } from './kv/budget.js';
import type { RuntimeName } from './runtime/bindings.js';
import type { ModelInfo } from './types.js';

/**
 * The serving graph's layout on a provider and binding: one cache group per size class the context
 * allows (kv/budget.ts), except where the cache stays on the device (kv/device-store.ts): WebGPU, and
 * every provider of the capi binding (its device tensors are OrtValues it keeps: CUDA memory on
 * CUDA; its variant keeps the host's arithmetic, serve-graph.ts `exact`). There the device variant, one group (a store's update rewrites it whole anyway, and the
 * WebGPU provider crashed on the zero-size tensors that empty groups are: onnxruntime-node 1.30 on
 * Mesa's lavapipe).
 */
export function serveShape(
  provider: string,
  nCtx: number,
  binding: RuntimeName = 'node',
): { groups: number; device: boolean; exact?: boolean } {
  if (binding === 'capi') return { groups: 1, device: true, exact: true };
  return provider === 'webgpu' ? { groups: 1, device: true } : { groups: sizeClasses(nCtx).length, device: false };
}

/** What clients and validation need to know of a checkpoint. */
export function modelInfo(
  ck: Checkpoint,
  provider: string,
  sites: readonly Site[] = SITES,
  dtype: Dtype = 'float32',
  /** The binding that runs the graphs (`queue`: none here, the workers'). */
  binding: RuntimeName | 'queue' = 'node',
): ModelInfo {
  const s = ck.shape;
  return {
    architecture: ck.family.id,
    model_type: ck.modelType,
    norm: ck.family.norm,
    n_layer: s.layers,
    n_embd: s.embd,
    n_head: s.heads,
    n_kv_head: s.kvHeads,
    n_positions: s.ctx,
    vocab_size: s.vocab,
    eos_token_id: s.eos,
    eos_token_ids: s.eosIds,
    fingerprint: ck.fingerprint,
    // the serving graph is a function of the checkpoint's layout and of this builder: its hash
    // names the computation a receipt ran (building it is cheap: no weight is read)
    graph_hash: createHash('sha256')
      .update(
        buildServeGraphBytes(ck, {
          ...serveShape(provider, s.ctx, binding === 'queue' ? 'node' : binding),
          sites,
          dtype,
        }),
      )
      .digest('hex'),
    hook_sites: [...sites],
    provider,
    binding,
    dtype,
  };
}
