import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Redis } from 'ioredis';

/**
 * The Redis the tests use (REDIS_URL, default 127.0.0.1:6379), a key prefix of this test file's
 * own (or the one given), and a cleanup that deletes only keys under that prefix. Without Redis
 * the tests skip with the returned reason, unless STEERD_REQUIRE_REDIS is set.
 */
export async function testRedis(o: { url?: string; prefix?: string } = {}) {
  const url = o.url ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const probe = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => null });
  probe.on('error', () => undefined);
  const reachable = await probe.connect().then(
    () => true,
    () => false,
  );
  if (!reachable) {
    if (process.env.STEERD_REQUIRE_REDIS) throw new Error(`STEERD_REQUIRE_REDIS is set but no Redis answers at ${url}`);
    console.log(`# skipping the Redis tests: no Redis answers at ${url} (set REDIS_URL)`);
  }
  const prefix = o.prefix ?? `steerd-test-${process.pid}-${randomBytes(4).toString('hex')}:`;
  return {
    url,
    probe,
    prefix,
    skip: reachable ? (false as const) : `no Redis answers at ${url}`,
    async cleanup() {
      if (reachable) {
        const keys = await probe.keys(`${prefix}*`);
        if (keys.length) await probe.del(...keys);
      }
      probe.disconnect();
    },
  };
}

/** A `steerd worker` process for `model` on `url` under `prefix`; `ready` resolves once it serves. */
export function spawnWorker(url: string, model: string, prefix: string, env: Record<string, string> = {}) {
  const child = spawn(
    process.execPath,
    [join(import.meta.dirname, '..', '..', 'bin', 'steerd.js'), 'worker', '--model', model],
    {
      env: { ...process.env, REDIS_URL: url, STEERD_REDIS_PREFIX: prefix, STEERD_BATCH_CAPACITY: '8', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const ready = new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      if (out.includes('steerd worker: serving')) resolve();
    });
    child.stderr!.on('data', (d: Buffer) => (out += d));
    child.on('exit', (code) => reject(new Error(`worker exited (${code}): ${out}`)));
  });
  ready.catch(() => undefined);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return {
    child,
    ready,
    exited,
    /** SIGTERM (drain), then SIGKILL if it has not exited within `ms`. */
    async stop(ms = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      await exited;
      clearTimeout(timer);
    },
  };
}
