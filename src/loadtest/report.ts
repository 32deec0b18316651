import type { LoadTestOptions } from './options.js';
import { kind, type Outcome } from './outcome.js';
import { type Sample, total } from './prometheus.js';
import type { ReplayReport } from './replay.js';
import { type Summary, summarize } from './stats.js';
import type { Endpoint, ModelInfo } from './workload.js';

/** The routes the load test calls, as /metrics labels them. */
export const ROUTES: Endpoint[] = ['/v1/generate', '/v1/completions'];
/** The server's count of HTTP responses, by route and status. */
export const HTTP_REQUESTS = 'steerd:http_requests_total';
/** Failed requests listed in full, per kind of error. */
const EXAMPLES_PER_KIND = 3;

const TTFT_NON_STREAM = 'not measurable (the answer arrives whole, its first token with its last)';
const SERVER_NOTE =
  "the server counts every client's traffic between the two reads of /metrics: the counts agree when this run was its only traffic";

/** A count the client made beside the server's own (the delta of its /metrics over the run). */
export interface Comparison {
  what: string;
  client: number;
  server: number;
  agree: boolean;
}

/** The load test's result: what `--json` writes, and what the table shows. */
export interface Report {
  model: { id: string; name: string; n_layer: number; n_embd: number };
  /** The options of the run (without the API key). */
  options: Omit<LoadTestOptions, 'apiKey'>;
  started_at: string;
  wall_s: number;
  /** Stopped early by Ctrl-C. */
  interrupted: boolean;
  requests: {
    sent: number;
    /** Answered with 200 and every check passed. */
    ok: number;
    /** By endpoint and form, steered or not. */
    by_kind: Record<string, { steered: number; unsteered: number }>;
    by_steering: { none: number; inline: number; named: number };
    greedy_probes: number;
    /** HTTP statuses by route (requests that got none are in errors only). */
    by_status: Record<string, Record<string, number>>;
  };
  throughput: {
    requests_per_s: number;
    ok_requests_per_s: number;
    generated_tokens: number;
    generated_tokens_per_s: number;
  };
  /**
   * Of the requests answered with 200 that passed every check (`requests.ok`): a failed one is in
   * `errors` only, for a refusal comes fast and a timeout as late as --timeout.
   */
  latency_ms: { e2e: Summary; ttft_stream: Summary; ttft_non_stream: string };
  /** Failed requests by kind of error (see Outcome), the first few of each in full. */
  errors: {
    total: number;
    by_kind: Record<string, number>;
    examples: { kind: string; request: number; what: string; message: string }[];
  };
  /** Answers asked for again at the end (after the second read of /metrics, so not in `server`). */
  replay: ReplayReport;
  server: {
    comparisons: Comparison[];
    /** Mean end-to-end latency and time to first token as the server measures them (engine side, every request). */
    mean_ms: { e2e: number; ttft: number };
    note: string;
  };
}

/** The four kinds of request. */
const KINDS = ROUTES.flatMap((route) => [kind(route, true), kind(route, false)]);
const kindOf = (o: Outcome) => kind(o.plan.endpoint, o.plan.stream);

function count<T>(items: readonly T[], key: (item: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const it of items) out[key(it)] = (out[key(it)] ?? 0) + 1;
  return out;
}

const sum = (values: (number | undefined)[]) => values.reduce<number>((s, v) => s + (v ?? 0), 0);

/** The server's side: each counter's increase over the run, beside the client's own count. */
function compare(outcomes: Outcome[], before: Sample[], after: Sample[], byStatus: Report['requests']['by_status']) {
  const delta = (name: string, match: Record<string, string> = {}) =>
    total(after, name, match) - total(before, name, match);
  const rows: Omit<Comparison, 'agree'>[] = [];
  for (const route of ROUTES) {
    const served = after
      .filter((s) => s.name === HTTP_REQUESTS && s.labels.route === route)
      .map((s) => s.labels.status);
    for (const status of [...new Set([...Object.keys(byStatus[route]), ...served])].sort()) {
      const server = delta(HTTP_REQUESTS, { route, status });
      const client = byStatus[route][status] ?? 0;
      if (server || client) rows.push({ what: `POST ${route} ${status}`, client, server });
    }
  }
  const answered = outcomes.flatMap((o) => (o.answer ? [o.answer] : []));
  rows.push(
    {
      what: 'generated tokens',
      client: sum(answered.map((a) => a.usage.completion_tokens)),
      server: delta('steerd:generation_tokens_total'),
    },
    {
      what: 'prompt tokens',
      client: sum(answered.map((a) => a.usage.prompt_tokens)),
      server: delta('steerd:prompt_tokens_total'),
    },
    { what: 'finished generations', client: answered.length, server: delta('steerd:request_success_total') },
  );
  const mean = (name: string) => (delta(`${name}_sum`) / delta(`${name}_count`)) * 1000;
  return {
    comparisons: rows.map((r) => ({ ...r, agree: r.client === r.server })),
    mean_ms: { e2e: mean('steerd:e2e_request_latency_seconds'), ttft: mean('steerd:time_to_first_token_seconds') },
    note: SERVER_NOTE,
  };
}

export interface ReportInput {
  opts: LoadTestOptions;
  model: ModelInfo;
  startedAt: Date;
  wallMs: number;
  interrupted: boolean;
  outcomes: Outcome[];
  before: Sample[];
  after: Sample[];
  replayed: ReplayReport;
}

export function buildReport({
  opts,
  model,
  startedAt,
  wallMs,
  interrupted,
  outcomes,
  before,
  after,
  replayed,
}: ReportInput): Report {
  const { apiKey: _, ...options } = opts;
  const wall = wallMs / 1000;
  const failed = outcomes.filter((o) => o.error);
  const ok = outcomes.filter((o) => !o.error);
  const byKind = Object.fromEntries(KINDS.map((k) => [k, { steered: 0, unsteered: 0 }]));
  for (const o of outcomes) byKind[kindOf(o)][o.plan.steering === 'none' ? 'unsteered' : 'steered']++;
  const byStatus = Object.fromEntries(
    ROUTES.map((route) => [
      route,
      count(
        outcomes.filter((o) => o.plan.endpoint === route && o.status !== undefined),
        (o) => String(o.status),
      ),
    ]),
  );
  const generated = sum(outcomes.map((o) => o.answer?.usage.completion_tokens));
  const listed: Record<string, number> = {};
  return {
    model: { id: model.id, name: model.name, n_layer: model.n_layer, n_embd: model.n_embd },
    options,
    started_at: startedAt.toISOString(),
    wall_s: wall,
    interrupted,
    requests: {
      sent: outcomes.length,
      ok: ok.length,
      by_kind: byKind,
      by_steering: { none: 0, inline: 0, named: 0, ...count(outcomes, (o) => o.plan.steering) },
      greedy_probes: outcomes.filter((o) => o.plan.probe !== undefined).length,
      by_status: byStatus,
    },
    throughput: {
      requests_per_s: outcomes.length / wall,
      ok_requests_per_s: ok.length / wall,
      generated_tokens: generated,
      generated_tokens_per_s: generated / wall,
    },
    latency_ms: {
      e2e: summarize(ok.map((o) => o.e2eMs)),
      ttft_stream: summarize(ok.flatMap((o) => (o.answer?.ttftMs === undefined ? [] : [o.answer.ttftMs]))),
      ttft_non_stream: TTFT_NON_STREAM,
    },
    errors: {
      total: failed.length,
      by_kind: count(failed, (o) => o.error!.kind),
      examples: failed
        .filter((o) => {
          listed[o.error!.kind] = (listed[o.error!.kind] ?? 0) + 1;
          return listed[o.error!.kind] <= EXAMPLES_PER_KIND;
        })
        .map((o) => ({ kind: o.error!.kind, request: o.plan.index, what: kindOf(o), message: o.error!.message })),
    },
    server: compare(outcomes, before, after, byStatus),
    replay: replayed,
  };
}

/** Rows of cells as aligned text: the first column left-aligned, the others right-aligned. */
function table(rows: string[][], indent = '  '): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map(
    (r) =>
      indent +
      r
        .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])))
        .join('   ')
        .trimEnd(),
  );
}

const fmt = (n: number, digits = 1) =>
  Number.isNaN(n) ? '–' : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** The replay's line, and why each replay that failed did. */
function replayLines(r: ReplayReport): string[] {
  if (r.requests.length === 0) return ['replay: none', ''];
  return [
    `replay: ${r.requests.length} answers asked for again (non-streaming, same body and seed): ${r.same} the same, ` +
      `${r.different} different${r.different ? ' (mismatch errors)' : ''}, ${r.failed.length} failed`,
    ...r.failed.map((f) => `  replay of #${f.request} failed: ${f.message}`),
    '',
  ];
}

/** The report as a readable table. */
export function formatReport(r: Report): string {
  const o = r.options;
  const loop = o.rate === undefined ? `closed loop, concurrency ${o.concurrency}` : `open loop, ${o.rate} requests/s`;
  const lines = [
    `steerd load test: ${o.url}, model ${r.model.name} (${r.model.n_layer} layers, n_embd ${r.model.n_embd})`,
    `${loop}${o.ramp ? ` (ramp ${o.ramp} s)` : ''}, ${o.duration} s, at most ${o.maxRequests} requests, max_new_tokens ${o.maxNewTokens}, seed ${o.seed}`,
    '',
    `${r.requests.sent} requests (${r.requests.ok} ok) in ${fmt(r.wall_s, 2)} s${r.interrupted ? ' (interrupted)' : ''}: ${fmt(r.throughput.requests_per_s)} requests/s, ` +
      `${fmt(r.throughput.generated_tokens_per_s)} generated tokens/s (${r.throughput.generated_tokens} tokens)`,
    '',
  ];
  const s = r.requests.by_steering;
  const row = (name: string, steered: number, unsteered: number) => [
    name,
    String(steered),
    String(unsteered),
    String(steered + unsteered),
  ];
  lines.push(
    ...table([
      ['requests', 'steered', 'unsteered', 'total'],
      ...Object.entries(r.requests.by_kind).map(([k, v]) => row(k, v.steered, v.unsteered)),
      row('all', s.inline + s.named, s.none),
    ]),
  );
  lines.push(
    `  (steered: ${s.inline} with an inline vector, ${s.named} with the registered vector; ${r.requests.greedy_probes} greedy probes)`,
    '',
  );
  const lat = (name: string, x: Summary) => [
    name,
    String(x.n),
    ...[x.mean, x.p50, x.p90, x.p99, x.max].map((v) => fmt(v)),
  ];
  lines.push(
    ...table([
      ['latency (ms) of the ok requests', 'n', 'mean', 'p50', 'p90', 'p99', 'max'],
      lat('end-to-end', r.latency_ms.e2e),
      lat('time to first token (streaming)', r.latency_ms.ttft_stream),
    ]),
    `  time to first token (non-streaming): ${r.latency_ms.ttft_non_stream}`,
    ...(r.errors.total ? [`  (the ${r.errors.total} failed requests are left out: see errors)`] : []),
    '',
    ...replayLines(r.replay),
  );
  if (r.errors.total === 0) lines.push('errors: none', '');
  else {
    lines.push(...table([['errors', 'count'], ...Object.entries(r.errors.by_kind).map(([k, n]) => [k, String(n)])]));
    for (const e of r.errors.examples) lines.push(`  #${e.request} ${e.what}: ${e.kind}: ${e.message}`);
    lines.push('');
  }
  lines.push(
    ...table([
      ['server /metrics, change over the run', 'client', 'server', ''],
      ...r.server.comparisons.map((c) => [c.what, String(c.client), String(c.server), c.agree ? 'agree' : 'DIFFER']),
    ]),
    `  server's mean end-to-end latency ${fmt(r.server.mean_ms.e2e)} ms, time to first token ${fmt(r.server.mean_ms.ttft)} ms (engine side, every request)`,
    `  (${r.server.note})`,
  );
  return lines.join('\n');
}
