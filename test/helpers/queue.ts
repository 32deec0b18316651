import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { writeTinyCheckpoint } from '../../src/model/gpt2/tiny.ts';
import { queueName } from '../../src/queue/jobs.ts';
import { spawnWorker as spawnRedisWorker, testRedis } from './redis.ts';

/**
 * The queue suites' fixture: this file's Redis prefix (its keys removed at the end), a small model,
 * `steerd worker` processes on it, and a mix of requests (greedy and sampled, steered and not).
 */
export async function queueFixture(name: string) {
  const redis = await testRedis();
  const root = mkdtempSync(join(tmpdir(), `steerd-${name}-`));
  const model = join(root, 'model');
  writeTinyCheckpoint(model, { layers: 3, embd: 64, heads: 4, ctx: 256, seed: 8, initScale: 10 });
  t.teardown(async () => {
    await redis.cleanup();
    rmSync(root, { recursive: true, force: true });
  });
  const spawnWorker = (redisPrefix: string, env: Record<string, string> = {}) =>
    spawnRedisWorker(redis.url, model, redisPrefix, env);
  /** How many times each job of the queue was started (BullMQ's attemptsStarted). */
  const jobStarts = async (p: string, fingerprint: string): Promise<number[]> => {
    const keys = await redis.probe.keys(`${p}q:${queueName(fingerprint)}:*-*-*`);
    return Promise.all(keys.map(async (k) => Number(await redis.probe.hget(k, 'ats'))));
  };
  return { ...redis, model, spawnWorker, jobStarts };
}

export const requests = Array.from({ length: 32 }, (_, i) => ({
  prompt: `Request number ${i} says`,
  max_new_tokens: 4 + (i % 7),
  temperature: i % 2 ? 0 : 0.9,
  top_p: i % 3 ? 1 : 0.8,
  seed: 100 + i,
  interventions:
    i % 4 === 1
      ? [
          {
            vector: { values: Array.from({ length: 64 }, (_, j) => Math.sin(i + j) * 0.2) },
            layer: 1 + (i % 3),
            coeff: 4,
          },
        ]
      : [],
}));
