import * as crypto from 'node:crypto';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { connect, type Socket } from 'node:net';
import t, { type Test } from 'tap';
import type { Service } from '../src/api/service.ts';
import { buildApp } from '../src/app.ts';
import { type Config, hostAllowlist, loadConfig } from '../src/config.ts';
import type { ModelInfo } from '../src/engine/types.ts';
import { validateGenerate } from '../src/engine/validate.ts';
import { modelFreeService } from '../src/spec.ts';
import { post } from './helpers/api.ts';

// Slow clients, parser errors, error messages, security headers, the Host allowlist and the API
// key check. None of it needs a model: an app around a stand-in service whose routes never reach an
// engine (schema errors, hooks, the vector list).

const defaults = loadConfig({});

/** An app around a stand-in service (a vector store that lists `[]` after `listDelayMs`). */
async function standIn(change: (c: Config) => Config = (c) => c, listDelayMs = 0) {
  const svc = modelFreeService({
    config: change({ ...defaults, logLevel: 'silent' }),
    engine: { ready: true, info: { n_embd: 4, n_layer: 2, hook_sites: ['resid_pre'] } } as unknown as Service['engine'],
    store: { list: () => new Promise((r) => setTimeout(() => r([]), listDelayMs)) } as unknown as Service['store'],
  });
  return buildApp(svc, { logger: false });
}

/** The documented error shape, and its code. */
function errorShape(t: Test, body: unknown, code: string, what: string) {
  t.match(body, { error: { code, message: String } }, `${what}: {"error": {code, message}}`);
  t.same(Object.keys(body as object), ['error'], `${what}: nothing else`);
}

interface Stalled {
  /** Everything the server sent. */
  response: string;
  /** When the server closed the connection, ms after it opened (Infinity: still open at `giveUpMs`). */
  closedAfterMs: number;
}

/**
 * A raw connection that `behave` drives (writing on a timer, or not at all): what came back, and
 * when the server closed it.
 */
function rawClient(port: number, behave: (s: Socket) => () => void, giveUpMs = 5000): Promise<Stalled> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    const t0 = Date.now();
    let response = '';
    let stop = () => {};
    s.on('connect', () => {
      stop = behave(s);
    });
    s.on('data', (d) => {
      response += d.toString('latin1');
    });
    s.on('error', () => {}); // writes racing the server's close
    const giveUp = setTimeout(() => {
      stop();
      s.destroy();
      resolve({ response, closedAfterMs: Number.POSITIVE_INFINITY });
    }, giveUpMs);
    s.on('close', () => {
      clearTimeout(giveUp);
      stop();
      resolve({ response, closedAfterMs: Date.now() - t0 });
    });
  });
}

/** Writes `next()` every `ms` until stopped (or until `next` returns undefined). */
const every = (ms: number, next: () => string | undefined) => (s: Socket) => {
  const timer = setInterval(() => {
    const piece = next();
    if (piece === undefined) clearInterval(timer);
    else if (s.writable) s.write(piece);
  }, ms);
  return () => clearInterval(timer);
};

/** Status and JSON body of a raw HTTP/1.1 response. */
function parseResponse(raw: string) {
  const [head, ...rest] = raw.split('\r\n\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
  let body: unknown;
  try {
    body = JSON.parse(rest.join('\r\n\r\n'));
  } catch {
    body = rest.join('\r\n\r\n');
  }
  return { status, head, body };
}

t.test('slow clients are dropped with 408; a slow response is not cut', async (t) => {
  const limits = { headersTimeoutMs: 250, bodyTimeoutMs: 600, keepAliveTimeoutMs: 200 };
  const app = await standIn((c) => ({ ...c, limits: { ...c.limits, ...limits } }), 900);
  t.teardown(() => app.close());
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  const head = 'POST /v1/vectors HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n';
  let line = 0;
  let byte = 0;
  const body = JSON.stringify({ name: 'slow', values: Array(200).fill(0.5) });

  const [silent, headerLines, noBody, byteByByte, chunked, idle, slowAnswer] = await Promise.all([
    // connects and sends nothing
    rawClient(port, () => () => {}),
    // a header line every 100 ms, never the blank line
    rawClient(
      port,
      every(100, () => (line++ === 0 ? 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n' : `X-Slow-${line}: 1\r\n`)),
    ),
    // Content-Length: 1000 and no body
    rawClient(port, (s) => {
      s.write(`${head}Content-Length: 1000\r\n\r\n`);
      return () => {};
    }),
    // the body one byte every 50 ms
    rawClient(port, (s) => {
      s.write(`${head}Content-Length: ${body.length}\r\n\r\n`);
      return every(50, () => body[byte++])(s);
    }),
    // a chunked body that never ends
    rawClient(port, (s) => {
      s.write(`${head}Transfer-Encoding: chunked\r\n\r\n`);
      return every(50, () => '1\r\n \r\n')(s);
    }),
    // a complete request, then nothing on the kept-alive connection
    rawClient(port, (s) => {
      s.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
      return () => {};
    }),
    // a request received at once whose answer takes longer than the body timeout
    rawClient(port, (s) => {
      s.write('GET /v1/vectors HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      return () => {};
    }),
  ]);
  // Node checks for expired requests every quarter of the shortest timeout (63 ms here)
  const slack = 1000; // a loaded machine
  for (const [what, got, due] of [
    ['a connection that sends nothing', silent, limits.headersTimeoutMs],
    ['a header line every 100 ms', headerLines, limits.headersTimeoutMs],
    ['Content-Length with no body', noBody, limits.bodyTimeoutMs],
    ['a body a byte at a time', byteByByte, limits.bodyTimeoutMs],
    ['an endless chunked body', chunked, limits.bodyTimeoutMs],
  ] as const) {
    t.ok(
      got.closedAfterMs >= due - 50 && got.closedAfterMs < due + slack,
      `${what}: closed after ${got.closedAfterMs} ms (due at ${due})`,
    );
    const r = parseResponse(got.response);
    t.equal(r.status, 408, `${what}: 408`);
    errorShape(t, r.body, 'request_timeout', what);
    t.match(r.head, /connection: close/i);
  }
  t.match(parseResponse(headerLines.response).body, { error: { message: /headers are due within 250 ms/ } });
  t.match(parseResponse(idle.response).status, 200, 'the kept-alive request was answered');
  // Node keeps the socket a second longer than the Keep-Alive header says (clients close first)
  const idleDue = limits.keepAliveTimeoutMs + 1000;
  t.ok(
    idle.closedAfterMs >= limits.keepAliveTimeoutMs && idle.closedAfterMs < idleDue + slack,
    `an idle kept-alive connection: closed after ${idle.closedAfterMs} ms (due at ${idleDue})`,
  );
  const answer = parseResponse(slowAnswer.response);
  t.equal(answer.status, 200, 'the slow answer arrives');
  t.same(answer.body, { data: [] });
  t.ok(slowAnswer.closedAfterMs >= 900, `after ${slowAnswer.closedAfterMs} ms, past the body timeout`);
});

t.test("Node's parser errors come back in the documented shape, with their status", async (t) => {
  const app = await standIn();
  t.teardown(() => app.close());
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  const send = (raw: string) =>
    rawClient(port, (s) => {
      s.write(raw);
      return () => {};
    }).then((r) => parseResponse(r.response));
  const post = 'POST /v1/vectors HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n';
  const [chunk, both, header, url, longUrl, noHost] = await Promise.all([
    send(`${post}Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`),
    send(`${post}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`),
    send(`GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`),
    send(`GET /healthz?q=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: localhost\r\n\r\n`),
    send(`GET /healthz?q=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: localhost\r\n\r\n`),
    send('GET /healthz HTTP/1.1\r\n\r\n'),
  ]);
  t.equal(chunk.status, 400, 'a bad chunk size: 400');
  errorShape(t, chunk.body, 'invalid_request', 'a bad chunk size');
  t.match(chunk.body, { error: { message: /chunk size/i } }, 'named');
  t.equal(both.status, 400, 'Content-Length with Transfer-Encoding: 400');
  errorShape(t, both.body, 'invalid_request', 'Content-Length with Transfer-Encoding');
  t.match(both.body, { error: { message: /content-length/i } }, 'named');
  t.equal(header.status, 431, 'a 20 KB header: 431');
  errorShape(t, header.body, 'headers_too_large', 'a 20 KB header');
  for (const [r, what] of [
    [url, 'a 20 KB URL in one write'],
    [longUrl, 'a 100 KB URL'],
  ] as const) {
    t.equal(r.status, 431, `${what}: 431`);
    errorShape(t, r.body, 'headers_too_large', what);
    t.match(r.body, { error: { message: /a long URL counts/ } });
  }
  t.equal(noHost.status, 400, 'HTTP/1.1 without Host: 400');
  errorShape(t, noHost.body, 'invalid_request', 'HTTP/1.1 without Host');
  t.match(noHost.body, { error: { message: /Host header/ } });

  const bad = await app.inject('/v1/vectors/%zz');
  t.equal(bad.statusCode, 400, 'a URL the router cannot decode');
  errorShape(t, bad.json(), 'invalid_request', 'a URL the router cannot decode');
  t.equal(bad.headers['x-content-type-options'], 'nosniff', 'with the security headers, though no hook ran');
  t.match(String(bad.headers['content-security-policy']), /default-src 'self'/);
});

t.test('schema errors name the property and the reason', async (t) => {
  const app = await standIn();
  t.teardown(() => app.close());
  const message = async (url: string, body: unknown) => {
    const r = await post(app, url, body);
    t.equal(r.statusCode, 400, `${JSON.stringify(body).slice(0, 60)}: 400`);
    return r.json().error.message as string;
  };
  t.match(
    await message('/v1/generate', { prompt: 'x', max_tokens: 5 }),
    /^body has an unknown property "max_tokens" \(known: model, prompt, max_new_tokens,/,
  );
  t.match(
    await message('/v1/generate', { prompt: 'x', interventions: [{ vector: { values: [1], scale: 2 }, layer: 0 }] }),
    /^body\/interventions\/0\/vector has an unknown property "scale"/,
    'inside a union: the alternative of the right type',
  );
  // unions: the alternative the value was meant for
  t.equal(
    await message('/v1/completions', { model: 'm', prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }),
    'body/stop must NOT have more than 4 items',
    'five stop strings: the list is too long, not "must be string"',
  );
  t.equal(
    await message('/v1/generate', { prompt: 'x', stop: ['a', ''] }),
    'body/stop/1 must NOT have fewer than 1 characters',
  );
  t.equal(await message('/v1/generate', { prompt: 'x', stop: 5 }), 'body/stop must be a string or an array');
  t.equal(
    await message('/v1/completions', { model: 'm', prompt: ['a', 'b', 7] }),
    'body/prompt/2 must be string',
    'the element that is wrong',
  );
  t.equal(
    await message('/v1/generate', {
      prompt: 'x',
      interventions: [
        {
          vector: {
            values: [
              [1, 2],
              [3, 'x'],
            ],
          },
          layer: 0,
        },
      ],
    }),
    'body/interventions/0/vector/values/1/1 must be number',
    'a sequence: the element that is wrong',
  );
  t.equal(
    await message('/v1/vectors', { name: 'v', values: [1, 2], recipe: { kind: 'diff', positive: 'a', negative: 'b' } }),
    'body takes one of "values" or "recipe", not several',
  );
  t.equal(await message('/v1/vectors', { name: 'v' }), 'body must have "values" or "recipe"');
  for (const vector of [{}, { valus: [1] }, { name: 'v' }])
    t.match(
      await message('/v1/generate', { prompt: 'x', interventions: [{ vector, layer: 0 }] }),
      /^body\/interventions\/0\/vector must be a string or an object with "values"/,
      `vector ${JSON.stringify(vector)}: both forms said`,
    );
  t.match(
    await message('/v1/generate', { prompt: 'x', interventions: [{ vector: 'v', layer: 0, op: 'scale' }] }),
    /^body\/interventions\/0\/op must be one of "add", "ablate", "clamp"$/,
  );

  // JSON sent as text/plain: 415 naming the type, not a schema error about a string
  const plain = await app.inject({
    method: 'POST',
    url: '/v1/generate',
    headers: { 'content-type': 'text/plain' },
    payload: JSON.stringify({ prompt: 'x' }),
  });
  t.equal(plain.statusCode, 415);
  errorShape(t, plain.json(), 'unsupported_media_type', 'text/plain');
  t.match(plain.json().error.message, /application\/json \(got content-type text\/plain\)/);
});

t.test('a seed outside the exact integers says the range', async (t) => {
  // what the engine (and the queue in front of workers) checks every run with, routes and replays alike
  const info = { vocab_size: 50, n_positions: 1024, hook_sites: ['resid_pre'] } as unknown as ModelInfo;
  for (const seed of [2 ** 53, -(2 ** 53), 1.5])
    t.throws(
      () => validateGenerate({ prompt: [1], seed }, info),
      { status: 400, message: /^seed must be an integer in \[-\(2\^53 - 1\), 2\^53 - 1\].*\(got / },
      `seed ${seed}`,
    );
  for (const seed of [2 ** 53 - 1, -(2 ** 53 - 1), 0])
    t.doesNotThrow(() => validateGenerate({ prompt: [1], seed }, info));
});

t.test('security headers on the playground, the docs and the API', async (t) => {
  const app = await standIn();
  t.teardown(() => app.close());
  for (const url of ['/', '/app.js', '/docs', '/docs/', '/docs/static/index.html', '/v1/vectors', '/nowhere']) {
    const r = await app.inject(url);
    const csp = String(r.headers['content-security-policy']);
    t.match(csp, /(^|; )default-src 'self'(;|$)/, `${url} (${r.statusCode}): CSP, own origin only`);
    for (const directive of ['script-src', 'style-src', 'connect-src', 'img-src'])
      t.match(csp, new RegExp(`(^|; )${directive} 'self'( data:)?(;|$)`), `${url}: ${directive} 'self'`);
    t.notMatch(csp, /unsafe-inline|unsafe-eval|https?:|\*/, `${url}: no inline code, no other origin`);
    t.match(csp, /frame-ancestors 'none'/);
    t.equal(r.headers['x-frame-options'], 'DENY');
    t.equal(r.headers['x-content-type-options'], 'nosniff');
  }
  // the docs page loads no inline script or style (the CSP would block them)
  const docsPage = await app.inject('/docs/');
  t.equal(docsPage.statusCode, 200);
  t.match(docsPage.body, /<script[^>]*\bsrc=/i, 'the docs page, with its scripts');
  t.notMatch(docsPage.body, /<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=/i, 'the docs page has no inline code');
  const page = (await app.inject('/')).body;
  t.notMatch(page, /<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=/i, 'the playground has no inline code');
});

t.test('the Host allowlist: loopback names by default on a loopback address', async (t) => {
  t.same([...hostAllowlist(defaults)!].sort(), ['127.0.0.1', '[::1]', 'localhost']);
  t.equal(hostAllowlist({ host: '0.0.0.0' }), undefined, 'any on all interfaces');
  t.same([...hostAllowlist({ host: '127.0.0.2' })!].sort(), ['127.0.0.1', '127.0.0.2', '[::1]', 'localhost']);
  t.same([...hostAllowlist({ host: '::1' })!].sort(), ['127.0.0.1', '[::1]', 'localhost']);
  t.same(loadConfig({ STEERD_ALLOWED_HOSTS: 'steerd.lan, Box.Local' }).allowedHosts, ['steerd.lan', 'Box.Local']);
  t.equal(hostAllowlist(loadConfig({ STEERD_ALLOWED_HOSTS: '*' })), undefined, '* allows any');

  const get = (app: Awaited<ReturnType<typeof standIn>>, host: string) =>
    app.inject({ url: '/healthz', headers: { host } });
  const local = await standIn();
  t.teardown(() => local.close());
  for (const host of ['localhost', 'localhost:8080', 'LOCALHOST:80', '127.0.0.1:9', '[::1]:8080', 'localhost.'])
    t.equal((await get(local, host)).statusCode, 200, `${host}: allowed`);
  for (const host of ['evil.example', 'evil.example:8080', 'localhost.evil.example', '127.0.0.1.nip.io']) {
    const r = await get(local, host);
    t.equal(r.statusCode, 403, `${host}: refused`);
    errorShape(t, r.json(), 'host_not_allowed', host);
    t.equal(r.headers['x-content-type-options'], 'nosniff');
  }
  const refusal = (await get(local, 'evil.example')).json().error.message;
  t.match(refusal, /"evil\.example".*STEERD_ALLOWED_HOSTS/);
  t.notMatch(refusal, /localhost|127\.0\.0\.1/, 'the allowed names are not told to whoever asks');
  t.equal((await local.inject({ url: '/v1/vectors', headers: { host: 'evil.example' } })).statusCode, 403, '/v1 too');

  const named = await standIn((c) => ({ ...c, allowedHosts: ['steerd.lan'] }));
  t.teardown(() => named.close());
  t.equal((await get(named, 'steerd.lan:8080')).statusCode, 200, 'a configured name');
  t.equal((await get(named, 'localhost')).statusCode, 403, 'only the configured names');
  // a rebinding page has a name, never an address: health checks and scrapes by address pass
  for (const host of ['127.0.0.1:8080', '10.1.2.3:8080', '[::1]:8080', '[fd00::5]'])
    t.equal((await get(named, host)).statusCode, 200, `${host}: an address, allowed`);
  t.throws(() => hostAllowlist(loadConfig({ STEERD_ALLOWED_HOSTS: ' , ' })), {
    status: 500,
    message: /names no host/,
  });
  const open = await standIn((c) => ({ ...c, host: '0.0.0.0' }));
  t.teardown(() => open.close());
  t.equal((await get(open, 'anything.example')).statusCode, 200, 'listening on all interfaces: any');
});

t.test('API keys: the bearer scheme in any case; the comparison the same whatever the length', async (t) => {
  const keys = ['k1', 'a-much-longer-second-key'];
  const app = await standIn((c) => ({ ...c, apiKeys: keys }));
  t.teardown(() => app.close());
  const status = async (authorization: string) =>
    (await app.inject({ url: '/v1/vectors', headers: { authorization } })).statusCode;
  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'beaRer']) t.equal(await status(`${scheme} k1`), 200, scheme);
  t.equal(await status('Bearer  a-much-longer-second-key '), 200, 'spaces around the key');
  t.equal(await status('Basic k1'), 401, 'another scheme');
  t.equal(await status('Bearerk1'), 401, 'no space');

  // timingSafeEqual watched (node:crypto's ESM bindings re-synced), restored at the end
  const cjs = createRequire(import.meta.url)('node:crypto') as typeof crypto;
  const real = cjs.timingSafeEqual;
  const compared: number[][] = [];
  cjs.timingSafeEqual = (a, b) => {
    compared.push([a.byteLength, b.byteLength]);
    return real(a, b);
  };
  syncBuiltinESMExports();
  t.teardown(() => {
    cjs.timingSafeEqual = real;
    syncBuiltinESMExports();
  });
  t.equal(crypto.timingSafeEqual, cjs.timingSafeEqual, 'watched');
  for (const given of ['x', 'k2', 'k1', 'a-much-longer-second-kez', 'y'.repeat(1000)]) {
    compared.length = 0;
    await status(`Bearer ${given}`);
    t.same(
      compared,
      [
        [32, 32],
        [32, 32],
      ],
      `"${given.slice(0, 30)}": compared with every key, as digests of one length`,
    );
  }
});
