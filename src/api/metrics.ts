import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { KvReport } from '../engine/kv/manager.js';

/** Prometheus metrics, names modelled on vLLM's and TGI's (`steerd:` prefix as vLLM's `vllm:`). */
export class Metrics {
  readonly registry = new Registry();
  private readonly latency = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
  readonly running = new Gauge({
    name: 'steerd:num_requests_running',
    help: 'Requests generating tokens',
    registers: [this.registry],
  });
  readonly waiting = new Gauge({
    name: 'steerd:num_requests_waiting',
    help: 'Requests admitted, before their first token',
    registers: [this.registry],
  });
  readonly promptTokens = new Counter({
    name: 'steerd:prompt_tokens_total',
    help: 'Prompt tokens processed',
    registers: [this.registry],
  });
  readonly generationTokens = new Counter({
    name: 'steerd:generation_tokens_total',
    help: 'Tokens generated',
    registers: [this.registry],
  });
  readonly requests = new Counter({
    name: 'steerd:request_success_total',
    help: 'Finished generations by finish reason',
    labelNames: ['finished_reason'],
    registers: [this.registry],
  });
  readonly ttft = new Histogram({
    name: 'steerd:time_to_first_token_seconds',
    help: 'Time to first token',
    buckets: this.latency,
    registers: [this.registry],
  });
  readonly itl = new Histogram({
    name: 'steerd:inter_token_latency_seconds',
    help: 'Time between two tokens of a request',
    buckets: [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
    registers: [this.registry],
  });
  readonly e2e = new Histogram({
    name: 'steerd:e2e_request_latency_seconds',
    help: 'End-to-end request latency',
    buckets: this.latency,
    registers: [this.registry],
  });
  readonly queue = new Histogram({
    name: 'steerd:request_queue_time_seconds',
    help: 'Time waiting for a slot',
    buckets: this.latency,
    registers: [this.registry],
  });
  readonly batch = new Histogram({
    name: 'steerd:batch_size',
    help: 'Requests running when a request finished (an estimate of the decode batch size)',
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  /** Where the KV cache figures come from: the local engine, or the workers' reports (Redis mode). */
  kvSource?: () => Promise<KvReport[]>;
  private reading?: Promise<KvReport[]>;
  /** The engines' reports, read once per scrape (the metrics below collect at the same time). */
  private reports(): Promise<KvReport[]> {
    this.reading ??= (this.kvSource?.() ?? Promise.resolve([]))
      .catch(() => [])
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }
  readonly kvUsage = new Gauge({
    name: 'steerd:kv_cache_usage_perc',
    help: 'KV cache reserved by admitted requests, as a fraction of the budget (every engine together)',
    registers: [this.registry],
    collect: async () => {
      const all = await this.reports();
      const tokens = all.reduce((a, k) => a + k.tokens, 0);
      this.kvUsage.set(tokens ? all.reduce((a, k) => a + k.used, 0) / tokens : 0);
    },
  });
  /** Sums the engines' host byte counters (a counter set from its source at each scrape). */
  private hostCounter(name: string, help: string, which: 'input' | 'output'): Counter {
    const c: Counter = new Counter({
      name,
      help,
      registers: [this.registry],
      collect: async () => {
        const all = await this.reports();
        c.reset();
        c.inc(all.reduce((a, k) => a + (k.hostBytes?.[which] ?? 0), 0));
      },
    });
    return c;
  }
  readonly sessionInput = this.hostCounter(
    'steerd:session_input_bytes_total',
    'Host bytes passed into model session runs (device tensors not counted; every engine together)',
    'input',
  );
  readonly sessionOutput = this.hostCounter(
    'steerd:session_output_bytes_total',
    'Host bytes returned from model session runs (device tensors not counted; every engine together)',
    'output',
  );
  readonly liveValues = new Gauge({
    name: 'steerd:ort_values_live',
    help: 'OrtValues the capi binding holds now: the device cache and the outputs of a pass in flight (every engine together; 0 through onnxruntime-node)',
    registers: [this.registry],
    collect: async () => {
      const all = await this.reports();
      this.liveValues.set(all.reduce((a, k) => a + (k.hostBytes?.live ?? 0), 0));
    },
  });
  readonly http = new Counter({
    name: 'steerd:http_requests_total',
    help: 'HTTP responses by route and status',
    labelNames: ['route', 'status'],
    registers: [this.registry],
  });
}
