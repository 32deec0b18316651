import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.js';
import { readConfigJson } from './config.js';
import { familyOf } from './families.js';
import type { Checkpoint, ModelFamily } from './family.js';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';

export const WEIGHTS_FILE = 'model.safetensors';

/**
 * Opens and validates a Hugging Face checkpoint directory of any family steerd serves (config.json's
 * `model_type` picks it, families.ts); with `family`, refuses any other.
 */
export function openCheckpoint(dir: string): Checkpoint;
export function openCheckpoint<C>(dir: string, family: ModelFamily<C>): Checkpoint<C>;
export function openCheckpoint(dir: string, want?: ModelFamily): Checkpoint {
  const { file, raw } = readConfigJson(dir);
  const family = familyOf(raw, file);
  if (want && family !== want) {
    throw new CheckpointError(file, `is a ${family.name} checkpoint, expected ${want.name}`, 'model_type');
  }
  const config = family.parseConfig(raw, file);
  const weightsFile = join(dir, WEIGHTS_FILE);
  if (!existsSync(weightsFile)) {
    const alt = ['pytorch_model.bin', 'model.safetensors.index.json'].find((f) => existsSync(join(dir, f)));
    throw new CheckpointError(
      weightsFile,
      alt ? `missing (found ${alt}; steerd reads a single model.safetensors file)` : 'missing',
    );
  }
  const header = readSafetensorsHeader(weightsFile);
  const expected = family.parameters(config);
  const head = family.head(config);
  const params = new Map<string, TensorEntry>();
  for (const [key, entry] of header.tensors) {
    const name = family.canonicalKey(key);
    if (name === undefined) continue;
    if (!expected.has(name) && name !== head.name) {
      throw new CheckpointError(weightsFile, `unexpected tensor "${key}" (not a ${family.name} parameter)`);
    }
    if (params.has(name)) throw new CheckpointError(weightsFile, `tensor "${name}" is stored twice`);
    if (entry.dtype !== 'F32') {
      throw new CheckpointError(
        weightsFile,
        `tensor "${key}" is ${entry.dtype}; steerd maps weights in place and needs float32 (F32) tensors — convert the checkpoint to float32`,
      );
    }
    params.set(name, entry);
  }
  for (const [name, shape] of expected) {
    const entry = params.get(name);
    if (!entry) throw new CheckpointError(weightsFile, `missing tensor "${name}"`);
    if (entry.shape.join() !== shape.join()) {
      throw new CheckpointError(
        weightsFile,
        `tensor "${name}" has shape [${entry.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
      );
    }
  }
  const lm = params.get(head.name);
  if (lm && lm.shape.join() !== head.shape.join()) {
    throw new CheckpointError(
      weightsFile,
      `tensor "${head.name}" has shape [${lm.shape.join(', ')}], expected [${head.shape.join(', ')}]`,
    );
  }
  const fingerprint = createHash('sha256')
    .update(readFileSync(file))
    .update(header.headerBytes)
    .update(String(header.size))
    .digest('hex');
  let paramBytes = 0;
  for (const e of params.values()) paramBytes += e.length;
  const shape = family.shape(config);
  return { dir, family, config, shape, weightsFile, params, tiedLmHead: !lm, fingerprint, paramBytes };
}
