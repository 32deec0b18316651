import { type ChildProcess, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadConfig } from '../src/config.ts';
import { DownloadError, SteerdError } from '../src/errors.ts';
import { writeChatTemplate } from '../src/model/chat-templates.ts';
import { openCheckpoint } from '../src/model/checkpoint.ts';
import { ensureFloat32Weights } from '../src/model/float32-weights.ts';
import { writeTinyCheckpoint } from '../src/model/gpt2/tiny.ts';
import { hubCacheDir, hubOffline, servingDir } from '../src/model/hf-cache.ts';
import { cachePath, pullModel } from '../src/model/hub.ts';
import { writeTinyLlamaCheckpoint } from '../src/model/llama/tiny.ts';
import { resolveModel } from '../src/server.ts';
import {
  closedEndpoint,
  commitOf,
  etagOf,
  type HubSnapshot,
  snapshotProblems,
  startFakeHub,
  writeHubSnapshot,
} from './helpers/hf-cache.ts';

// The Hugging Face hub cache: hub names are served from it without the network, missing files are
// downloaded into it, and it stays as huggingface_hub wrote it. Every cache here is a temporary
// directory; the environment's are replaced so that nothing reaches ~/.cache.

const root = mkdtempSync(join(tmpdir(), 'steerd-hfc-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
process.env.HF_HUB_CACHE = join(root, 'env-hub-cache');
process.env.STEERD_CACHE = join(root, 'env-steerd-cache');
delete process.env.HF_HOME;
delete process.env.HF_HUB_OFFLINE;

const src = join(root, 'src');
writeTinyCheckpoint(src, { layers: 2, embd: 32, heads: 2, ctx: 64, seed: 5 });
const FILES = readdirSync(src).sort();
const COMMIT = commitOf('steerd hf-cache test');
const REPO = 'openai-community/gpt2-xl';
const SPELLINGS = ['models--gpt2-xl', 'models--openai-community--gpt2-xl'];
const repoRoot = join(import.meta.dirname, '..');

let n = 0;
/** A fresh directory under the test's root. */
const fresh = (label: string) => {
  const d = join(root, `${label}-${++n}`);
  mkdirSync(d);
  return d;
};

/** The problems of a snapshot and its blobs for Python, checked as a tap assertion. */
function assertPythonUsable(tt: Tap, s: HubSnapshot, label: string) {
  tt.same(snapshotProblems(s.snapshot, s.etags), [], `${label}: the snapshot is still huggingface_hub's`);
  tt.same(
    readdirSync(join(s.repoDir, 'blobs')).sort(),
    [...s.etags.values()].sort(),
    `${label}: blobs/ holds the blobs and nothing else`,
  );
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** `steerd <args>` with `env` replacing the given variables; resolves when it exits. */
function steerd(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, ['bin/steerd.js', ...args], {
    cwd: repoRoot,
    env: { ...process.env, REDIS_URL: '', STEERD_MODEL: '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = { stdout: '', stderr: '' };
  child.stdout!.on('data', (d: Buffer) => (out.stdout += d));
  child.stderr!.on('data', (d: Buffer) => (out.stderr += d));
  const exit = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  return { child, out, exit };
}

/** Waits for a `steerd serve` child to listen; its URL, or the output it died with. */
async function listening(p: ReturnType<typeof steerd>): Promise<string> {
  const t0 = Date.now();
  for (;;) {
    const m = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(p.out.stdout + p.out.stderr);
    if (m) return m[1];
    if (p.child.exitCode !== null || Date.now() - t0 > 60_000) {
      throw new Error(`steerd serve did not start (exit ${p.child.exitCode}): ${p.out.stderr}${p.out.stdout}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const stop = async (child: ChildProcess, exit: Promise<number | null>) => {
  if (child.exitCode === null) child.kill('SIGTERM');
  return exit;
};

for (const folder of SPELLINGS) {
  t.test(`no --model: gpt2-xl served from the hub cache as ${folder}, the hub unreachable`, async (t) => {
    const hubCache = fresh('hub');
    const steerdCache = fresh('steerd');
    const s = writeHubSnapshot(hubCache, folder, src, { commit: COMMIT });
    const p = steerd(['serve', '--port', '0', '--data', fresh('data')], {
      HF_HUB_CACHE: hubCache,
      STEERD_CACHE: steerdCache,
      HF_ENDPOINT: await closedEndpoint(),
    });
    t.teardown(() => stop(p.child, p.exit));
    const url = await listening(p);
    const info = (await (await fetch(`${url}/v1/model`)).json()) as Record<string, unknown>;
    t.equal(info.name, 'gpt2-xl', 'the default model name');
    t.same([info.n_layer, info.n_embd], [2, 32], 'the checkpoint from the cache');
    const gen = await fetch(`${url}/v1/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Hello', max_new_tokens: 3, temperature: 0 }),
    });
    t.equal(gen.status, 200, 'it generates: ONNX Runtime read the weights');
    t.equal(await stop(p.child, p.exit), 0, 'SIGTERM: exit 0');
    t.match(p.out.stderr, `gpt2-xl@main: in the Hugging Face cache, ${s.snapshot}`);

    assertPythonUsable(t, s, folder);
    t.equal(readFileSync(join(s.repoDir, 'refs', 'main'), 'utf8'), COMMIT, 'refs/main unchanged');
    t.same(readdirSync(s.repoDir).sort(), ['blobs', 'refs', 'snapshots'], 'nothing else in the repository folder');
    const served = join(steerdCache, 'hub', folder, COMMIT);
    t.ok(existsSync(join(served, 'model.serve.onnx')), "the graph is in steerd's own folder");
    const blob = statSync(join(s.repoDir, 'blobs', s.etags.get('model.safetensors')!));
    const link = statSync(join(served, 'model.safetensors'));
    t.same([link.ino, link.dev], [blob.ino, blob.dev], 'beside a hard link to the blob (no copy)');
  });
}

t.test('a snapshot missing some files: only those are downloaded, into the folder already there', async (t) => {
  const hub = await startFakeHub(REPO, COMMIT, src);
  t.teardown(() => hub.close());
  process.env.HF_ENDPOINT = hub.endpoint;
  t.teardown(() => {
    delete process.env.HF_ENDPOINT;
  });
  const hubCache = fresh('hub');
  const steerdCache = fresh('steerd');
  // what an interrupted `from_pretrained("gpt2-xl")` may leave: refs and the small files
  const have = FILES.filter((f) => f !== 'model.safetensors' && f !== 'merges.txt');
  writeHubSnapshot(hubCache, 'models--gpt2-xl', src, { commit: COMMIT, files: have });
  const config = { ...loadConfig({}), model: 'gpt2-xl', hubCacheDir: hubCache, cacheDir: steerdCache };
  const m = await resolveModel(config);
  t.same(
    hub.requests,
    [
      `/api/models/${REPO}/revision/main?blobs=true`,
      `/${REPO}/resolve/${COMMIT}/model.safetensors`,
      `/${REPO}/resolve/${COMMIT}/merges.txt`,
    ],
    'the revision, then the two missing files',
  );
  t.same(readdirSync(hubCache), ['models--gpt2-xl'], 'downloaded into the spelling that was there');
  const repoDir = join(hubCache, 'models--gpt2-xl');
  const etags = new Map(FILES.map((f) => [f, etagOf(f, readFileSync(join(src, f)))]));
  assertPythonUsable(t, { repoDir, snapshot: join(repoDir, 'snapshots', COMMIT), etags }, 'after the download');
  t.equal(m.dir, join(steerdCache, 'hub', 'models--gpt2-xl', COMMIT));
  for (const f of FILES) t.ok(readFileSync(join(m.dir, f)).equals(readFileSync(join(src, f))), `${f} served as is`);

  hub.requests.length = 0;
  t.equal((await resolveModel(config)).dir, m.dir, 'the next start finds it all');
  t.same(
    hub.requests,
    [`/api/models/${REPO}/revision/main?blobs=true`],
    'asking the hub only where main is (where it was): nothing downloaded',
  );
});

t.test('HF_HUB_OFFLINE=1 with nothing cached: no request, and a message naming what and where', async (t) => {
  const hub = await startFakeHub(REPO, COMMIT, src);
  t.teardown(() => hub.close());
  const hubCache = fresh('hub');
  const steerdCache = fresh('steerd');
  const env = { HF_HUB_CACHE: hubCache, STEERD_CACHE: steerdCache, HF_ENDPOINT: hub.endpoint, HF_HUB_OFFLINE: '1' };
  const serve = steerd(['serve', '--port', '0', '--data', fresh('data')], env);
  t.teardown(() => stop(serve.child, serve.exit));
  t.equal(await serve.exit, 1, 'serve exits 1');
  const msg = serve.out.stderr;
  t.match(msg, /^steerd: cannot get model "gpt2-xl": gpt2-xl@main is not cached and HF_HUB_OFFLINE forbids/m);
  t.match(msg, 'missing config.json, model.safetensors, vocab.json, merges.txt (or tokenizer.json)');
  for (const folder of SPELLINGS) t.match(msg, `${join(hubCache, folder)}: absent`, `looked in ${folder}`);
  t.match(msg, `${join(steerdCache, 'models', 'openai-community--gpt2-xl')}: no complete pull of main`);

  const pull = steerd(['model', 'pull', 'gpt2-xl'], env);
  t.teardown(() => stop(pull.child, pull.exit));
  t.equal(await pull.exit, 1, 'model pull exits 1');
  t.match(pull.out.stderr, /^steerd: gpt2-xl@main is not cached and HF_HUB_OFFLINE forbids downloading it: missing /m);
  t.same(hub.requests, [], 'the hub was not asked');
  t.same(readdirSync(hubCache), [], 'nothing was written');

  // part of it cached: the message names the snapshot and what it lacks
  writeHubSnapshot(hubCache, 'models--openai-community--gpt2-xl', src, {
    commit: COMMIT,
    files: FILES.filter((f) => f !== 'model.safetensors'),
  });
  const err = await pullModel('gpt2-xl', { cache: hubCache, offline: true }).catch((e: unknown) => e);
  t.type(err, DownloadError);
  t.match(
    (err as Error).message,
    `${join(hubCache, 'models--openai-community--gpt2-xl', 'snapshots', COMMIT)}: lacks model.safetensors`,
  );
  t.match((err as Error).message, /missing model\.safetensors;/);
  t.same(hub.requests, []);
});

t.test("steerd's old cache still serves what was pulled into it; the hub cache comes first", async (t) => {
  const hubCache = fresh('hub');
  const steerdCache = fresh('steerd');
  const old = cachePath(steerdCache, REPO, commitOf('older'));
  writeTinyCheckpoint(old, { layers: 2, embd: 32, heads: 2, ctx: 64, seed: 5 });
  writeFileSync(
    join(old, '.steerd-source.json'),
    JSON.stringify({ repo: REPO, revision: 'main', commit: commitOf('older'), endpoint: 'https://huggingface.co' }),
  );
  const config = {
    ...loadConfig({}),
    model: 'gpt2-xl',
    hubCacheDir: hubCache,
    cacheDir: steerdCache,
    hubOffline: true,
  };
  t.equal((await resolveModel(config)).dir, old, 'offline, from the old cache, served in place');

  const s = writeHubSnapshot(hubCache, 'models--openai-community--gpt2-xl', src, { commit: COMMIT });
  t.equal(
    (await resolveModel(config)).dir,
    join(steerdCache, 'hub', 'models--openai-community--gpt2-xl', COMMIT),
    'a complete snapshot in the hub cache wins',
  );
  assertPythonUsable(t, s, 'served');

  const err = await resolveModel({ ...config, model: 'gpt2-medium' }).catch((e: unknown) => e);
  t.type(err, SteerdError);
  t.equal((err as SteerdError).status, 503);
  t.match((err as Error).message, /--model tiny/);
});

t.test('a snapshot directory given as --model is served through links too', async (t) => {
  const hubCache = fresh('hub');
  const steerdCache = fresh('steerd');
  const s = writeHubSnapshot(hubCache, 'models--acme--small', src, { commit: COMMIT });
  const config = { ...loadConfig({}), model: s.snapshot, hubCacheDir: hubCache, cacheDir: steerdCache };
  const m = await resolveModel(config);
  t.equal(m.dir, join(steerdCache, 'hub', 'models--acme--small', COMMIT));

  // a directory whose weights are a symlink out of it (not a snapshot): a folder of its own
  const odd = fresh('odd');
  for (const f of FILES) writeFileSync(join(odd, f), readFileSync(join(src, f)));
  rmSync(join(odd, 'model.safetensors'));
  symlinkSync(join(src, 'model.safetensors'), join(odd, 'model.safetensors'));
  const linked = servingDir(odd, steerdCache);
  t.match(linked, join(steerdCache, 'linked'));
  t.equal(statSync(join(linked, 'model.safetensors')).ino, statSync(join(src, 'model.safetensors')).ino);
  t.equal(servingDir(src, steerdCache), src, 'a directory of real files is served in place');

  // a revision deleted from the hub cache: its serving folder goes when another is served
  const next = commitOf('next');
  const s2 = writeHubSnapshot(hubCache, 'models--acme--small', src, { commit: next });
  rmSync(s.snapshot, { recursive: true });
  servingDir(s2.snapshot, steerdCache);
  t.same(readdirSync(join(steerdCache, 'hub', 'models--acme--small')), [next], 'the stale folder was removed');
  assertPythonUsable(t, s2, 'the remaining snapshot');
});

// A hub cache on another filesystem than steerd's cache: no hard link is possible, the files are copied.
const otherFs = existsSync('/dev/shm') && statSync('/dev/shm').dev !== statSync(root).dev ? '/dev/shm' : undefined;
t.test(
  'a hub cache on another filesystem: copied into the serving folder, and said so',
  { skip: !otherFs && 'no second filesystem (/dev/shm)' },
  async (t) => {
    const hubCache = mkdtempSync(join(otherFs!, 'steerd-hfc-'));
    t.teardown(() => rmSync(hubCache, { recursive: true, force: true }));
    const steerdCache = fresh('steerd');
    const s = writeHubSnapshot(hubCache, 'models--gpt2-xl', src, { commit: COMMIT });
    const logs: string[] = [];
    const progress = { start() {}, advance() {}, stop() {}, log: (m: string) => logs.push(m) };
    const config = {
      ...loadConfig({}),
      model: 'gpt2-xl',
      hubCacheDir: hubCache,
      cacheDir: steerdCache,
      hubOffline: true,
    };
    const m = await resolveModel(config, progress);
    t.ok(readFileSync(join(m.dir, 'model.safetensors')).equals(readFileSync(join(src, 'model.safetensors'))));
    t.match(logs.join('\n'), /model\.safetensors: no hard link possible to .* \(EXDEV\); copying \d+ bytes/);
    logs.length = 0;
    await resolveModel(config, progress);
    t.notMatch(logs.join('\n'), /copying/, 'the copy is kept for the next start');
    assertPythonUsable(t, s, 'copied from');
  },
);

t.test('where the hub cache is, and what HF_HUB_OFFLINE means', async (t) => {
  const home = homedir();
  t.equal(hubCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b' }), '/a');
  t.equal(hubCacheDir({ HF_HOME: '/b' }), join('/b', 'hub'));
  t.equal(hubCacheDir({ HF_HUB_CACHE: '', HF_HOME: '' }), join(home, '.cache', 'huggingface', 'hub'));
  t.equal(hubCacheDir({ HF_HOME: '~/hf' }), join(home, 'hf', 'hub'));
  // the older name, and XDG's cache home, as huggingface_hub reads them
  t.equal(
    hubCacheDir({ HUGGINGFACE_HUB_CACHE: '/old', HF_HOME: '/b' }),
    '/old',
    'HUGGINGFACE_HUB_CACHE before HF_HOME',
  );
  t.equal(hubCacheDir({ HF_HUB_CACHE: '/a', HUGGINGFACE_HUB_CACHE: '/old' }), '/a', 'HF_HUB_CACHE first');
  t.equal(hubCacheDir({ XDG_CACHE_HOME: '/x' }), join('/x', 'huggingface', 'hub'));
  t.equal(hubCacheDir({ XDG_CACHE_HOME: '/x', HF_HOME: '/b' }), join('/b', 'hub'), 'HF_HOME before XDG_CACHE_HOME');
  t.equal(hubCacheDir({ HUGGINGFACE_HUB_CACHE: '~/old' }), join(home, 'old'));
  for (const v of ['1', 'true', 'YES', 'on']) t.ok(hubOffline({ HF_HUB_OFFLINE: v }), v);
  for (const v of ['', '0', 'false', 'no']) t.notOk(hubOffline({ HF_HUB_OFFLINE: v }), JSON.stringify(v));
  const c = loadConfig({ HF_HOME: '/b', HF_HUB_OFFLINE: '1' });
  t.same([c.hubCacheDir, c.hubOffline], [join('/b', 'hub'), true], 'loadConfig reads them');
});

t.test('a sharded bfloat16 repository: the index, then its shards, with the tokenizer and its template', async (t) => {
  const repo = 'someone/tiny-qwen';
  const commit = commitOf('tiny-qwen');
  const qsrc = fresh('qwen-src');
  writeTinyLlamaCheckpoint(qsrc, {
    modelType: 'qwen2',
    layers: 1,
    embd: 16,
    heads: 4,
    kvHeads: 2,
    ctx: 16,
    dtype: 'bfloat16',
    shards: 2,
    tokenizer: 'qwen2',
  });
  writeChatTemplate(qsrc, 'chatml');
  writeFileSync(join(qsrc, 'README.md'), 'not needed');
  const hub = await startFakeHub(repo, commit, qsrc);
  t.teardown(() => hub.close());
  process.env.HF_ENDPOINT = hub.endpoint;
  t.teardown(() => {
    delete process.env.HF_ENDPOINT;
  });
  const hubCache = fresh('qwen-hub');
  const steerdCache = fresh('qwen-steerd');
  const m = await resolveModel({ ...loadConfig({}), model: repo, hubCacheDir: hubCache, cacheDir: steerdCache });
  const shards = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const fetched = hub.requests.filter((q) => q.includes('/resolve/')).map((q) => q.split('/').at(-1));
  t.same(
    fetched,
    ['config.json', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json', ...shards],
    'the index, the tokenizer and its settings, then the shards the index names; nothing else',
  );
  const snapshot = join(hubCache, 'models--someone--tiny-qwen', 'snapshots', commit);
  for (const f of [...shards, 'model.safetensors.index.json', 'tokenizer_config.json'])
    t.ok(readFileSync(join(m.dir, f)).equals(readFileSync(join(qsrc, f))), `${f} served as is`);
  const ck = openCheckpoint(m.dir);
  t.ok(ensureFloat32Weights(ck), 'the float32 copy is made...');
  t.equal(ck.weightsFile, join(m.dir, 'model.f32.safetensors'), "...in steerd's serving folder");
  t.notOk(existsSync(join(snapshot, 'model.f32.safetensors')), 'never in the hub cache');
});
