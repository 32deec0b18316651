import t from 'tap';
import { testRedis } from './helpers/redis.ts';

// The API suites again, in Redis mode: every harness enqueues, and a `steerd worker` process of its
// own runs the engine (see test/helpers/api.ts).
const { skip, cleanup } = await testRedis();
await cleanup();
if (skip) t.plan(0, skip);
else {
  process.env.STEERD_TEST_QUEUE = 'redis';
  await import('./api.test.ts');
  await import('./api-server.test.ts');
  await import('./instruments.test.ts');
}
