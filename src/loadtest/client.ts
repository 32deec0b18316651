import { readSse } from './sse.js';
import type { Planned } from './workload.js';

/** An event stream that broke off: an `error` event, or an end before the final event. */
export class StreamError extends Error {}

/** The steerd API at a base URL, with its bearer key. */
export class Api {
  constructor(
    private readonly base: string,
    private readonly apiKey: string | undefined,
    /** Time limit of each `json` and `metrics` call (set-up and tear-down), ms. */
    private readonly callTimeoutMs: number,
  ) {}

  fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers: Record<string, string> = { ...(init.body ? { 'content-type': 'application/json' } : {}) };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    return fetch(`${this.base}${path}`, { ...init, headers });
  }

  /** A JSON call (undefined for 204). */
  json<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.call(method, path, body, async (res) => (res.status === 204 ? undefined : await res.json()) as T);
  }

  /** GET /metrics, Prometheus text. */
  metrics(): Promise<string> {
    return this.call('GET', '/metrics', undefined, (res) => res.text());
  }

  /**
   * A call that must succeed, its response read by `read`: a status other than 2xx throws, with the
   * server's message, and so does no whole answer within the time limit.
   */
  private async call<T>(method: string, path: string, body: unknown, read: (res: Response) => Promise<T>): Promise<T> {
    const signal = AbortSignal.timeout(this.callTimeoutMs);
    try {
      const res = await this.fetch(path, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await errorMessage(res)}`);
      return await read(res);
    } catch (e) {
      if ((e as Error).name === 'TimeoutError')
        throw new Error(`${method} ${path}: no answer within ${this.callTimeoutMs / 1000} s (--timeout)`);
      throw e;
    }
  }
}

/** `code: message` of steerd's error body, or the start of whatever else came. */
export async function errorMessage(res: Response): Promise<string> {
  const text = await res.text();
  try {
    const { error } = JSON.parse(text) as { error: { code: string; message: string } };
    return `${error.code}: ${error.message}`;
  } catch {
    return text.slice(0, 200);
  }
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

/** An intervention as /v1/generate echoes it. */
interface Applied {
  vector: string | null;
  hash: string;
  layer: number;
  coeff: number;
}

/** What every endpoint answers, from its JSON body or its event stream; the optional fields only /v1/generate gives. */
export interface Answer {
  /** Response ids seen (a stream's every chunk carries one): exactly one when nothing is mixed up. */
  ids: string[];
  text: string;
  finishReason: string;
  usage: Usage;
  /** Streamed only: time to the first token event or text chunk, ms after the request was sent. */
  ttftMs?: number;
  /** Ids of the tokens listed (`tokens`) or streamed (`token` events). */
  tokenIds?: number[];
  /** The streamed `token` and `text` pieces, joined: the final text, when nothing is lost. */
  streamedText?: string;
  seed?: number;
  interventions?: Applied[];
}

interface GenerateBody {
  id: string;
  text: string;
  finish_reason: string;
  usage: Usage;
  seed: number;
  interventions: Applied[];
  tokens?: { id: number; text: string }[];
}

interface CompletionBody {
  id: string;
  choices: { text: string; finish_reason: string | null }[];
  usage?: Usage;
}

const fromGenerate = (b: GenerateBody): Answer => ({
  ids: [b.id],
  text: b.text,
  finishReason: b.finish_reason,
  usage: b.usage,
  seed: b.seed,
  interventions: b.interventions,
});

/** The events of /v1/generate with `stream: true`: `token` and `text` pieces, then `done` (or `error`). */
async function readGenerateStream(res: Response, sentAt: number): Promise<Answer> {
  const pieces: string[] = [];
  const tokenIds: number[] = [];
  let ttftMs: number | undefined;
  for await (const e of readSse(res.body!)) {
    const data = JSON.parse(e.data);
    if (e.event === 'token') {
      ttftMs ??= performance.now() - sentAt;
      tokenIds.push(data.id);
      pieces.push(data.text);
    } else if (e.event === 'text') {
      pieces.push(data.text);
    } else if (e.event === 'done') {
      return { ...fromGenerate(data as GenerateBody), ttftMs, tokenIds, streamedText: pieces.join('') };
    } else if (e.event === 'error') {
      throw new StreamError(`${data.error.code}: ${data.error.message}`);
    }
  }
  throw new StreamError('the stream ended without a done event');
}

/** The chunks of /v1/completions with `stream: true`: text deltas, a last chunk with the usage, then `[DONE]`. */
async function readCompletionStream(res: Response, sentAt: number): Promise<Answer> {
  const ids = new Set<string>();
  const pieces: string[] = [];
  let ttftMs: number | undefined;
  let last: CompletionBody | undefined;
  for await (const e of readSse(res.body!)) {
    if (e.event === 'error') {
      const { error } = JSON.parse(e.data);
      throw new StreamError(`${error.code}: ${error.message}`);
    }
    if (e.data === '[DONE]') {
      if (!last?.usage) throw new StreamError('[DONE] came before a chunk with the usage');
      return {
        ids: [...ids],
        text: pieces.join(''),
        finishReason: last.choices[0].finish_reason!,
        usage: last.usage,
        ttftMs,
      };
    }
    last = JSON.parse(e.data) as CompletionBody;
    ids.add(last.id);
    if (last.choices[0].text) {
      ttftMs ??= performance.now() - sentAt;
      pieces.push(last.choices[0].text);
    }
  }
  throw new StreamError('the stream ended without [DONE]');
}

/** Reads a successful response, whichever endpoint and form it has. */
export async function readAnswer(plan: Planned, res: Response, sentAt: number): Promise<Answer> {
  if (plan.endpoint === '/v1/generate') {
    if (plan.stream) return readGenerateStream(res, sentAt);
    const body = (await res.json()) as GenerateBody;
    return { ...fromGenerate(body), tokenIds: body.tokens?.map((t) => t.id) };
  }
  if (plan.stream) return readCompletionStream(res, sentAt);
  const body = (await res.json()) as CompletionBody;
  return {
    ids: [body.id],
    text: body.choices[0].text,
    finishReason: body.choices[0].finish_reason!,
    usage: body.usage!,
  };
}
