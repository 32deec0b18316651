import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../errors.js';

/** A checkpoint's `config.json`, parsed but not yet read by a family (families.ts picks one). */
export interface RawConfig {
  /** The file's path, for errors. */
  file: string;
  raw: Record<string, unknown>;
}

/** Reads `<dir>/config.json` as a JSON object. */
export function readConfigJson(dir: string): RawConfig {
  const file = join(dir, 'config.json');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CheckpointError(file, `cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(file, `not valid JSON (${(e as Error).message})`);
  }
  return { file, raw: configObject(raw, file) };
}

/** `raw` as a config object, or a CheckpointError naming `file`. */
function configObject(raw: unknown, file: string): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(file, 'expected a JSON object');
  }
  return raw as Record<string, unknown>;
}

/** A config field that must be a positive integer (`fallback` when the field is absent). */
export function positiveInt(file: string, raw: Record<string, unknown>, key: string, fallback?: unknown): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new CheckpointError(file, `"${key}" must be a positive integer (got ${JSON.stringify(v)})`, key);
  }
  return v;
}

/**
 * Every token id that ends a generation: `eos` (the family's, first), the rest of config.json's
 * `eos_token_id` where it is a list, and generation_config.json's `eos_token_id` (one or a list)
 * where the file is there: transformers' `generate` stops at any of them. Ids that are not
 * integers are ignored here (the family refused a bad first one).
 */
export function eosTokenIds(dir: string, raw: Record<string, unknown>, eos: number): number[] {
  const ids = (v: unknown) => (Array.isArray(v) ? v : [v]).filter((x): x is number => Number.isInteger(x) && x >= 0);
  const out = new Set([eos, ...ids(raw.eos_token_id)]);
  const gen = join(dir, 'generation_config.json');
  if (existsSync(gen)) {
    let g: unknown;
    try {
      g = JSON.parse(readFileSync(gen, 'utf8'));
    } catch (e) {
      throw new CheckpointError(gen, `not valid JSON (${(e as Error).message})`);
    }
    for (const id of ids((g as { eos_token_id?: unknown } | null)?.eos_token_id)) out.add(id);
  }
  return [...out];
}
