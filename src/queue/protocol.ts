import type { ActivationsRequest, ActivationsResult, GenerateEvent, GenerateRequest, Intervention } from '../engine/types.js';

/**
 * What crosses Redis between API processes and `steerd worker` processes (BullMQ jobs). Requests
 * are validated before they are enqueued; vectors travel as little-endian float32 in base64.
 */
export const QUEUE = 'steerd';
/** Pub/sub channel on which API processes ask workers to cancel an active job. */
export const cancelChannel = (prefix: string) => `${prefix}cancel`;
/** BullMQ's own key prefix, inside ours. */
export const bullPrefix = (prefix: string) => `${prefix}q`;

export interface WireIntervention extends Omit<Intervention, 'values'> {
  values_b64: string;
}

export type JobData =
  | { kind: 'generate'; req: Omit<GenerateRequest, 'interventions'> & { interventions: WireIntervention[] } }
  | { kind: 'activations'; req: Omit<ActivationsRequest, 'interventions'> & { interventions: WireIntervention[] } };

/** One token event, numbered so that a retried job's repeated tokens can be recognised. */
export interface Progress {
  i: number;
  e: GenerateEvent;
}

export interface WireActivations extends Omit<ActivationsResult, 'activations'> {
  activations_b64: Record<number, string>;
}

/** A refused request: not retried, carried back with its HTTP status. */
export interface WireFailure {
  status: number;
  code: string;
  message: string;
}

const b64 = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
const f32 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

export const toWire = (list: Intervention[] = []): WireIntervention[] => list.map(({ values, ...rest }) => ({ ...rest, values_b64: b64(values) }));
export const fromWire = (list: WireIntervention[]): Intervention[] => list.map(({ values_b64, ...rest }) => ({ ...rest, values: f32(values_b64) }));

export const activationsToWire = (r: ActivationsResult): WireActivations => ({
  tokens: r.tokens,
  rows: r.rows,
  activations_b64: Object.fromEntries(Object.entries(r.activations).map(([l, a]) => [l, b64(a)])),
});
export const activationsFromWire = (w: WireActivations): ActivationsResult => ({
  tokens: w.tokens,
  rows: w.rows,
  activations: Object.fromEntries(Object.entries(w.activations_b64).map(([l, s]) => [l, f32(s)])),
});
