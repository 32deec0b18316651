import { parseRuntime, type RuntimeName } from './engine/runtime/names.js';
import { SteerdError } from './errors.js';
import { DTYPES, type Dtype } from './model/dtypes.js';
import { hubCacheDir, hubOffline } from './model/hf-cache.js';
import { isSite, SITES, type Site } from './model/hooks.js';

/**
 * Service configuration: every option, its environment variable and its default, in one place.
 * `loadConfig(env)` reads the environment; the CLI overrides with flags.
 */
export interface Limits {
  /** Largest `max_new_tokens` accepted. Env STEERD_MAX_NEW_TOKENS. Default 512. */
  maxNewTokens: number;
  /** Interventions per request at most. Env STEERD_MAX_INTERVENTIONS. Default 16. */
  maxInterventions: number;
  /** Vectors stored at most, and presets stored at most (counted apart). Env STEERD_MAX_VECTORS. Default 1000. */
  maxVectors: number;
  /** Request body size in bytes at most (413 beyond). Env STEERD_BODY_LIMIT. Default 16 MiB. */
  bodyLimit: number;
  /**
   * Generations in flight at most (each activation request, generation, control arm and sweep cell
   * counts one); beyond, 429 with Retry-After; a request needing more than this at once, 422.
   * Env STEERD_QUEUE_DEPTH. Default 256.
   */
  queueDepth: number;
  /**
   * Bytes of vector values kept by content hash for receipts (inline vectors' and presets' values;
   * in the data directory also deleted or replaced vectors') at most: beyond, the least recently
   * used go first, and a receipt naming them gets 410. Env STEERD_INLINE_VALUES_MAX_BYTES. Default 268435456 (256 MiB:
   * some 40,000 of gpt2-xl's vectors).
   */
  inlineValuesMaxBytes: number;
  /** Cells of a sweep (layers × coeffs × seeds) at most. Env STEERD_MAX_SWEEP_CELLS. Default 64. */
  maxSweepCells: number;
  /** Completions per prompt (`n` of /v1/completions) at most. Env STEERD_MAX_N. Default 8. */
  maxN: number;
  /** A request's time limit in ms; a generation past it is cancelled (504). Env STEERD_REQUEST_TIMEOUT_MS. Default 300000. */
  requestTimeoutMs: number;
  /**
   * A request's headers must arrive within this many ms of its first byte (a connection that sends
   * nothing counts too); beyond, 408 and the connection is closed. At most the body timeout.
   * Env STEERD_HEADERS_TIMEOUT_MS. Default 10000: headers are a few hundred bytes.
   */
  headersTimeoutMs: number;
  /**
   * The whole request, headers and body, must arrive within this many ms; beyond, 408 and the
   * connection is closed. Only receiving is bounded: the response (a long generation, a stream) is
   * not. Env STEERD_BODY_TIMEOUT_MS. Default 60000: a body at the 16 MiB limit at about 2 Mbit/s.
   */
  bodyTimeoutMs: number;
  /**
   * A kept-alive connection idle this many ms after a response is closed.
   * Env STEERD_KEEP_ALIVE_TIMEOUT_MS. Default 72000: longer than the 60 s idle timeout of common
   * reverse proxies, so that a proxy never reuses a connection the server is closing.
   */
  keepAliveTimeoutMs: number;
}

export interface Config {
  /** Listen address. Env HOST. Default 127.0.0.1. */
  host: string;
  /** Listen port. Env PORT. Default 8080. */
  port: number;
  /** Checkpoint directory, hub name (gpt2 … gpt2-xl, owner/name) or `tiny`. Env STEERD_MODEL. Default gpt2-xl. */
  model: string;
  /** Where vectors are stored without Redis. Env STEERD_DATA. Default ./data. */
  dataDir: string;
  /** Redis for the shared vector registry; none = the data directory. Env REDIS_URL. Default none. */
  redisUrl?: string;
  /** Prefix of every Redis key steerd writes. Env STEERD_REDIS_PREFIX. Default steerd:. */
  redisPrefix: string;
  /** With REDIS_URL: also run an engine consuming the queue in this process (`serve --worker`). Default false. */
  worker: boolean;
  /** A worker silent this long (ms) loses its jobs to another worker. Env STEERD_QUEUE_LOCK_MS. Default 30000. */
  queueLockMs: number;
  /** How often workers look for jobs of a lost worker (ms). Env STEERD_QUEUE_STALLED_MS. Default 30000. */
  queueStalledMs: number;
  /**
   * After a queued generation is cancelled (disconnect, time limit), how long the API process waits
   * for its worker to confirm before ending the request anyway (the worker may be gone), ms.
   * Env STEERD_QUEUE_CANCEL_GRACE_MS. Default 3000.
   */
  queueCancelGraceMs: number;
  /**
   * steerd's own cache: generated checkpoints (`models/tiny`), the folders hub-cache snapshots are
   * served from (links and graphs, `hub/`), and pulls made before the hub cache layout
   * (`models/<owner>--<name>/<commit>`). Env STEERD_CACHE. Default ~/.cache/steerd.
   */
  cacheDir?: string;
  /**
   * The Hugging Face hub cache, shared with Python: hub models are looked for there first and
   * downloaded into it. Env HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else
   * XDG_CACHE_HOME/huggingface/hub (hf-cache.ts). Default ~/.cache/huggingface/hub.
   */
  hubCacheDir: string;
  /** Hub models only from the caches, never downloaded. Env HF_HUB_OFFLINE (1, true, yes, on). Default false. */
  hubOffline: boolean;
  /** ONNX Runtime execution provider. Env STEERD_PROVIDER. Default cpu. */
  provider: string;
  /**
   * The binding of ONNX Runtime that runs the graphs: `node` (onnxruntime-node) or `capi` (ONNX
   * Runtime's C API through I/O binding: the KV cache stays on the device, CUDA memory on CUDA).
   * Env STEERD_BINDING. Default (undefined here): `capi` on cuda, `node` elsewhere
   * (engine/runtime/names.ts defaultRuntime).
   */
  binding?: RuntimeName;
  /**
   * The blocks' weights: `float32`; `float16` (for GPU providers: a float16 copy written once
   * beside the checkpoint, multiplied in float16; LayerNorm, softmax and the logits stay float32);
   * `int8` or `int4` (the CPU provider: blocks of 32 integers with a float32 scale, the linear maps
   * and the unembedding, from a copy written once beside the checkpoint; dtypes.ts).
   * Env STEERD_DTYPE. Default float32.
   */
  dtype: Dtype;
  /** Intra-op threads, 0 = one per CPU the process may run on. Env STEERD_THREADS. Default 0. */
  threads: number;
  /**
   * Intra-op threads spin while they wait for work (ONNX Runtime's own default) instead of
   * sleeping: a little faster on cores nothing else uses, much slower where other work shares them
   * (README, the decode step). Env STEERD_THREAD_SPINNING (1 or 0). Default off.
   */
  threadSpinning: boolean;
  /**
   * A second, lean serving graph (no hook points, one cache group) for passes that neither steer
   * nor read, on the CPU provider: fewer nodes per step, for a second copy of the weights in
   * memory (README, the decode step). Env STEERD_LEAN_GRAPH (1 or 0). Default off.
   */
  leanGraph: boolean;
  /** Rows decoded together. Env STEERD_BATCH_CAPACITY. Default 32. */
  batchCapacity: number;
  /** Prompt tokens prefilled per step. Env STEERD_TOKEN_BUDGET. Default 256. */
  tokenBudget: number;
  /**
   * Tokens of keys and values the engine holds at once, all requests together; a request reserves
   * its prompt + max_new_tokens rounded up to a size class. Env STEERD_KV_CACHE_TOKENS. Default: from
   * kvCacheMemory, at most batch capacity × context.
   */
  kvCacheTokens?: number;
  /**
   * Memory for the KV cache when kvCacheTokens is unset: a fraction (0–1] of the memory available
   * once the weights are loaded (the host's; the CUDA device's free memory, from nvidia-smi, where
   * the cache is on it: the capi binding), or a size in bytes (units k, M, G, T, with or without `iB`/`B`).
   * Env STEERD_KV_CACHE_MEMORY. Default 0.5.
   */
  kvCacheMemory: number;
  /**
   * Hook sites the serving graph takes steering at and reads (comma-separated: resid_pre, ln1,
   * attn_out, resid_mid, ln2, mlp_out); the others cannot be steered or read, and cost nothing.
   * Env STEERD_HOOK_SITES. Default all.
   */
  hookSites: Site[];
  /** Bearer keys for /v1/*; none = open. Env STEERD_API_KEYS (comma-separated). Default none. */
  apiKeys: string[];
  /**
   * Host names requests may address (the `Host` header, any port; others get 403: a defence
   * against DNS rebinding); `*` allows any. Env STEERD_ALLOWED_HOSTS (comma-separated). Default
   * (unset): the loopback names when the listen address is a loopback one, else any —
   * `hostAllowlist` decides.
   */
  allowedHosts?: string[];
  /** Requests per minute per key (or per address without keys); 0 = unlimited. Env STEERD_RATE_LIMIT. Default 0. */
  rateLimit: number;
  /** How long SIGTERM waits for requests in flight, ms. Env STEERD_DRAIN_TIMEOUT_MS. Default 30000. */
  drainTimeoutMs: number;
  /** pino level. Env LOG_LEVEL. Default info. */
  logLevel: string;
  /**
   * How logs are written: `json` (pino's own: one JSON object a line, for collectors), `pretty`
   * (pino-pretty: one coloured line per event, for people), or `auto`: pretty when standard output
   * is a terminal, else JSON (logOptions in src/logging.ts decides). Env STEERD_LOG_FORMAT. Default auto.
   */
  logFormat: LogFormat;
  limits: Limits;
}

export const LOG_FORMATS = ['auto', 'pretty', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** STEERD_LOG_FORMAT: auto, pretty or json; anything else stops steerd at start. */
export function parseLogFormat(v: string): LogFormat {
  if (!(LOG_FORMATS as readonly string[]).includes(v))
    throw new SteerdError(`STEERD_LOG_FORMAT must be auto, pretty or json, not "${v}"`, 500, 'bad_config');
  return v as LogFormat;
}

/** A weights dtype from the environment or the command line; anything else stops steerd at start. */
export function parseDtype(v: string, where: string): Dtype {
  if (!(DTYPES as readonly string[]).includes(v))
    throw new Error(`${where} must be one of ${DTYPES.join(', ')}, not "${v}"`);
  return v as Dtype;
}

/** Vector names: also file names, so no separators and no leading dot. */
export const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

/** An integer setting: the default when unset, else a whole number >= min, or a clear error. */
/** A yes/no setting: 1/true/yes or 0/false/no (any case); anything else is refused, naming it. */
function flag(env: NodeJS.ProcessEnv, name: string, d: boolean): boolean {
  const v = env[name]?.trim().toLowerCase();
  if (v === undefined || v === '') return d;
  if (['1', 'true', 'yes'].includes(v)) return true;
  if (['0', 'false', 'no'].includes(v)) return false;
  throw new SteerdError(`${name} must be 1 or 0 (got ${JSON.stringify(env[name])})`, 500, 'bad_config');
}

function int(env: NodeJS.ProcessEnv, name: string, d: number, min = 1): number {
  const v = env[name];
  if (v === undefined || v === '') return d;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new SteerdError(`${name}=${JSON.stringify(v)}: expected an integer >= ${min}`, 500, 'bad_config');
  return n;
}

/** A list of hook sites: known names, resid_pre always included (the API's default site). */
export function parseSites(v: string, name: string): Site[] {
  const list = v
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  const bad = list.filter((x) => !isSite(x));
  if (bad.length)
    throw new SteerdError(
      `${name}=${JSON.stringify(v)}: unknown site ${bad.join(', ')} (${SITES.join(', ')})`,
      500,
      'bad_config',
    );
  return SITES.filter((x) => x === 'resid_pre' || list.includes(x));
}

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** A memory setting: a fraction in (0, 1], or bytes with an optional binary unit (8G, 8GB, 8GiB). */
function memory(env: NodeJS.ProcessEnv, name: string, d: number): number {
  const v = env[name];
  if (v === undefined || v === '') return d;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(v.trim());
  const n = m ? Number(m[1]) * UNITS[m[2].toLowerCase()] : Number.NaN;
  if (!(n > 0) || (n > 1 && !Number.isInteger(n)))
    throw new SteerdError(
      `${name}=${JSON.stringify(v)}: expected a fraction in (0, 1] or a size in bytes (e.g. 8GiB)`,
      500,
      'bad_config',
    );
  return n;
}

/** A comma-separated list, items trimmed, empty ones dropped. */
const list = (v: string | undefined) =>
  (v ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);

/** A host name as the `Host` header and the allowlist compare it: lower case, no port, no trailing dot. */
export function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1 || undefined); // [v6]:port
  if (h.includes(':') && h.indexOf(':') !== h.lastIndexOf(':')) return `[${h}]`; // a bare IPv6 address
  return h.replace(/:\d*$/, '').replace(/\.$/, '');
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];
const isLoopback = (name: string) =>
  LOOPBACK_NAMES.includes(name) || /^127(\.\d{1,3}){3}$/.test(name) || name === '[::ffff:127.0.0.1]';

/** Whether a host (as `hostName` gives it) is an IP address rather than a name. */
export const isAddress = (host: string) => /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.startsWith('[');

/**
 * The host names requests may address, or undefined for any: `allowedHosts` as set (`*`: any),
 * else, when the listen address is a loopback one, the loopback names (and that address), else any.
 * IP addresses are always let through by the app (a rebinding page has a name, never an address):
 * health checks, probes and scrapes by address keep working.
 */
export function hostAllowlist(config: Pick<Config, 'host' | 'allowedHosts'>): Set<string> | undefined {
  if (config.allowedHosts) {
    if (config.allowedHosts.length === 0)
      throw new SteerdError(
        'STEERD_ALLOWED_HOSTS names no host: give host names (comma-separated) or * for any',
        500,
        'bad_config',
      );
    return config.allowedHosts.includes('*') ? undefined : new Set(config.allowedHosts.map(hostName));
  }
  const listen = hostName(config.host);
  return isLoopback(listen) ? new Set([...LOOPBACK_NAMES, listen]) : undefined;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return {
    host: env.HOST ?? '127.0.0.1',
    port: int(env, 'PORT', 8080, 0),
    model: env.STEERD_MODEL || 'gpt2-xl',
    dataDir: env.STEERD_DATA ?? './data',
    redisUrl: env.REDIS_URL || undefined,
    redisPrefix: env.STEERD_REDIS_PREFIX || 'steerd:',
    worker: false,
    queueLockMs: int(env, 'STEERD_QUEUE_LOCK_MS', 30_000),
    queueStalledMs: int(env, 'STEERD_QUEUE_STALLED_MS', 30_000),
    queueCancelGraceMs: int(env, 'STEERD_QUEUE_CANCEL_GRACE_MS', 3000),
    cacheDir: env.STEERD_CACHE,
    hubCacheDir: hubCacheDir(env),
    hubOffline: hubOffline(env),
    provider: env.STEERD_PROVIDER ?? 'cpu',
    binding: env.STEERD_BINDING ? parseRuntime(env.STEERD_BINDING, 'STEERD_BINDING') : undefined,
    dtype: parseDtype(env.STEERD_DTYPE ?? 'float32', 'STEERD_DTYPE'),
    threads: int(env, 'STEERD_THREADS', 0, 0),
    threadSpinning: flag(env, 'STEERD_THREAD_SPINNING', false),
    leanGraph: flag(env, 'STEERD_LEAN_GRAPH', false),
    batchCapacity: int(env, 'STEERD_BATCH_CAPACITY', 32),
    tokenBudget: int(env, 'STEERD_TOKEN_BUDGET', 256),
    kvCacheTokens: env.STEERD_KV_CACHE_TOKENS ? int(env, 'STEERD_KV_CACHE_TOKENS', 0) : undefined,
    kvCacheMemory: memory(env, 'STEERD_KV_CACHE_MEMORY', 0.5),
    hookSites: parseSites(env.STEERD_HOOK_SITES ?? SITES.join(','), 'STEERD_HOOK_SITES'),
    apiKeys: list(env.STEERD_API_KEYS),
    allowedHosts: env.STEERD_ALLOWED_HOSTS !== undefined ? list(env.STEERD_ALLOWED_HOSTS) : undefined,
    rateLimit: int(env, 'STEERD_RATE_LIMIT', 0, 0),
    drainTimeoutMs: int(env, 'STEERD_DRAIN_TIMEOUT_MS', 30_000, 0),
    logLevel: env.LOG_LEVEL ?? 'info',
    logFormat: parseLogFormat(env.STEERD_LOG_FORMAT || 'auto'),
    limits: {
      maxNewTokens: int(env, 'STEERD_MAX_NEW_TOKENS', 512),
      maxInterventions: int(env, 'STEERD_MAX_INTERVENTIONS', 16),
      maxVectors: int(env, 'STEERD_MAX_VECTORS', 1000),
      bodyLimit: int(env, 'STEERD_BODY_LIMIT', 16 * 1024 * 1024),
      queueDepth: int(env, 'STEERD_QUEUE_DEPTH', 256),
      inlineValuesMaxBytes: int(env, 'STEERD_INLINE_VALUES_MAX_BYTES', 256 * 1024 * 1024),
      maxSweepCells: int(env, 'STEERD_MAX_SWEEP_CELLS', 64),
      maxN: int(env, 'STEERD_MAX_N', 8),
      requestTimeoutMs: int(env, 'STEERD_REQUEST_TIMEOUT_MS', 300_000),
      headersTimeoutMs: int(env, 'STEERD_HEADERS_TIMEOUT_MS', 10_000),
      bodyTimeoutMs: int(env, 'STEERD_BODY_TIMEOUT_MS', 60_000),
      keepAliveTimeoutMs: int(env, 'STEERD_KEEP_ALIVE_TIMEOUT_MS', 72_000),
    },
  };
}
