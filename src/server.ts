import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Metrics } from './api/metrics.js';
import type { EngineLike, Service } from './api/service.js';
import { buildApp } from './app.js';
import type { Config } from './config.js';
import { Engine } from './engine/engine.js';
import { DownloadError, SteerdError } from './errors.js';
import { loadChatTemplate } from './model/chat-template.js';
import { writeTinyCheckpoint } from './model/gpt2/tiny.js';
import { servingDir } from './model/hf-cache.js';
import { defaultCacheDir, type ProgressReporter, pullModel } from './model/hub.js';
import { startQueueConsumer } from './queue/consumer.js';
import { workerKvReports } from './queue/jobs.js';
import { RemoteEngine } from './queue/remote-engine.js';
import { FileVectorStore } from './store/file-vectors.js';
import { RedisVectorStore } from './store/redis-vectors.js';

export interface ResolvedModel {
  dir: string;
  name: string;
  randomWeights: boolean;
}

/**
 * A checkpoint directory, `tiny` (generated once in the cache), or a hub name: from the Hugging
 * Face hub cache, else steerd's old cache, else downloaded into the hub cache (hub.ts pullModel).
 * A hub-cache snapshot (or any directory whose weights are a symlink out of it) is served through a
 * folder of links in steerd's cache, where the graphs go (hf-cache.ts servingDir says why).
 */
export async function resolveModel(config: Config, progress?: ProgressReporter): Promise<ResolvedModel> {
  const cache = config.cacheDir ?? defaultCacheDir();
  const log = (m: string) => progress?.log(m);
  let dir: string;
  let name = config.model;
  if (existsSync(join(config.model, 'config.json'))) {
    dir = servingDir(config.model, cache, log);
    name = config.model.replace(/\/+$/, '').split('/').pop()!;
  } else if (config.model === 'tiny') {
    dir = join(cache, 'models', 'tiny');
    if (!existsSync(join(dir, 'model.safetensors')))
      writeTinyCheckpoint(dir, { layers: 8, embd: 128, heads: 4, ctx: 512, initScale: 5 }); // 8 layers: the README's layer-6 examples run on it
  } else {
    try {
      const got = await pullModel(config.model, {
        cache: config.hubCacheDir,
        legacyCache: cache,
        offline: config.hubOffline,
        progress,
      });
      dir = got.cache === 'hub' ? servingDir(got.dir, cache, log) : got.dir;
    } catch (e) {
      if (!(e instanceof DownloadError)) throw e;
      throw new SteerdError(
        `cannot get model "${config.model}": ${e.message}. Offline, serve a local checkpoint (--model DIR) or a small random one (--model tiny, nonsense text)`,
        503,
        'model_unavailable',
      );
    }
  }
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  return { dir, name, randomWeights: cfg.steerd_random_weights !== undefined };
}

/** Loads the model into an engine and opens the vector store. */
/** The engine options a configuration asks for. */
const engineOptions = (config: Config, dir: string) => ({
  model: dir,
  provider: config.provider,
  runtime: config.binding,
  dtype: config.dtype,
  threads: config.threads,
  spinning: config.threadSpinning,
  lean: config.leanGraph,
  batchCapacity: config.batchCapacity,
  tokenBudget: config.tokenBudget,
  kvCacheTokens: config.kvCacheTokens,
  kvCacheMemory: config.kvCacheMemory,
  hookSites: config.hookSites,
});

/** An engine consuming the Redis queue: `steerd worker`, or `serve --worker`. */
export async function startWorker(config: Config, dir: string) {
  const engine = await Engine.start(engineOptions(config, dir));
  const queue = await startQueueConsumer(engine, {
    redisUrl: config.redisUrl!,
    prefix: config.redisPrefix,
    concurrency: config.batchCapacity,
    lockDuration: config.queueLockMs,
    stalledInterval: config.queueStalledMs,
  });
  return {
    engine,
    /** Stops taking jobs, finishes the active ones, then stops the engine. */
    async close() {
      await queue.close();
      await engine.close();
    },
  };
}

/**
 * Loads the model into an engine (or, with REDIS_URL, opens the queue in front of the workers)
 * and opens the vector store.
 */
export async function createService(config: Config, progress?: ProgressReporter): Promise<Service> {
  const m = await resolveModel(config, progress);
  // read before the engine starts: a template that does not parse stops the start, naming its file
  const chatTemplate = loadChatTemplate(m.dir);
  const closers: (() => Promise<void>)[] = [];
  let engine: EngineLike;
  if (config.redisUrl) {
    if (config.worker) closers.push((await startWorker(config, m.dir)).close);
    engine = await RemoteEngine.open({
      model: m.dir,
      hookSites: config.hookSites,
      dtype: config.dtype,
      redisUrl: config.redisUrl,
      prefix: config.redisPrefix,
      maxDepth: config.limits.queueDepth,
      timeoutMs: config.limits.requestTimeoutMs,
      cancelGraceMs: config.queueCancelGraceMs,
    });
  } else {
    engine = await Engine.start(engineOptions(config, m.dir));
  }
  const store = config.redisUrl
    ? new RedisVectorStore(config.redisUrl, config.redisPrefix, config.limits.inlineValuesMaxBytes)
    : new FileVectorStore(config.dataDir, config.limits.inlineValuesMaxBytes);
  const metrics = new Metrics();
  if (engine instanceof Engine) {
    const local = engine;
    metrics.kvSource = async () => [local.kvUsage];
  } else if (store instanceof RedisVectorStore) {
    const redis = store.redis;
    metrics.kvSource = () => workerKvReports(redis, config.redisPrefix);
  }
  return {
    config,
    engine,
    store,
    redis: store instanceof RedisVectorStore ? store.redis : undefined,
    model: {
      id: `${m.name}@${engine.info.fingerprint.slice(0, 12)}`,
      n_embd: engine.info.n_embd,
      name: m.name,
      random_weights: m.randomWeights,
    },
    chatTemplate,
    metrics,
    inFlight: 0,
    draining: false,
    aborts: new Set(),
    closers,
  };
}

/**
 * Drains and stops: new requests get 503 at once, requests in flight finish (up to the drain
 * timeout), then the server and the engine close.
 */
export async function shutdown(app: FastifyInstance, svc: Service): Promise<void> {
  svc.draining = true;
  const deadline = Date.now() + svc.config.drainTimeoutMs;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  while (svc.inFlight > 0 && Date.now() < deadline) await sleep(50);
  if (svc.inFlight > 0) {
    // past the drain timeout: cancel what is left, give the handlers a moment to answer
    for (const abort of svc.aborts) abort();
    const grace = Date.now() + 1000;
    while (svc.inFlight > 0 && Date.now() < grace) await sleep(20);
  }
  const closing = app.close();
  app.server.closeAllConnections(); // keep-alive sockets would otherwise hold the close open
  await closing;
  await Promise.race([svc.engine.close(), sleep(Math.max(1000, deadline - Date.now()))]);
  for (const close of svc.closers) await Promise.race([close(), sleep(Math.max(1000, deadline - Date.now()))]);
  await svc.store.close?.();
}

/** `steerd serve`: listens, and on SIGTERM or SIGINT drains and exits 0. */
export async function serve(config: Config, progress?: ProgressReporter): Promise<FastifyInstance> {
  const svc = await createService(config, progress);
  const app = await buildApp(svc);
  await app.listen({ host: config.host, port: config.port });
  if (svc.model.random_weights)
    app.log.warn(`serving ${svc.model.name}: random weights, the text it generates is nonsense`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal, inFlight: svc.inFlight }, 'draining');
    shutdown(app, svc).then(
      () => process.exit(0),
      (e) => {
        app.log.error(e);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return app;
}

/** `steerd worker`: consumes the queue until SIGTERM, then finishes its active jobs and exits 0. */
export async function runWorker(config: Config, progress?: ProgressReporter): Promise<void> {
  if (!config.redisUrl)
    throw new SteerdError('steerd worker needs REDIS_URL (the queue it consumes)', 500, 'bad_config');
  const m = await resolveModel(config, progress);
  const w = await startWorker(config, m.dir);
  console.log(`steerd worker: serving ${m.name} from ${config.redisUrl} (${config.batchCapacity} jobs at once)`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const timer = setTimeout(() => process.exit(0), config.drainTimeoutMs);
    w.close().then(
      () => {
        clearTimeout(timer);
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
