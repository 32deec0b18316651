import { createHash, type Hash } from 'node:crypto';
import {
  copyFileSync,
  createReadStream,
  createWriteStream,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DownloadError } from '../errors.js';
import { describeMissing, findInHubCache, hubCacheDir, hubOffline, missingFiles, repoFolder } from './hf-cache.js';

const COMMIT = /^[0-9a-f]{40}$/;

/**
 * How long a cached branch's check waits for the hub before serving the snapshot as cached: 10 s,
 * what huggingface_hub waits for a file's metadata (its HF_HUB_ETAG_TIMEOUT) before using its cache.
 */
export const REF_CHECK_TIMEOUT_MS = 10_000;

/** Short names of the released GPT-2 checkpoints on the Hugging Face hub. */
export const HUB_ALIASES: Record<string, string> = {
  gpt2: 'openai-community/gpt2',
  'gpt2-medium': 'openai-community/gpt2-medium',
  'gpt2-large': 'openai-community/gpt2-large',
  'gpt2-xl': 'openai-community/gpt2-xl',
};

const REQUIRED = ['config.json', 'model.safetensors'];
const TOKENIZER = ['vocab.json', 'merges.txt'];
/** Fetched where the repository has them: the tokenizer's one file, and its settings with the chat template. */
const OPTIONAL = ['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja'];

export interface PullOptions {
  /** Branch, tag or commit. Default `main`. */
  revision?: string;
  /**
   * The Hugging Face hub cache, looked in first and downloaded into. Default `$HF_HUB_CACHE`, else
   * `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (see hf-cache.ts).
   */
  cache?: string;
  /**
   * steerd's own cache before the hub cache layout (`<dir>/models/<owner>--<name>/<commit>/`):
   * a complete checkpoint pulled there earlier is used before anything is downloaded. Default none.
   */
  legacyCache?: string;
  /** No download: only what is cached. Default `$HF_HUB_OFFLINE`. */
  offline?: boolean;
  /** Hub URL. Default `$HF_ENDPOINT` or `https://huggingface.co`. */
  endpoint?: string;
  /** Bearer token for gated or private repositories. Default `$HF_TOKEN`. */
  token?: string;
  /** Attempts per file when the connection drops; each resumes where the last stopped. Default 5. */
  attempts?: number;
  /** Progress reporting; default: none. */
  progress?: ProgressReporter;
  /** How long a cached branch's check waits for the hub (ms). Default REF_CHECK_TIMEOUT_MS. */
  refCheckTimeoutMs?: number;
}

/** Receives download progress; the CLI draws a bar on a terminal and logs lines otherwise. */
export interface ProgressReporter {
  start(file: string, total: number, already: number): void;
  advance(bytes: number): void;
  stop(): void;
  log(message: string): void;
}

interface Sibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256: string; size: number };
}

/** A checkpoint of a hub model on disk. */
export interface Pulled {
  /** The checkpoint directory: a hub-cache snapshot, or a directory of steerd's old cache. */
  dir: string;
  /** `hub`: a snapshot of the hub cache (serve it through hf-cache.ts servingDir); `steerd`: the old cache. */
  cache: 'hub' | 'steerd';
}

/** steerd's own cache (generated checkpoints; pulls before the hub cache layout). */
export function defaultCacheDir(): string {
  return process.env.STEERD_CACHE ?? join(homedir(), '.cache', 'steerd');
}

/** The hub repository for a model name: an alias (`gpt2-xl`) or an `owner/name` id. */
export function resolveRepo(name: string): string {
  const repo = HUB_ALIASES[name] ?? name;
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo)) {
    throw new DownloadError(
      `unknown model "${name}": use ${Object.keys(HUB_ALIASES).join(', ')} or a hub id such as openai-community/gpt2`,
    );
  }
  return repo;
}

/**
 * The ids a model may be cached under, each a folder of the hub cache: the name asked for, its
 * repository, and the short name of an aliased repository (`gpt2-xl` and
 * `openai-community/gpt2-xl` are one repository, cached under either spelling).
 */
export function cacheIds(name: string): string[] {
  const repo = resolveRepo(name);
  const short = Object.keys(HUB_ALIASES).find((k) => HUB_ALIASES[k] === repo);
  return [...new Set([name, repo, ...(short ? [short] : [])])];
}

/** Where a pulled revision lives in steerd's old cache (before the hub cache layout). */
export function cachePath(cache: string, repo: string, revision: string): string {
  return join(cache, 'models', repo.replace('/', '--'), revision);
}

/**
 * A complete checkpoint of `repo` pulled into steerd's old cache for `revision` (the newest, when
 * several commits were), else undefined.
 */
export function findLegacy(cache: string, repo: string, revision: string): string | undefined {
  const base = join(cache, 'models', repo.replace('/', '--'));
  if (!existsSync(base)) return undefined;
  let best: { dir: string; mtime: number } | undefined;
  for (const commit of readdirSync(base)) {
    const dir = join(base, commit);
    const meta = join(dir, '.steerd-source.json'); // written once every file was verified
    if (!existsSync(meta) || missingFiles(dir).length > 0) continue;
    let rev: unknown;
    try {
      rev = (JSON.parse(readFileSync(meta, 'utf8')) as { revision?: unknown }).revision;
    } catch {
      continue;
    }
    if (rev !== revision && commit !== revision) continue;
    const mtime = statSync(meta).mtimeMs;
    if (!best || mtime > best.mtime) best = { dir, mtime };
  }
  return best?.dir;
}

/**
 * A GPT-2 checkpoint's directory: the revision's snapshot in the hub cache when it has every file
 * steerd needs (a branch such as `main` checked first against the hub with one small request,
 * unless offline: when it has moved, the new commit's changed files are downloaded, and `refs/`
 * moves once they all are; if any cannot be had, the cached snapshot is served; a commit is served
 * without asking); else, given `legacyCache`, a complete pull in steerd's old cache; else
 * the files the snapshot lacks, downloaded into the hub cache. Refused offline (`HF_HUB_OFFLINE`),
 * naming what is missing and where it looked.
 *
 * Downloads use the hub cache layout, as huggingface_hub does, so that Python finds them: each
 * file goes to `blobs/<sha256>` (LFS files) or `blobs/<git blob id>`, via `blobs/<id>.incomplete`,
 * which resumes with an HTTP Range request (also one Python left); LFS files are checked against
 * the hub's SHA-256 and the others against their git blob id, and a mismatch is refused;
 * `snapshots/<commit>/<file>` is a relative symlink to the blob and `refs/<revision>` holds the
 * commit. A blob already there is linked, not downloaded.
 */
export async function pullModel(name: string, opts: PullOptions = {}): Promise<Pulled> {
  const repo = resolveRepo(name);
  const ids = cacheIds(name);
  const revision = opts.revision ?? 'main';
  const hubCache = opts.cache ?? hubCacheDir();
  const log = (m: string) => opts.progress?.log(m);

  const offline = opts.offline ?? hubOffline();
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const token = opts.token ?? process.env.HF_TOKEN;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const infoUrl = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
  let info: { sha?: string; siblings?: Sibling[] } | undefined;

  const cached = findInHubCache(hubCache, ids, revision);
  if (cached.hit) {
    const hit = cached.hit;
    const at = `${name}@${revision}: in the Hugging Face cache, ${hit.dir}`;
    // A commit never moves; a branch may have. Unless offline, one small request (the revision's
    // commit and file list) says whether it has: if not, or if the hub does not answer in
    // REF_CHECK_TIMEOUT_MS, the snapshot is served as it is; if it has, only the files the new
    // commit changed are downloaded below (the others' blobs are there already).
    if (offline || COMMIT.test(revision)) {
      log(at);
      return { dir: hit.dir!, cache: 'hub' };
    }
    try {
      info = (await fetchJson(infoUrl, headers, opts.refCheckTimeoutMs ?? REF_CHECK_TIMEOUT_MS)) as typeof info;
    } catch (e) {
      log(`${at} (the hub did not answer, ${(e as Error).message}: served as cached)`);
      return { dir: hit.dir!, cache: 'hub' };
    }
    if (!info?.sha || !COMMIT.test(info.sha)) {
      log(`${at} (the hub gave no commit for ${revision}: served as cached)`);
      return { dir: hit.dir!, cache: 'hub' };
    }
    if (info.sha === hit.commit) {
      log(`${at} (up to date)`);
      return { dir: hit.dir!, cache: 'hub' };
    }
    log(
      `${name}@${revision} moved from ${hit.commit?.slice(0, 12)} to ${info.sha.slice(0, 12)}: fetching what changed`,
    );
  } else {
    const looked = [...cached.looked];
    if (opts.legacyCache) {
      const old = findLegacy(opts.legacyCache, repo, revision);
      if (old) {
        log(`${name}@${revision}: in steerd's cache, ${old}`);
        return { dir: old, cache: 'steerd' };
      }
      looked.push(`${join(opts.legacyCache, 'models', repo.replace('/', '--'))}: no complete pull of ${revision}`);
    }
    if (offline) {
      const missing = cached.partial?.missing ?? ['config.json', 'model.safetensors', ...TOKENIZER];
      throw new DownloadError(
        `${name}@${revision} is not cached and HF_HUB_OFFLINE forbids downloading it: missing ${describeMissing(missing)}; looked in ${looked.join('; ')}`,
        { missing, looked },
      );
    }
  }

  // A moved branch whose new files cannot all be had (a cut connection, a refusal, a missing file,
  // a full disk): its cached snapshot is served, as when the hub does not answer.
  const fetchSnapshot = async (): Promise<Pulled> => {
    info ??= (await fetchJson(infoUrl, headers)) as { sha?: string; siblings?: Sibling[] };
    const commit = info.sha ?? revision;
    const siblings = new Map((info.siblings ?? []).map((s) => [s.rfilename, s]));
    const lacks = REQUIRED.filter((f) => !siblings.has(f));
    if (!siblings.has('tokenizer.json')) lacks.push(...TOKENIZER.filter((f) => !siblings.has(f)));
    if (lacks.length) {
      throw new DownloadError(
        `${repo}@${revision} lacks ${lacks.join(', ')} (steerd needs a safetensors GPT-2 checkpoint: config.json, model.safetensors, vocab.json + merges.txt or tokenizer.json)`,
      );
    }
    if (!COMMIT.test(commit)) throw new DownloadError(`${infoUrl} gave no commit for ${repo}@${revision}`);

    // Into the folder of a spelling that is already there (its blobs and partial files are reused),
    // else the repository's own.
    const repoDir = cached.hit?.repoDir ?? cached.partial?.repoDir ?? join(hubCache, repoFolder(repo));
    const snapshot = join(repoDir, 'snapshots', commit);
    mkdirSync(join(repoDir, 'blobs'), { recursive: true });
    mkdirSync(snapshot, { recursive: true });
    const moveRef = () => {
      if (revision === commit) return;
      const ref = join(repoDir, 'refs', revision);
      mkdirSync(dirname(ref), { recursive: true });
      writeFileSync(ref, commit);
    };
    // a fresh pull names its commit at once (a later run resumes it); a moved branch only once its
    // new snapshot is complete (until then the cached one is the branch's)
    if (!cached.hit) moveRef();
    log(`pulling ${repo}@${commit} into ${snapshot}`);
    for (const file of [...REQUIRED, ...TOKENIZER, ...OPTIONAL].filter((f) => siblings.has(f))) {
      const pointer = join(snapshot, file);
      if (existsSync(pointer)) continue; // the snapshot has it (a symlink to a complete blob)
      const s = siblings.get(file)!;
      const etag = s.lfs?.sha256 ?? s.blobId;
      if (!etag || !/^[0-9a-f]{40,64}$/.test(etag))
        throw new DownloadError(`${file}: the hub gave no checksum for it (${infoUrl})`, { file });
      const blob = join(repoDir, 'blobs', etag);
      // only verified files are ever renamed into blobs/
      if (!existsSync(blob))
        await downloadVerified(
          `${endpoint}/${repo}/resolve/${commit}/${file}`,
          blob,
          s,
          headers,
          opts.attempts ?? 5,
          opts.progress,
        );
      linkIntoSnapshot(blob, pointer);
    }
    if (cached.hit) moveRef();
    return { dir: snapshot, cache: 'hub' };
  };
  if (!cached.hit) return fetchSnapshot();
  try {
    return await fetchSnapshot();
  } catch (e) {
    log(
      `${name}@${revision}: the new commit could not be fetched (${(e as Error).message}): served as cached, ${cached.hit.dir}`,
    );
    return { dir: cached.hit.dir!, cache: 'hub' };
  }
}

/** `pullModel` without steerd's old cache: the directory of the snapshot in the hub cache. */
export async function pull(name: string, opts: Omit<PullOptions, 'legacyCache'> = {}): Promise<string> {
  return (await pullModel(name, opts)).dir;
}

/** `pointer` becomes a relative symlink to `blob` (a copy where symlinks cannot be made), as huggingface_hub does. */
function linkIntoSnapshot(blob: string, pointer: string): void {
  if (lstatSync(pointer, { throwIfNoEntry: false })) rmSync(pointer); // a dangling link
  try {
    symlinkSync(relative(dirname(pointer), blob), pointer);
  } catch {
    copyFileSync(blob, pointer);
  }
}

async function fetchJson(url: string, headers: Record<string, string>, timeoutMs?: number): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { headers, ...(timeoutMs !== undefined && { signal: AbortSignal.timeout(timeoutMs) }) });
  } catch (e) {
    throw new DownloadError(`cannot reach ${url}: ${causeOf(e)}`, { url });
  }
  if (!res.ok) {
    throw new DownloadError(`${url} answered ${res.status} ${res.statusText}`, { url, status: res.status });
  }
  return res.json();
}

function causeOf(e: unknown): string {
  const err = e as { cause?: { code?: string; message?: string }; message?: string };
  return err.cause?.code ?? err.cause?.message ?? err.message ?? String(e);
}

/** What a file must hash to: SHA-256 for LFS files, else the git blob id (SHA-1 of "blob N\0" + data). */
function expectedDigest(
  s: Sibling,
): { algo: 'sha256' | 'sha1'; hex: string; size?: number; gitBlob: boolean } | undefined {
  if (s.lfs) return { algo: 'sha256', hex: s.lfs.sha256, size: s.lfs.size, gitBlob: false };
  if (s.blobId) return { algo: 'sha1', hex: s.blobId, size: s.size, gitBlob: true };
  return undefined;
}

async function hashExisting(hash: Hash, file: string): Promise<void> {
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
}

async function downloadVerified(
  url: string,
  target: string,
  s: Sibling,
  headers: Record<string, string>,
  attempts: number,
  progress?: ProgressReporter,
): Promise<void> {
  const part = `${target}.incomplete`; // huggingface_hub's name: either resumes the other's
  const want = expectedDigest(s);
  const total = want?.size ?? s.size;
  let lastError: unknown;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    let have = existsSync(part) ? statSync(part).size : 0;
    if (total !== undefined && have > total) {
      rmSync(part);
      have = 0;
    }
    try {
      if (total === undefined || have < total) {
        const res = await fetch(url, { headers: have > 0 ? { ...headers, range: `bytes=${have}-` } : headers });
        if (!res.ok || !res.body) {
          throw new DownloadError(`${url} answered ${res.status} ${res.statusText}`, { url, status: res.status });
        }
        if (have > 0 && res.status !== 206) {
          have = 0; // the server ignored the range: start over
          rmSync(part, { force: true });
        }
        const length = Number(res.headers.get('content-length') ?? NaN);
        const size = total ?? (Number.isFinite(length) ? have + length : 0);
        progress?.start(s.rfilename, size, have);
        const counter = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            progress?.advance(chunk.length);
            cb(null, chunk);
          },
        });
        const out = createWriteStream(part, { flags: have > 0 ? 'a' : 'w' });
        try {
          await pipeline(Readable.fromWeb(res.body as never), counter, out);
        } finally {
          progress?.stop();
          // On an error, pipeline settles before the file stream has closed: a write still in
          // flight would land after the next attempt measured the .part, duplicating bytes.
          if (!out.closed) await new Promise<void>((r) => out.once('close', () => r()));
        }
      }
      const got = existsSync(part) ? statSync(part).size : 0;
      if (total !== undefined && got < total) throw new Error(`connection closed at ${got} of ${total} bytes`);
      if (want) {
        const hash = createHash(want.algo);
        if (want.gitBlob) hash.update(`blob ${got}\0`);
        await hashExisting(hash, part);
        const hex = hash.digest('hex');
        if (hex !== want.hex) {
          rmSync(part, { force: true });
          throw new DownloadError(
            `${s.rfilename}: checksum mismatch (${want.algo} ${hex}, the hub says ${want.hex}); the download was discarded`,
            { file: s.rfilename },
          );
        }
      }
      renameSync(part, target);
      progress?.log(`${s.rfilename}: ${got} bytes${want ? `, ${want.algo} verified` : ''}`);
      return;
    } catch (e) {
      if (e instanceof DownloadError) throw e;
      lastError = e;
      progress?.log(`${s.rfilename}: attempt ${attempt} of ${attempts} failed (${causeOf(e)}); resuming`);
    }
  }
  throw new DownloadError(`${s.rfilename}: download failed after ${attempts} attempts (${causeOf(lastError)})`, {
    file: s.rfilename,
  });
}
