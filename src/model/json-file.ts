import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.js';

/** A JSON object file of a checkpoint, or undefined where the file is absent; anything else is refused naming it. */
export function readJsonObject(file: string): Record<string, unknown> | undefined {
  if (!existsSync(file)) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(file, `cannot read as JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new CheckpointError(file, 'expected a JSON object');
  return v as Record<string, unknown>;
}

/**
 * The tokenizer's settings as transformers reads them: `tokenizer_config.json`, over
 * `special_tokens_map.json` (which older checkpoints name their `bos_token` and `eos_token` in);
 * `file` is the one a setting came from, for errors.
 */
export function tokenizerSettings(dir: string): { settings: Record<string, unknown>; file: (key: string) => string } {
  const configFile = join(dir, 'tokenizer_config.json');
  const mapFile = join(dir, 'special_tokens_map.json');
  const config = readJsonObject(configFile) ?? {};
  const map = readJsonObject(mapFile) ?? {};
  return {
    settings: { ...map, ...config },
    file: (key) => (key in config || !(key in map) ? configFile : mapFile),
  };
}
