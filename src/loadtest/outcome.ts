import type { Answer } from './client.js';
import type { Endpoint, Planned } from './workload.js';

/** How one request went. */
export interface Outcome {
  plan: Planned;
  /** HTTP status of a response received whole; none for one cut off (network error, timeout). */
  status?: number;
  /** The error, by kind: the HTTP status, `network`, `timeout`, `stream_error`, `invalid_response` or `mismatch`. */
  error?: { kind: string; message: string };
  e2eMs: number;
  /** An answer that came whole (mismatched or not). */
  answer?: Answer;
}

/** A kind of request: `/v1/generate stream`, …, `/v1/completions non-stream`. */
export const kind = (endpoint: Endpoint, stream: boolean) => `${endpoint} ${stream ? 'stream' : 'non-stream'}`;
