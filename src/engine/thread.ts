import { parentPort, workerData } from 'node:worker_threads';
import { SteerdError } from '../errors.js';
import { ModelRunner, type RunnerOptions } from './runner.js';
import { Scheduler, type SchedulerOptions } from './scheduler.js';
import type { FromThread, ToThread, WireError } from './thread-messages.js';

/**
 * The engine thread: the one owner of the ONNX Runtime session. `session.run` blocks the thread it
 * is called on, so it runs here and never on the HTTP event loop.
 */
const port = parentPort!;
const post = (m: FromThread, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer ?? []);
const wire = (e: unknown): WireError =>
  e instanceof SteerdError
    ? { message: e.message, status: e.status, code: e.code }
    : { message: (e as Error)?.message ?? String(e), status: 500, code: 'engine_error' };

const opts = workerData as RunnerOptions & SchedulerOptions;
let runner: ModelRunner;
try {
  runner = await ModelRunner.open(opts);
} catch (e) {
  post({ type: 'start-error', error: wire(e) });
  process.exit(0);
}

// the scheduler's KV manager measures the budget now, after the weights are loaded: what is left
// is what the cache can have (kv/budget.ts)
const inFlight = new Set<number>();
const scheduler = new Scheduler(
  runner,
  {
    event(id, event) {
      if (event.type === 'done') inFlight.delete(id);
      post({ type: 'event', id, event });
    },
    activations(id, result) {
      inFlight.delete(id);
      post(
        { type: 'activations', id, result },
        [...Object.values(result.activations), ...(result.lens ? [result.lens] : [])].map(
          (a) => a.buffer as ArrayBuffer,
        ),
      );
    },
    error(id, e) {
      inFlight.delete(id);
      post({ type: 'error', id, error: wire(e) });
    },
  },
  opts,
);
const info = { ...runner.info, kv_cache: scheduler.kvCache };
let reported = -1;

let closing = false;
let wake: (() => void) | undefined;
port.on('message', (m: ToThread) => {
  if (m.type === 'generate') {
    inFlight.add(m.id);
    scheduler.submit(m.id, m.req);
  } else if (m.type === 'activations') {
    inFlight.add(m.id);
    scheduler.activations(m.id, m.req);
  } else if (m.type === 'cancel') scheduler.cancel(m.id);
  else if (m.type === 'close') closing = true;
  wake?.();
});
post({ type: 'ready', info });

for (;;) {
  let worked: boolean;
  try {
    worked = await scheduler.step();
    // after every pass (the host byte counters) and whenever the reservation changes
    const kv = scheduler.kvUsage;
    if (worked || kv.used !== reported) {
      reported = kv.used;
      post({ type: 'kv', usage: kv });
    }
  } catch (e) {
    // A failed forward pass fails the requests in flight, not the engine.
    for (const id of inFlight) post({ type: 'error', id, error: wire(e) });
    inFlight.clear();
    scheduler.reset();
    worked = true;
  }
  if (!worked) {
    if (closing) break;
    await new Promise<void>((r) => (wake = r));
    wake = undefined;
  } else {
    await new Promise((r) => setImmediate(r)); // let cancellations and new requests in
  }
}
scheduler.close();
await runner.close();
post({ type: 'closed' });
port.close();
