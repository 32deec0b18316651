import t from 'tap';
import { testRedis } from './helpers/redis.ts';

// test/inline-values.test.ts again in Redis mode: the values are kept in Redis.
const { skip, cleanup } = await testRedis();
await cleanup();
if (skip) t.plan(0, skip);
else {
  process.env.STEERD_TEST_QUEUE = 'redis';
  await import('./inline-values.test.ts');
}
