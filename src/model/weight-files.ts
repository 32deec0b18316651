import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { CheckpointError } from '../errors.js';
import { readSafetensorsHeader, type SafetensorsHeader, type TensorEntry } from './safetensors.js';

/** A checkpoint's weights in one file, as GPT-2 and small models are published. */
export const WEIGHTS_FILE = 'model.safetensors';
/** A sharded checkpoint's index: `weight_map` names the shard file of every tensor. */
export const INDEX_FILE = 'model.safetensors.index.json';

/** A stored tensor and the file it is in. */
export interface StoredTensor extends TensorEntry {
  /** The file's path. */
  file: string;
}

/** The safetensors files of a checkpoint directory: `model.safetensors`, or the shards an index names. */
export interface WeightFiles {
  /** The file that says where the weights are: `model.safetensors` or the index. */
  file: string;
  /** Each weights file's header, in the index's order. */
  headers: SafetensorsHeader[];
  /** Every tensor by its stored key. */
  tensors: Map<string, StoredTensor>;
}

/** The shard file names an index names, in order of first mention; refuses a malformed index. */
export function shardNames(dir: string): string[] | undefined {
  const index = join(dir, INDEX_FILE);
  if (!existsSync(index)) return undefined;
  return [...new Set(Object.values(readIndex(index)))];
}

function readIndex(index: string): Record<string, string> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(index, 'utf8'));
  } catch (e) {
    throw new CheckpointError(index, `cannot read as JSON (${(e as Error).message})`);
  }
  const map = (raw as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new CheckpointError(index, 'has no weight_map object', 'weight_map');
  }
  for (const [key, shard] of Object.entries(map)) {
    // a shard is a file beside the index: never a path (ONNX Runtime would refuse it as external data anyway)
    if (typeof shard !== 'string' || !shard.endsWith('.safetensors') || basename(shard) !== shard) {
      throw new CheckpointError(
        index,
        `weight_map["${key}"] is ${JSON.stringify(shard)}, not a .safetensors file beside the index`,
        'weight_map',
      );
    }
  }
  return map as Record<string, string>;
}

/**
 * The weights of a checkpoint directory: `model.safetensors` when it is there, else the shards
 * `model.safetensors.index.json` names (each tensor must be in the shard the index names).
 * Only headers are read.
 */
export function readWeightFiles(dir: string): WeightFiles {
  const single = join(dir, WEIGHTS_FILE);
  const index = join(dir, INDEX_FILE);
  if (existsSync(single)) {
    const h = readSafetensorsHeader(single);
    return {
      file: single,
      headers: [h],
      tensors: new Map([...h.tensors].map(([k, e]) => [k, { ...e, file: single }])),
    };
  }
  if (!existsSync(index)) {
    const bin = ['pytorch_model.bin', 'pytorch_model.bin.index.json'].find((f) => existsSync(join(dir, f)));
    throw new CheckpointError(
      single,
      bin
        ? `missing (found ${bin}: steerd reads safetensors weights, model.safetensors or ${INDEX_FILE} with its shards)`
        : `missing (and no ${INDEX_FILE})`,
    );
  }
  const map = readIndex(index);
  const headers = new Map<string, SafetensorsHeader>();
  const tensors = new Map<string, StoredTensor>();
  for (const [key, shard] of Object.entries(map)) {
    const file = join(dir, shard);
    if (!headers.has(shard)) {
      if (!existsSync(file)) throw new CheckpointError(file, `missing (${INDEX_FILE} names it for "${key}")`);
      headers.set(shard, readSafetensorsHeader(file));
    }
    const entry = headers.get(shard)!.tensors.get(key);
    if (!entry) throw new CheckpointError(file, `has no tensor "${key}" (${INDEX_FILE} says it has)`);
    tensors.set(key, { ...entry, file });
  }
  return { file: index, headers: [...headers.values()], tensors };
}
