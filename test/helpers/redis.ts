import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/**
 * The Redis the tests use (REDIS_URL, default 127.0.0.1:6379), a key prefix of this test file's
 * own, and a cleanup that deletes only keys under that prefix. Without Redis the tests skip with
 * the returned reason, unless STEERD_REQUIRE_REDIS is set.
 */
export async function testRedis() {
  const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
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
  const prefix = `steerd-test-${process.pid}-${randomBytes(4).toString('hex')}:`;
  return {
    url,
    probe,
    prefix,
    skip: reachable ? false : `no Redis answers at ${url}`,
    async cleanup() {
      if (reachable) {
        const keys = await probe.keys(`${prefix}*`);
        if (keys.length) await probe.del(...keys);
      }
      probe.disconnect();
    },
  };
}
