import { Command, InvalidArgumentError, Option } from 'commander';

/** What a load test does: every option of `npm run loadtest`, with its default. */
export interface LoadTestOptions {
  /** Base URL of the steerd server. Default http://127.0.0.1:8080. */
  url: string;
  /** Allow a URL that is not a loopback address (see `parseOptions`). Default false. */
  allowRemote: boolean;
  /** Closed loop: requests in flight at once, each worker sending its next request when its last one ends. Default 4. */
  concurrency: number;
  /** Open loop: requests started per second whatever the server's pace (replaces `concurrency`). Default none. */
  rate?: number;
  /** Seconds over which the concurrency (or rate) climbs linearly from 1 to its target, at most the duration. Default 0. */
  ramp: number;
  /** Seconds during which new requests start; those in flight then finish. Default 10. */
  duration: number;
  /** Requests at most, whatever the duration. Default 1000. */
  maxRequests: number;
  /**
   * A request's time limit in seconds (then it counts as a `timeout` error), and that of each set-up
   * and tear-down call: GET /v1/model, the vector's registration and deletion, the reads of /metrics.
   * Default 60.
   */
  timeout: number;
  /** `max_new_tokens` (`max_tokens` on /v1/completions) of every request. Default 16. */
  maxNewTokens: number;
  /** Fraction of requests with an intervention. Default 0.5. */
  steeredFraction: number;
  /** Fraction of requests answered by server-sent events. Default 0.5. */
  streamFraction: number;
  /** Fraction of requests drawn from a fixed set of greedy probes, whose answers must repeat exactly. Default 0.25. */
  probeFraction: number;
  /** Register a vector at start (deleted at the end) and steer half the steered requests with it by name. Default true. */
  namedVector: boolean;
  /** Bearer key for /v1/* when the server has API keys. Default none. */
  apiKey?: string;
  /** Also write the report as JSON to this file. Default none. */
  json?: string;
  /**
   * Answers (not the probes') asked for again at the end, non-streaming with the same body and seed,
   * which must come back the same (else the request counts as a `mismatch`); spread over the
   * endpoints, streaming or not, steered or not. 0 (or absent, in a run not made from a command
   * line) for none. Default 16.
   */
  replay?: number;
  /** Seed of the request mix, the vectors and the requests' sampling seeds (prompts also carry an id of the run's own and a random nonce). Default 1. */
  seed: number;
}

function number(check: (n: number) => boolean, expected: string) {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !check(n)) throw new InvalidArgumentError(`expected ${expected}`);
    return n;
  };
}

const positiveInt = number((n) => Number.isInteger(n) && n > 0, 'a positive integer');
const nonNegativeInt = number((n) => Number.isInteger(n) && n >= 0, 'a non-negative integer');
const positive = number((n) => Number.isFinite(n) && n > 0, 'a positive number');
const nonNegative = number((n) => Number.isFinite(n) && n >= 0, 'a non-negative number');
const fraction = number((n) => n >= 0 && n <= 1, 'a fraction between 0 and 1');

/** Loopback hosts: the only targets allowed without --allow-remote. */
export function isLoopback(url: URL): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** Where the command line's help and errors go. */
export interface CliOutput {
  out(text: string): void;
  err(text: string): void;
}

/** The command line of `npm run loadtest`; `parse` throws CommanderError (exitOverride) instead of exiting. */
function loadTestCommand(io: CliOutput): Command {
  return new Command('loadtest')
    .description(
      'Load-test a steerd server: steered and unsteered, streaming and non-streaming generations, each answer checked against its request',
    )
    .option('--url <url>', 'steerd base URL', 'http://127.0.0.1:8080')
    .option('--allow-remote', 'allow a URL that is not a loopback address', false)
    .option('--concurrency <n>', 'closed loop: requests in flight at once', positiveInt, 4)
    .option('--rate <r>', 'open loop: requests started per second (instead of --concurrency)', positive)
    .option('--ramp <s>', 'seconds to climb linearly from 1 to the concurrency or rate', nonNegative, 0)
    .option('--duration <s>', 'seconds during which new requests start', positive, 10)
    .option('--max-requests <n>', 'requests at most', positiveInt, 1000)
    .option(
      '--timeout <s>',
      "a request's time limit in seconds, and that of each set-up and tear-down call (model, vector, /metrics)",
      positive,
      60,
    )
    .option('--max-new-tokens <n>', 'max_new_tokens of each request', positiveInt, 16)
    .option('--steered-fraction <f>', 'fraction of requests with an intervention', fraction, 0.5)
    .option('--stream-fraction <f>', 'fraction of requests streamed (server-sent events)', fraction, 0.5)
    .option(
      '--probe-fraction <f>',
      'fraction of requests from a fixed set of greedy probes whose answers must repeat',
      fraction,
      0.25,
    )
    .option('--no-named-vector', 'do not register a vector (steer with inline vectors only)')
    .addOption(new Option('--api-key <key>', 'bearer key for /v1/*').env('STEERD_API_KEY'))
    .option('--json <file>', 'also write the report as JSON to this file')
    .option(
      '--replay <n>',
      "answers (not the probes') asked for again at the end, non-streaming with the same body, which must be the same",
      nonNegativeInt,
      16,
    )
    .option('--seed <n>', 'seed of the request mix, the vectors and the sampling seeds', nonNegativeInt, 1)
    .configureOutput({ writeOut: (s) => io.out(s.trimEnd()), writeErr: (s) => io.err(s.trimEnd()) })
    .exitOverride();
}

/**
 * Options from a command line (`argv` as process.argv). A URL that is not loopback is refused
 * unless --allow-remote: the load test sends requests as fast as the server answers them, which
 * against a server one does not own is a denial-of-service attack.
 */
export function parseOptions(argv: string[], io: CliOutput): LoadTestOptions {
  const cli = loadTestCommand(io);
  const o = cli.parse(argv).opts<LoadTestOptions>();
  const url = URL.canParse(o.url) ? new URL(o.url) : cli.error(`error: --url ${o.url} is not a URL`);
  if (o.ramp > o.duration) cli.error(`error: --ramp ${o.ramp} is longer than --duration ${o.duration}`);
  if (!/^https?:$/.test(url.protocol)) cli.error(`error: --url ${o.url}: expected http:// or https://`);
  if (!o.allowRemote && !isLoopback(url)) {
    cli.error(
      `error: refusing to load-test ${url.origin}: not a loopback address. The load test sends requests as fast as the server ` +
        'answers them, which against a server you do not run is a denial-of-service attack; pass --allow-remote if it is yours.',
    );
  }
  return { ...o, url: url.origin + url.pathname.replace(/\/+$/, '') };
}
