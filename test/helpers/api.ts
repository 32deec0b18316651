import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/app.ts';
import type { Service } from '../../src/api/service.ts';
import { loadConfig, type Config } from '../../src/config.ts';
import { createService } from '../../src/server.ts';

export interface Harness {
  app: FastifyInstance;
  svc: Service;
  close(): Promise<void>;
}

/** A service on `model` with a fresh (or given) data directory, and its app (not listening). */
export async function harness(model: string, change: (c: Config) => Config = (c) => c, dataDir?: string): Promise<Harness> {
  const own = dataDir === undefined;
  const data = dataDir ?? mkdtempSync(join(tmpdir(), 'steerd-data-'));
  const config = change({ ...loadConfig({}), model, dataDir: data, logLevel: 'silent' });
  const svc = await createService(config);
  const app = await buildApp(svc, { logger: false });
  return {
    app,
    svc,
    async close() {
      await app.close();
      await svc.engine.close();
      for (const close of svc.closers) await close();
      await svc.store.close?.();
      if (own) rmSync(data, { recursive: true, force: true });
    },
  };
}

/** JSON POST through inject. */
export const post = (app: FastifyInstance, url: string, payload: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: payload as object, headers });
