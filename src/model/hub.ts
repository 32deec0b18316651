import { createHash, type Hash } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DownloadError } from '../errors.js';

/** Short names of the released GPT-2 checkpoints on the Hugging Face hub. */
export const HUB_ALIASES: Record<string, string> = {
  gpt2: 'openai-community/gpt2',
  'gpt2-medium': 'openai-community/gpt2-medium',
  'gpt2-large': 'openai-community/gpt2-large',
  'gpt2-xl': 'openai-community/gpt2-xl',
};

const REQUIRED = ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt'];
const OPTIONAL = ['tokenizer.json'];

export interface PullOptions {
  /** Branch, tag or commit. Default `main`. */
  revision?: string;
  /** Cache root. Default `$STEERD_CACHE` or `~/.cache/steerd`. */
  cache?: string;
  /** Hub URL. Default `$HF_ENDPOINT` or `https://huggingface.co`. */
  endpoint?: string;
  /** Bearer token for gated or private repositories. Default `$HF_TOKEN`. */
  token?: string;
  /** Attempts per file when the connection drops; each resumes where the last stopped. Default 5. */
  attempts?: number;
  /** Progress reporting; default: none. */
  progress?: ProgressReporter;
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

/** Where a pulled revision lives in the cache. */
export function cachePath(cache: string, repo: string, revision: string): string {
  return join(cache, 'models', repo.replace('/', '--'), revision);
}

/**
 * Downloads a GPT-2 checkpoint's files into the cache and returns the directory. Files already
 * verified are skipped; a partial file resumes with an HTTP Range request; LFS files are checked
 * against the hub's SHA-256 and the others against their git blob id, and a mismatch is refused.
 */
export async function pull(name: string, opts: PullOptions = {}): Promise<string> {
  const repo = resolveRepo(name);
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const revision = opts.revision ?? 'main';
  const token = opts.token ?? process.env.HF_TOKEN;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const log = (m: string) => opts.progress?.log(m);

  const infoUrl = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
  const info = (await fetchJson(infoUrl, headers)) as { sha?: string; siblings?: Sibling[] };
  const commit = info.sha ?? revision;
  const siblings = new Map((info.siblings ?? []).map((s) => [s.rfilename, s]));
  const missing = REQUIRED.filter((f) => !siblings.has(f));
  if (missing.length) {
    throw new DownloadError(
      `${repo}@${revision} lacks ${missing.join(', ')} (steerd needs a safetensors GPT-2 checkpoint)`,
    );
  }
  const dir = cachePath(opts.cache ?? defaultCacheDir(), repo, commit);
  mkdirSync(dir, { recursive: true });
  log(`pulling ${repo}@${commit} into ${dir}`);
  for (const file of [...REQUIRED, ...OPTIONAL.filter((f) => siblings.has(f))]) {
    const s = siblings.get(file)!;
    const target = join(dir, file);
    if (existsSync(target)) continue; // only verified files are ever renamed into place
    const url = `${endpoint}/${repo}/resolve/${commit}/${file}`;
    await downloadVerified(url, target, s, headers, opts.attempts ?? 5, opts.progress);
  }
  writeFileSync(join(dir, '.steerd-source.json'), `${JSON.stringify({ repo, revision, commit, endpoint }, null, 2)}\n`);
  return dir;
}

async function fetchJson(url: string, headers: Record<string, string>): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { headers });
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
  const part = `${target}.part`;
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
