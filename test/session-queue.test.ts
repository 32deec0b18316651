import t from 'tap';
import { testRedis } from './helpers/redis.ts';

// test/session.test.ts again in Redis mode: the service enqueues, and a `steerd worker` process of
// its own runs the engine (see test/helpers/api.ts).
const { skip, cleanup } = await testRedis();
await cleanup();
if (skip) t.plan(0, skip);
else {
  process.env.STEERD_TEST_QUEUE = 'redis';
  await import('./session.test.ts');
}
