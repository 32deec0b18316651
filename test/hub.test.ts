import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs, {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { DownloadError } from '../src/errors.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { lookupRevision } from '../src/model/hf-cache.ts';
import { type ProgressReporter, pull } from '../src/model/hub.ts';

const root = mkdtempSync(join(tmpdir(), 'steerd-hub-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
// Every pull here names its cache; the environment's must never be the default (nor ~/.cache).
process.env.HF_HUB_CACHE = join(root, 'env-hub-cache');
delete process.env.HF_HOME;
delete process.env.HF_HUB_OFFLINE;

// ---------------------------------------------------------------------------------------------
// The checkpoint the fake hub serves.

const source = join(root, 'source');
writeTinyCheckpoint(source, { layers: 1, embd: 32, heads: 2, ctx: 16 });
const FILES = ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt'];
const bytes = new Map(FILES.map((f) => [f, readFileSync(join(source, f))]));
const model = bytes.get('model.safetensors')!;
const COMMIT = createHash('sha1').update('steerd hub test commit').digest('hex');
const REPO = 'openai-community/gpt2';
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitBlobId = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
/** A file's blob name in the hub cache: the SHA-256 of an LFS file, else the git blob id. */
const etag = (file: string) => (file === 'model.safetensors' ? sha256(bytes.get(file)!) : gitBlobId(bytes.get(file)!));

function sibling(file: string, b: Buffer = bytes.get(file)!) {
  if (file === 'model.safetensors') {
    return {
      rfilename: file,
      size: b.length,
      blobId: gitBlobId(Buffer.from('lfs pointer')),
      lfs: { sha256: sha256(b), size: b.length },
    };
  }
  return { rfilename: file, size: b.length, blobId: gitBlobId(b) };
}

/** Repositories the hub knows, with the files their revision lists. */
const repos = new Map<string, string[]>([
  [REPO, [...FILES, 'README.md']],
  ['acme/no-merges', ['config.json', 'model.safetensors', 'vocab.json']],
]);

// ---------------------------------------------------------------------------------------------
// The fake hub.

/**
 * interrupt: the first request for model.safetensors gets half its body, then, once the client has
 * written all of it to the .part (`watchPart`), a dropped connection, so the cut point is exact;
 * interrupt-always: every such request does; interrupt-abrupt: the first is dropped while the
 * client's disk is slow (`slowDisk`), so that a write to the .part is still in flight, and the
 * retry is answered only after that write has landed;
 * short: the first is sent chunked (no Content-Length) and ends cleanly after half;
 * corrupt: bytes flipped; ignore-range: 200 and the whole body whatever Range asks;
 * deny: every file request answered 401; silent: the revision's file list never answered.
 */
type Mode =
  | 'normal'
  | 'interrupt'
  | 'interrupt-always'
  | 'interrupt-abrupt'
  | 'short'
  | 'corrupt'
  | 'ignore-range'
  | 'deny'
  | 'silent';
interface Seen {
  path: string;
  range?: string;
  /** Size on disk of `watchPart` when the request arrived (the client is waiting on it, so it is still). */
  partSize?: number;
}
let mode: Mode = 'normal';
/** While set, main has moved to this commit, whose files are these (the others as at COMMIT). */
let moved: { commit: string; files: Map<string, Buffer> } | undefined;
let requests: Seen[] = [];
/** Bytes of model.safetensors (absolute offsets) sent before each cut connection. */
let cuts: number[] = [];
/** A .part file whose size each request records. */
let watchPart: string | undefined;
/** While set, fs.write and fs.writev (what file streams call) start their I/O 40 ms late. */
let slowDisk = false;
/** Requests the `silent` hub holds (ended by reset). */
const unanswered: ServerResponse[] = [];

function reset(m: Mode = 'normal') {
  mode = m;
  moved = undefined;
  requests = [];
  cuts = [];
  watchPart = undefined;
  slowDisk = false;
  for (const res of unanswered.splice(0)) res.destroy();
}

/** Calls `then` once `watchPart` holds `size` bytes (the client has written all it got), or after 3 s. */
function whenOnDisk(size: number, res: ServerResponse, then: () => void) {
  const since = Date.now();
  const poll = setInterval(() => {
    const onDisk = watchPart && existsSync(watchPart) ? statSync(watchPart).size : -1;
    if (onDisk < size && Date.now() - since < 3000) return;
    clearInterval(poll);
    then();
  }, 2);
  res.on('close', () => clearInterval(poll));
}

function corrupted(b: Buffer): Buffer {
  const c = Buffer.from(b);
  for (const i of [9, Math.floor(c.length / 2), c.length - 1]) c[i] ^= 0xff;
  return c;
}

const server: Server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  const partSize = watchPart && existsSync(watchPart) ? statSync(watchPart).size : undefined;
  requests.push({ path: url.pathname + url.search, range: req.headers.range, partSize });
  const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  if (api && mode === 'silent') {
    unanswered.push(res);
    return;
  }
  if (api) {
    const files = repos.get(api[1]);
    const known = [COMMIT, ...(moved ? [moved.commit] : [])];
    if (!files || (api[2] !== 'main' && !known.includes(api[2])) || url.searchParams.get('blobs') !== 'true') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"Repository not found"}');
      return;
    }
    const head = api[2] === 'main' ? moved : moved?.commit === api[2] ? moved : undefined;
    const siblings = files.map((f) =>
      bytes.has(f)
        ? sibling(f, head?.files.get(f))
        : { rfilename: f, size: 10, blobId: gitBlobId(Buffer.from('# readme\n')) },
    );
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ id: api[1], sha: head?.commit ?? COMMIT, siblings }));
    return;
  }
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  const files = resolve && repos.get(resolve[1]);
  const at = resolve?.[2] === moved?.commit ? moved : undefined;
  if (!resolve || !files || (resolve[2] !== COMMIT && !at) || !files.includes(resolve[3]) || !bytes.has(resolve[3])) {
    res.writeHead(404).end('Entry not found');
    return;
  }
  const file = resolve[3];
  if (mode === 'deny') {
    res.writeHead(401).end('Unauthorized');
    return;
  }
  let body: Buffer = at?.files.get(file) ?? bytes.get(file)!;
  if (mode === 'corrupt' && file === 'model.safetensors') body = corrupted(body);
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  let start = 0;
  if (range && mode !== 'ignore-range') {
    start = Number(range[1]);
    if (start >= body.length) {
      res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      return;
    }
  }
  const slice = body.subarray(start);
  if (mode === 'short' && file === 'model.safetensors' && cuts.length === 0) {
    const half = Math.floor(slice.length / 2);
    cuts.push(start + half);
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(slice.subarray(0, half));
    return;
  }
  const headers = {
    'content-type': 'application/octet-stream',
    'content-length': String(slice.length),
    'accept-ranges': 'bytes',
  };
  if (start > 0)
    res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` });
  else res.writeHead(200, headers);
  if (mode === 'interrupt-abrupt' && file === 'model.safetensors' && cuts.length > 0) {
    // the retry: answered once the write that was in flight at the cut has landed
    slowDisk = false;
    setTimeout(() => res.end(slice), 100);
    return;
  }
  const cut =
    file === 'model.safetensors' &&
    (mode === 'interrupt-always' || ((mode === 'interrupt' || mode === 'interrupt-abrupt') && cuts.length === 0));
  if (cut) {
    const half = Math.floor(slice.length / 2);
    if (mode === 'interrupt-abrupt') {
      // Most of the half at full speed, until the client has it on disk (watchPart); then the
      // disk turns slow, the last 64 KiB follow, and the connection drops while the client is
      // still writing them.
      const fast = Math.max(0, half - 65536);
      res.write(slice.subarray(0, fast));
      whenOnDisk(start + fast, res, () => {
        slowDisk = true;
        res.write(slice.subarray(fast, half), () => {
          cuts.push(start + half);
          setTimeout(() => res.socket?.destroy(), 5);
        });
      });
      return;
    }
    res.write(slice.subarray(0, half));
    whenOnDisk(start + half, res, () => {
      cuts.push(start + half);
      res.socket?.destroy();
    });
    return;
  }
  res.end(slice);
});

await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
t.teardown(() => new Promise<void>((r) => server.close(() => r())));
const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

// ---------------------------------------------------------------------------------------------
// Helpers.

let cacheCount = 0;
const newCache = () => {
  const dir = join(root, `cache-${++cacheCount}`);
  mkdirSync(dir);
  return dir;
};
const repoDir = (cache: string) => join(cache, 'models--openai-community--gpt2');
const expectedDir = (cache: string) => join(repoDir(cache), 'snapshots', COMMIT);
const blobOf = (cache: string, file: string) => join(repoDir(cache), 'blobs', etag(file));
const partOf = (cache: string) => `${blobOf(cache, 'model.safetensors')}.incomplete`;

interface Recorded extends ProgressReporter {
  logs: string[];
  starts: { file: string; total: number; already: number }[];
  advanced: Map<string, number>;
}
function recorder(): Recorded {
  let current = '';
  const r: Recorded = {
    logs: [],
    starts: [],
    advanced: new Map(),
    start(file, total, already) {
      current = file;
      r.starts.push({ file, total, already });
    },
    advance(n) {
      r.advanced.set(current, (r.advanced.get(current) ?? 0) + n);
    },
    stop() {},
    log(m) {
      r.logs.push(m);
    },
  };
  return r;
}

const resolveRequests = (file?: string) =>
  requests.filter((q) => q.path.includes('/resolve/') && (!file || q.path.endsWith(`/${file}`)));

/** A tap subtest (the last overload of t.test takes only the callback). */
type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

/** The snapshot holds every file, each a relative symlink to its blob, as huggingface_hub writes them. */
function assertIdentical(tt: TapTest, dir: string) {
  for (const f of FILES) {
    tt.ok(readFileSync(join(dir, f)).equals(bytes.get(f)!), `${f} is byte-identical to the source`);
    tt.ok(lstatSync(join(dir, f)).isSymbolicLink(), `${f} is a symlink`);
    tt.equal(readlinkSync(join(dir, f)), join('..', '..', 'blobs', etag(f)), `${f} -> ../../blobs/<its id>`);
  }
  const leftovers = readdirSync(join(dir, '..', '..', 'blobs')).filter((f) => f.endsWith('.incomplete'));
  tt.same(leftovers, [], 'no .incomplete file is left');
}

/** The rejection of a promise that must reject (undefined if it resolved). */
const caught = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

// ---------------------------------------------------------------------------------------------

t.test('a cached main that moved: only the files the new commit changed are downloaded', async (t) => {
  reset();
  const cache = newCache();
  const dir = await pull('gpt2', { endpoint, cache });
  const NEXT = createHash('sha1').update('steerd hub test commit, next').digest('hex');
  const config = Buffer.from(
    JSON.stringify({ ...JSON.parse(bytes.get('config.json')!.toString('utf8')), steerd_note: 'moved' }),
  );
  reset();
  moved = { commit: NEXT, files: new Map([['config.json', config]]) };
  const progress = recorder();
  const next = await pull('gpt2', { endpoint, cache, progress });
  t.equal(next, join(repoDir(cache), 'snapshots', NEXT), "the new commit's snapshot");
  t.same(
    requests.map((q) => q.path),
    [`/api/models/${REPO}/revision/main?blobs=true`, `/${REPO}/resolve/${NEXT}/config.json`],
    'where main is, then the one changed file',
  );
  t.same(readFileSync(join(next, 'config.json')), config, 'the new config');
  t.same(readFileSync(join(next, 'model.safetensors')), model, 'the unchanged weights, linked from their blob');
  t.equal(readFileSync(join(repoDir(cache), 'refs', 'main'), 'utf8'), NEXT, 'refs/main moved');
  t.ok(existsSync(join(dir, 'config.json')), 'the old snapshot is left as it was');
  t.match(progress.logs.join('\n'), /gpt2@main moved from [0-9a-f]{12} to [0-9a-f]{12}/);

  // the hub away: the snapshot as cached, at once; offline: not even asked
  reset();
  const away = recorder();
  t.equal(await pull('gpt2', { endpoint: 'http://127.0.0.1:9', cache, progress: away }), next, 'the hub away');
  t.match(away.logs.at(-1), /the hub did not answer.*served as cached/);
  reset();
  t.equal(await pull('gpt2', { endpoint, cache, offline: true }), next);
  t.same(requests, [], 'offline: no request');
});

t.test(
  'a cached main that moved but whose new files cannot be had: the cached snapshot, refs/main as it was',
  async (t) => {
    reset();
    const cache = newCache();
    const dir = await pull('gpt2', { endpoint, cache });
    const ref = join(repoDir(cache), 'refs', 'main');
    const NEXT = createHash('sha1').update('steerd hub test commit, unreachable').digest('hex');
    const weights = Buffer.from(model);
    weights[weights.length - 1] ^= 1;
    for (const [how, m] of [
      ['a refused download (401)', 'deny'],
      ['a connection that keeps dropping', 'interrupt-always'],
    ] as const) {
      reset(m);
      moved = { commit: NEXT, files: new Map([['model.safetensors', weights]]) };
      const progress = recorder();
      t.equal(await pull('gpt2', { endpoint, cache, progress, attempts: 2 }), dir, `${how}: the cached snapshot`);
      t.ok(resolveRequests('model.safetensors').length > 0, `${how}: the changed file was asked for`);
      t.equal(readFileSync(ref, 'utf8'), COMMIT, `${how}: refs/main unchanged`);
      t.match(progress.logs.at(-1), /could not be fetched.*served as cached/);
    }
    reset();
  },
);

t.test(
  'a cached main whose hub accepts and never answers: the cached snapshot after the check times out',
  async (t) => {
    reset();
    const cache = newCache();
    const dir = await pull('gpt2', { endpoint, cache });
    reset('silent');
    const progress = recorder();
    const t0 = Date.now();
    t.equal(await pull('gpt2', { endpoint, cache, progress, refCheckTimeoutMs: 300 }), dir, 'the cached snapshot');
    const took = Date.now() - t0;
    t.ok(took >= 300 && took < 2000, `after the 300 ms check, not much later (${took} ms)`);
    t.equal(unanswered.length, 1, 'the one request, left unanswered');
    t.match(progress.logs.at(-1), /the hub did not answer.*served as cached/);
    reset();
  },
);

t.test('a clean pull downloads and verifies every file; a second pull asks only where main is', async (t) => {
  reset();
  const cache = newCache();
  const progress = recorder();
  const dir = await pull('gpt2', { endpoint, cache, progress });
  t.equal(dir, expectedDir(cache), 'directory is <cache>/models--openai-community--gpt2/snapshots/<commit sha>');
  assertIdentical(t, dir);
  t.same(
    readdirSync(join(repoDir(cache), 'blobs')).sort(),
    FILES.map(etag).sort(),
    'blobs are named by SHA-256 (LFS) or git blob id',
  );
  t.notOk(existsSync(join(dir, 'README.md')), 'files steerd does not need are not downloaded');
  t.same(
    requests.map((q) => q.path),
    [`/api/models/${REPO}/revision/main?blobs=true`, ...FILES.map((f) => `/${REPO}/resolve/${COMMIT}/${f}`)],
    'one API call, then each required file once, from the resolved commit',
  );
  t.ok(
    requests.every((q) => q.range === undefined),
    'a fresh download asks for no range',
  );
  t.same(progress.advanced.get('model.safetensors'), model.length, 'progress advanced by the whole file');
  t.match(progress.logs.join('\n'), /model\.safetensors: \d+ bytes, sha256 verified/);
  t.match(progress.logs.join('\n'), /config\.json: \d+ bytes, sha1 verified/);
  t.equal(readFileSync(join(repoDir(cache), 'refs', 'main'), 'utf8'), COMMIT, 'refs/main holds the commit');
  t.same(readdirSync(dir).sort(), [...FILES].sort(), 'nothing else is written into the snapshot');

  reset();
  const again = await pull('gpt2', { endpoint, cache, progress });
  t.equal(again, dir, 'the second pull returns the same directory');
  t.same(
    requests.map((q) => q.path),
    [`/api/models/${REPO}/revision/main?blobs=true`],
    'found in the cache: one request, for the commit main is at (the same), nothing downloaded',
  );
  t.match(progress.logs.at(-1), `gpt2@main: in the Hugging Face cache, ${dir}`);
  assertIdentical(t, dir);

  reset();
  const pinned = await pull('gpt2', { endpoint, cache, revision: COMMIT });
  t.equal(pinned, dir, 'a commit is looked up as a snapshot, without refs');
  t.same(requests, []);

  reset();
  rmSync(join(dir, 'vocab.json'));
  t.equal(await pull('gpt2', { endpoint: `${endpoint}/`, cache }), dir, 'a trailing slash on the endpoint is ignored');
  t.same(
    requests.map((q) => q.path),
    [`/api/models/${REPO}/revision/main?blobs=true`],
    'a snapshot link gone, its blob still there: the link is made again, nothing is downloaded',
  );
  assertIdentical(t, dir);
});

t.test('an interrupted download resumes with a Range request within the same call', async (t) => {
  reset('interrupt');
  const cache = newCache();
  watchPart = partOf(cache);
  const progress = recorder();
  const dir = await pull('gpt2', { endpoint, cache, progress });
  assertIdentical(t, dir);
  const got = resolveRequests('model.safetensors');
  t.equal(got.length, 2, 'model.safetensors was requested twice');
  t.equal(got[0].range, undefined, 'the first request starts at 0');
  t.equal(cuts.length, 1, 'the server cut one connection');
  const sent = cuts[0];
  t.ok(sent > 0 && sent < model.length, `the cut happened mid-file (${sent} of ${model.length} bytes sent)`);
  t.equal(got[1].range, `bytes=${sent}-`, 'the retry resumes exactly where the cut left off');
  t.equal(got[1].partSize, sent, 'and that is the size of the .part on disk');
  t.match(progress.logs.join('\n'), /model\.safetensors: attempt 1 of 5 failed/);
  t.same(
    progress.starts.filter((s) => s.file === 'model.safetensors'),
    [
      { file: 'model.safetensors', total: model.length, already: 0 },
      { file: 'model.safetensors', total: model.length, already: sent },
    ],
  );
});

t.test('a connection that keeps dropping exhausts the attempts, and the next run resumes', async (t) => {
  reset('interrupt-always');
  const cache = newCache();
  const dir = expectedDir(cache);
  const part = partOf(cache);
  watchPart = part;
  const err = await caught(pull('gpt2', { endpoint, cache, attempts: 2 }));
  t.type(err, DownloadError);
  t.match((err as Error).message, /^model\.safetensors: download failed after 2 attempts \(/);
  t.equal(cuts.length, 2, 'two attempts, both cut');
  const got = resolveRequests('model.safetensors');
  t.equal(got.length, 2);
  t.equal(got[0].range, undefined);
  const n1 = cuts[0];
  t.equal(got[1].range, `bytes=${n1}-`, 'the second attempt resumed where the first was cut');
  t.equal(got[1].partSize, n1);
  t.notOk(existsSync(join(dir, 'model.safetensors')), 'nothing unverified is put in place');
  t.notOk(existsSync(blobOf(cache, 'model.safetensors')), 'nor among the blobs');
  t.notOk(existsSync(join(dir, 'vocab.json')), 'the files after it were not fetched');
  const kept = statSync(part).size;
  t.ok(n1 < kept && kept < model.length, 'the second attempt made progress');
  t.equal(kept, cuts[1], 'the .part keeps all that arrived');

  reset();
  await pull('gpt2', { endpoint, cache });
  t.same(
    resolveRequests().map((q) => [q.path.split('/').pop(), q.range]),
    [
      ['model.safetensors', `bytes=${kept}-`],
      ['vocab.json', undefined],
      ['merges.txt', undefined],
    ],
    'the next run fetches the rest of model.safetensors, then the files it never reached',
  );
  assertIdentical(t, dir);
});

t.test('a body that ends cleanly but short is resumed, not taken for the file', async (t) => {
  reset('short');
  const cache = newCache();
  const progress = recorder();
  const dir = await pull('gpt2', { endpoint, cache, progress });
  assertIdentical(t, dir);
  const half = cuts[0];
  t.same(
    resolveRequests('model.safetensors').map((q) => q.range),
    [undefined, `bytes=${half}-`],
  );
  t.match(
    progress.logs.join('\n'),
    `model.safetensors: attempt 1 of 5 failed (connection closed at ${half} of ${model.length} bytes)`,
  );
});

// When the connection drops while a write to the .part is still in flight, `pipeline` rejects
// before the file stream has closed: a retry that measured the .part then would ask for a range
// from there, and the late write would land before the retry's bytes, duplicating them.
t.test('a connection dropped while a write to the .part is in flight does not corrupt the resumed file', async (t) => {
  const { write, writev } = fs;
  const later =
    <A extends unknown[]>(f: (...args: A) => void) =>
    (...args: A) => {
      if (slowDisk) setTimeout(() => f(...args), 40);
      else f(...args);
    };
  fs.write = later(write as (...args: unknown[]) => void) as unknown as typeof fs.write;
  fs.writev = later(writev as (...args: unknown[]) => void) as unknown as typeof fs.writev;
  t.teardown(() => {
    fs.write = write;
    fs.writev = writev;
    slowDisk = false;
  });
  const runs = 3;
  const failures: string[] = [];
  const shapes: string[] = [];
  for (let i = 0; i < runs; i++) {
    reset('interrupt-abrupt');
    const cache = newCache();
    watchPart = partOf(cache);
    const err = await caught(pull('gpt2', { endpoint, cache }));
    const got = resolveRequests('model.safetensors');
    shapes.push(`${cuts.length} cut, ranges ${got.map((q) => q.range ?? 'none').join(' ')}`);
    if (err) failures.push(`run ${i}: ${(err as Error).message}`);
    else if (!readFileSync(join(expectedDir(cache), 'model.safetensors')).equals(model))
      failures.push(`run ${i}: wrong bytes`);
  }
  t.same(
    shapes.map((x) => x.replace(/\d{2,}/g, 'N')),
    Array(runs).fill('1 cut, ranges none bytes=N-'),
    'each pull was cut once and retried with a range',
  );
  t.same(failures, [], `all ${runs} pulls interrupted during a slow write succeed`);
});

t.test('a .part from an earlier run is resumed; a corrupted one is refused', async (t) => {
  const K = 100_000;
  t.test('a good partial file', async (t) => {
    reset();
    const cache = newCache();
    const dir = expectedDir(cache);
    mkdirSync(join(repoDir(cache), 'blobs'), { recursive: true });
    writeFileSync(partOf(cache), model.subarray(0, K)); // as huggingface_hub leaves one
    const progress = recorder();
    t.equal(await pull('gpt2', { endpoint, cache, progress }), dir);
    const got = resolveRequests('model.safetensors');
    t.same(
      got.map((q) => q.range),
      [`bytes=${K}-`],
      'one request, from byte K',
    );
    t.equal(progress.advanced.get('model.safetensors'), model.length - K, 'only the rest was transferred');
    t.same(
      progress.starts.find((s) => s.file === 'model.safetensors'),
      { file: 'model.safetensors', total: model.length, already: K },
    );
    assertIdentical(t, dir);
  });
  t.test('a partial file with wrong leading bytes', async (t) => {
    reset();
    const cache = newCache();
    const dir = expectedDir(cache);
    mkdirSync(join(repoDir(cache), 'blobs'), { recursive: true });
    const bad = Buffer.from(model.subarray(0, K));
    bad[0] ^= 0xff;
    writeFileSync(partOf(cache), bad);
    const err = await caught(pull('gpt2', { endpoint, cache }));
    t.type(err, DownloadError);
    t.match(
      (err as Error).message,
      /^model\.safetensors: checksum mismatch \(sha256 [0-9a-f]{64}, the hub says [0-9a-f]{64}\)/,
    );
    t.same(
      resolveRequests('model.safetensors').map((q) => q.range),
      [`bytes=${K}-`],
    );
    t.notOk(existsSync(join(dir, 'model.safetensors')), 'no unverified model.safetensors');
    t.notOk(existsSync(partOf(cache)), 'the bad .incomplete was discarded');
    reset();
    await pull('gpt2', { endpoint, cache });
    t.same(
      resolveRequests().map((q) => [q.path.split('/').pop(), q.range]),
      [
        ['model.safetensors', undefined],
        ['vocab.json', undefined],
        ['merges.txt', undefined],
      ],
      'the next run starts model.safetensors from scratch, then fetches the files it never reached',
    );
    assertIdentical(t, dir);
  });
});

t.test('a corrupt download is refused and discarded', async (t) => {
  reset('corrupt');
  const cache = newCache();
  const dir = expectedDir(cache);
  const err = await caught(pull('gpt2', { endpoint, cache }));
  t.type(err, DownloadError);
  const e = err as DownloadError;
  t.match(e.message, /model\.safetensors: checksum mismatch/);
  t.match(e.message, `the hub says ${sha256(model)}`, 'names the expected digest');
  t.match(e.message, `sha256 ${sha256(corrupted(model))}`, 'names the digest of what arrived');
  t.equal(e.code, 'download_failed');
  t.equal(e.status, 502);
  t.same(e.details, { file: 'model.safetensors' });
  t.equal(resolveRequests('model.safetensors').length, 1, 'a checksum mismatch is not retried');
  t.notOk(existsSync(join(dir, 'model.safetensors')), 'no model.safetensors');
  t.notOk(existsSync(blobOf(cache, 'model.safetensors')), 'no blob');
  t.notOk(existsSync(partOf(cache)), 'no .incomplete');
  t.ok(readFileSync(join(dir, 'config.json')).equals(bytes.get('config.json')!), 'the file before it was kept');
  t.notOk(existsSync(join(dir, 'vocab.json')), 'the files after it were not fetched');
  t.same(
    lookupRevision(cache, REPO, 'main').missing,
    ['model.safetensors', 'vocab.json', 'merges.txt'],
    'the snapshot is not taken for complete',
  );
});

t.test('a server that ignores Range restarts the download from zero', async (t) => {
  reset('ignore-range');
  const cache = newCache();
  const dir = expectedDir(cache);
  mkdirSync(join(repoDir(cache), 'blobs'), { recursive: true });
  const K = 123_457;
  writeFileSync(partOf(cache), model.subarray(0, K));
  const progress = recorder();
  await pull('gpt2', { endpoint, cache, progress });
  t.same(
    resolveRequests('model.safetensors').map((q) => q.range),
    [`bytes=${K}-`],
    'a range was asked for (and ignored)',
  );
  t.same(
    progress.starts.find((s) => s.file === 'model.safetensors'),
    { file: 'model.safetensors', total: model.length, already: 0 },
  );
  assertIdentical(t, dir);
});

t.test('bad names and incomplete repositories are refused', async (t) => {
  reset();
  const cache = newCache();
  for (const name of ['not a/valid/name', 'gpt3', 'a/b/c', '']) {
    const err = await caught(pull(name, { endpoint, cache }));
    t.type(err, DownloadError, JSON.stringify(name));
    t.match((err as Error).message, `unknown model "${name}"`);
    t.match((err as Error).message, /gpt2, gpt2-medium, gpt2-large, gpt2-xl/);
  }
  t.same(requests, [], 'no request was made for an invalid name');
  t.same(readdirSync(cache), [], 'nothing was written');

  const missing = await caught(pull('acme/no-merges', { endpoint, cache }));
  t.type(missing, DownloadError);
  t.match((missing as Error).message, /^acme\/no-merges@main lacks merges\.txt \(/);
  t.same(resolveRequests(), [], 'nothing is downloaded from an incomplete repository');
  t.same(readdirSync(cache), [], 'and no cache directory is created');

  reset();
  const unknown = await caught(pull('acme/nothing-here', { endpoint, cache }));
  t.type(unknown, DownloadError);
  t.match((unknown as Error).message, `${endpoint}/api/models/acme/nothing-here/revision/main?blobs=true answered 404`);
  t.same((unknown as DownloadError).details?.status, 404);
});

t.test('an unreachable endpoint is reported', async (t) => {
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const url = `http://127.0.0.1:${port}`;
  const err = await caught(pull('gpt2', { endpoint: url, cache: newCache() }));
  t.type(err, DownloadError);
  t.match((err as Error).message, `cannot reach ${url}/api/models/${REPO}/revision/main?blobs=true: ECONNREFUSED`);
});

t.test('steerd model pull', async (t) => {
  reset();
  const cache = newCache();
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: endpoint };
  delete env.STEERD_CACHE;
  delete env.HF_TOKEN;
  delete env.HF_HUB_OFFLINE;
  const child = spawn(process.execPath, ['bin/steerd.js', 'model', 'pull', 'gpt2', '--cache', cache], {
    cwd: repoRoot,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  t.equal(code, 0, 'exit code 0', { stderr });
  const lines = stdout.trim().split('\n');
  t.equal(lines[lines.length - 1], expectedDir(cache), 'the last line of stdout is the directory');
  assertIdentical(t, expectedDir(cache));
  // biome-ignore lint/suspicious/noControlCharactersInRegex: looking for terminal escapes
  t.notMatch(stderr, /\x1b\[/, 'no terminal escapes when stderr is not a TTY');
  t.match(stderr, `model.safetensors: downloading ${model.length} bytes`);
  for (const pct of [10, 50, 90]) t.match(stderr, new RegExp(`^model\\.safetensors: ${pct}%$`, 'm'));
  t.match(stderr, /model\.safetensors: \d+ bytes, sha256 verified/);
  t.ok(resolveRequests('model.safetensors').length === 1, 'the CLI used HF_ENDPOINT');

  reset();
  const bad = spawn(process.execPath, ['bin/steerd.js', 'model', 'pull', 'acme/no-merges', '--cache', cache], {
    cwd: repoRoot,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let badErr = '';
  bad.stderr.on('data', (d: Buffer) => (badErr += d));
  const badCode = await new Promise<number | null>((r) => bad.on('close', (c) => r(c)));
  t.equal(badCode, 1, 'a DownloadError exits with 1');
  t.match(badErr, /^steerd: acme\/no-merges@main lacks merges\.txt/m);
});
