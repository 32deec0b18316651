/**
 * Typed errors. Every error that can reach a client carries its HTTP status and a stable code, so
 * the API layer maps them without guessing; the engine and model layers throw them without knowing
 * about HTTP frameworks.
 */
export class SteerdError extends Error {
  constructor(
    message: string,
    /** HTTP status this error maps to. */
    readonly status: number,
    /** Stable machine-readable code, e.g. `bad_checkpoint`. */
    readonly code: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A checkpoint directory that cannot be used: names the file and the problem. */
export class CheckpointError extends SteerdError {
  constructor(
    readonly file: string,
    problem: string,
    /** The config.json field at fault, when one is (e.g. `model_type`). */
    readonly field?: string,
  ) {
    super(`${file}: ${problem}`, 422, 'bad_checkpoint', field === undefined ? { file } : { file, field });
  }
}

/** Input that is well-formed but cannot be served (layer out of range, too long, ...). */
export class UnprocessableError extends SteerdError {
  constructor(message: string, details?: Record<string, unknown>) {
    super(message, 422, 'unprocessable', details);
  }
}

/** A download that failed or did not verify. */
export class DownloadError extends SteerdError {
  constructor(message: string, details?: Record<string, unknown>) {
    super(message, 502, 'download_failed', details);
  }
}

/** A request whose parameters are out of their documented range, whatever the model. */
export class BadRequestError extends SteerdError {
  constructor(message: string, details?: Record<string, unknown>) {
    super(message, 400, 'invalid_request', details);
  }
}

/** Something a request names existed once and is no longer kept (a receipt's vector). */
export class GoneError extends SteerdError {
  constructor(message: string, details?: Record<string, unknown>) {
    super(message, 410, 'gone', details);
  }
}

/** The engine is closed or closing: it takes no new work. */
export class UnavailableError extends SteerdError {
  constructor(message: string) {
    super(message, 503, 'unavailable');
  }
}

/** Too much work waiting (this process's limit, or the shared queue's in Redis mode): retry later. */
export class QueueFullError extends SteerdError {
  /** Seconds a client should wait before retrying (the `Retry-After` header). */
  readonly retryAfter = 1;
  constructor(message: string, depth: number) {
    super(message, 429, 'queue_full', { queue_depth: depth });
  }
}

/**
 * An error status of ONNX Runtime's C API (engine/runtime/capi-ffi.ts): the function that returned
 * it, ORT's error code (OrtErrorCode; -1: steerd's own check of the library) and its message. The
 * engine's, not the request's: 500.
 */
export class OrtError extends SteerdError {
  constructor(
    /** The C API function that failed. */
    readonly call: string,
    /** OrtErrorCode (2: invalid argument, ...), or -1. */
    readonly ortCode: number,
    message: string,
  ) {
    super(`ONNX Runtime ${call}: ${message}`, 500, 'ort_error', { call, ort_code: ortCode });
  }
}
