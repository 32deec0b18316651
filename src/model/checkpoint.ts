import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.js';
import { eosTokenIds, readConfigJson } from './config.js';
import { familyOf } from './families.js';
import type { Checkpoint, ModelFamily, ModelShape } from './family.js';
import { CONVERTIBLE, FLOAT32_WEIGHTS_FILE, float32Layout } from './float32-weights.js';
import type { TensorEntry } from './safetensors.js';
import { readWeightFiles, type StoredTensor } from './weight-files.js';

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
  const stored = readWeightFiles(dir);
  const expected = family.parameters(config);
  const head = family.head(config);
  const found = new Map<string, StoredTensor>();
  for (const [key, entry] of stored.tensors) {
    const name = family.canonicalKey(key);
    if (name === undefined) continue;
    if (!expected.has(name) && name !== head.name) {
      throw new CheckpointError(entry.file, `unexpected tensor "${key}" (not a ${family.name} parameter)`);
    }
    if (found.has(name)) throw new CheckpointError(entry.file, `tensor "${name}" is stored twice`);
    if (!(CONVERTIBLE as readonly string[]).includes(entry.dtype)) {
      throw new CheckpointError(
        entry.file,
        `tensor "${key}" is ${entry.dtype}; steerd reads float32, bfloat16 and float16 weights (F32, BF16, F16)`,
      );
    }
    found.set(name, entry);
  }
  for (const [name, shape] of expected) {
    const entry = found.get(name);
    if (!entry) throw new CheckpointError(stored.file, `missing tensor "${name}"`);
    if (entry.shape.join() !== shape.join()) {
      throw new CheckpointError(
        entry.file,
        `tensor "${name}" has shape [${entry.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
      );
    }
  }
  const lm = found.get(head.name);
  if (lm && lm.shape.join() !== head.shape.join()) {
    throw new CheckpointError(
      lm.file,
      `tensor "${head.name}" has shape [${lm.shape.join(', ')}], expected [${head.shape.join(', ')}]`,
    );
  }
  const own = family.shape(config);
  const shape: ModelShape = { ...own, eosIds: eosTokenIds(dir, raw, own.eos) };
  // config.json and every weights file's header and size (one file: the same hash as before shards were read)
  const hash = createHash('sha256').update(readFileSync(file));
  for (const h of stored.headers) hash.update(h.headerBytes).update(String(h.size));
  // where generation stops, when more than config.json's first EOS (generation_config.json may add
  // an end of turn): a receipt made with other stops is another model's
  if (shape.eosIds.length > 1) hash.update(`eos:${shape.eosIds.join(',')}`);
  const fingerprint = hash.digest('hex');
  // one float32 file is mapped as it is; anything else through a float32 copy (float32-weights.ts)
  const direct = stored.headers.length === 1 && [...found.values()].every((e) => e.dtype === 'F32');
  const weightsFile = direct ? stored.headers[0].file : join(dir, FLOAT32_WEIGHTS_FILE);
  const params: Map<string, TensorEntry> = direct ? found : float32Layout(found, fingerprint).entries;
  let paramBytes = 0;
  for (const e of params.values()) paramBytes += e.length;
  return {
    dir,
    family,
    modelType: String(raw.model_type),
    config,
    shape,
    weightsFile,
    params,
    ...(!direct && { sources: found }),
    tiedLmHead: !lm,
    fingerprint,
    paramBytes,
  };
}
