import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import t from 'tap';
import type { Service } from '../../src/api/service.ts';
import { buildApp } from '../../src/app.ts';
import { type Config, loadConfig } from '../../src/config.ts';
import { createService } from '../../src/server.ts';
import { binding, provider } from './provider.ts';
import { spawnWorker, testRedis } from './redis.ts';

export interface Harness {
  app: FastifyInstance;
  svc: Service;
  close(): Promise<void>;
}

/**
 * `STEERD_TEST_QUEUE=redis` runs every harness in Redis mode: the service enqueues, and one
 * `steerd worker` process of its own runs the engine. The data directory then names a key prefix,
 * so that harnesses given the same directory share their vectors (as after a restart).
 */
export const queueMode = process.env.STEERD_TEST_QUEUE === 'redis';
const prefixes = new Map<string, string>();

/** A service on `model` with a fresh (or given) data directory, and its app (not listening). */
export async function harness(
  model: string,
  change: (c: Config) => Config = (c) => c,
  dataDir?: string,
): Promise<Harness> {
  const own = dataDir === undefined;
  const data = dataDir ?? mkdtempSync(join(tmpdir(), 'steerd-data-'));
  let config = change({ ...loadConfig({}), provider, binding, model, dataDir: data, logLevel: 'silent' });
  const redis = queueMode && !config.redisUrl ? await testRedis() : undefined;
  let worker: ReturnType<typeof spawnWorker> | undefined;
  if (redis) {
    if (redis.skip) throw new Error(redis.skip);
    if (!prefixes.has(data)) {
      prefixes.set(data, redis.prefix);
      // a directory's keys outlive its harnesses (a restart reads them): removed when the file ends
      if (!own) t.teardown(async () => (await testRedis({ prefix: redis.prefix })).cleanup());
    }
    config = { ...config, redisUrl: redis.url, redisPrefix: prefixes.get(data)!, worker: false };
    worker = spawnWorker(redis.url, model, config.redisPrefix);
    await worker.ready;
  }
  const svc = await createService(config);
  const app = await buildApp(svc, { logger: false });
  // the start-up measurement (/v1/model's norms) done where something runs it (an embedded engine,
  // or a worker): the engine or the queue is idle. An API process alone leaves it waiting.
  const served = !config.redisUrl || config.worker || worker !== undefined;
  for (const t0 = Date.now(); served && svc.engine.inFlight > 0 && Date.now() - t0 < 20_000; )
    await new Promise((r) => setTimeout(r, 10));
  return {
    app,
    svc,
    async close() {
      await app.close();
      await svc.engine.close();
      for (const close of svc.closers) await close();
      await svc.store.close?.();
      await worker?.stop();
      if (redis && own) await redis.cleanup();
      else redis?.probe.disconnect();
      if (own) rmSync(data, { recursive: true, force: true });
    },
  };
}

/** JSON POST through inject. */
export const post = (app: FastifyInstance, url: string, payload: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: payload as object, headers });
