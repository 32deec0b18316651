import { createHash } from 'node:crypto';
import {
  copyFileSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/**
 * Hugging Face hub cache fixtures: a checkpoint laid out as huggingface_hub writes it, a check that
 * it still is, and a minimal hub that serves it.
 */

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
export const gitBlobId = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
/** A fake commit id, 40 hex digits, from a label. */
export const commitOf = (label: string) => createHash('sha1').update(label).digest('hex');

/** What the hub names a file's blob: SHA-256 for the LFS file (the weights), else its git blob id. */
export const etagOf = (file: string, bytes: Buffer) =>
  file.endsWith('.safetensors') ? sha256(bytes) : gitBlobId(bytes);

export interface HubSnapshot {
  /** `<hub cache>/<folder>` */
  repoDir: string;
  /** `<repoDir>/snapshots/<commit>` */
  snapshot: string;
  /** File name to blob name, for the files placed. */
  etags: Map<string, string>;
}

/**
 * Places the files of checkpoint directory `src` in a hub cache as huggingface_hub does:
 * `<folder>/blobs/<etag>`, `<folder>/snapshots/<commit>/<file>` a relative symlink to the blob,
 * `<folder>/refs/<revision>` holding the commit. `files` limits which files (default: all of `src`).
 */
export function writeHubSnapshot(
  hubCache: string,
  folder: string,
  src: string,
  opts: { commit: string; revision?: string; files?: string[] },
): HubSnapshot {
  const repoDir = join(hubCache, folder);
  const snapshot = join(repoDir, 'snapshots', opts.commit);
  mkdirSync(join(repoDir, 'blobs'), { recursive: true });
  mkdirSync(snapshot, { recursive: true });
  mkdirSync(join(repoDir, 'refs'), { recursive: true });
  writeFileSync(join(repoDir, 'refs', opts.revision ?? 'main'), opts.commit);
  const etags = new Map<string, string>();
  for (const f of opts.files ?? readdirSync(src)) {
    const etag = etagOf(f, readFileSync(join(src, f)));
    copyFileSync(join(src, f), join(repoDir, 'blobs', etag));
    symlinkSync(join('..', '..', 'blobs', etag), join(snapshot, f));
    etags.set(f, etag);
  }
  return { repoDir, snapshot, etags };
}

/**
 * What is wrong with a snapshot for Python (empty when nothing): every file in it a symlink to
 * `../../blobs/<etag>` of the expected blob, nothing else there, the blob files regular files.
 */
export function snapshotProblems(snapshot: string, etags: Map<string, string>): string[] {
  const problems: string[] = [];
  const names = readdirSync(snapshot).sort();
  const want = [...etags.keys()].sort();
  if (names.join() !== want.join()) problems.push(`snapshot holds ${names.join(', ')}, expected ${want.join(', ')}`);
  for (const [f, etag] of etags) {
    const p = join(snapshot, f);
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st?.isSymbolicLink()) {
      problems.push(`${f} is not a symlink`);
      continue;
    }
    const link = readlinkSync(p);
    if (link !== join('..', '..', 'blobs', etag)) problems.push(`${f} -> ${link}, expected ../../blobs/${etag}`);
    const blob = lstatSync(join(snapshot, '..', '..', 'blobs', etag), { throwIfNoEntry: false });
    if (!blob?.isFile()) problems.push(`blob ${etag} of ${f} is not a regular file`);
  }
  return problems;
}

export interface FakeHub {
  endpoint: string;
  /** Paths (with query) asked for, in order. */
  requests: string[];
  close(): Promise<void>;
}

/**
 * A hub serving one revision of `repo` (branch `main` at `commit`) with the files of `src`: the
 * revision API (`?blobs=true`: sizes, git blob ids, LFS SHA-256) and `resolve/<commit>/<file>`.
 */
export async function startFakeHub(repo: string, commit: string, src: string): Promise<FakeHub> {
  const files = new Map(readdirSync(src).map((f) => [f, readFileSync(join(src, f))]));
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    requests.push(url.pathname + url.search);
    if (
      url.pathname === `/api/models/${repo}/revision/main` ||
      url.pathname === `/api/models/${repo}/revision/${commit}`
    ) {
      const siblings = [...files].map(([f, b]) =>
        f.endsWith('.safetensors')
          ? {
              rfilename: f,
              size: b.length,
              blobId: gitBlobId(Buffer.from('pointer')),
              lfs: { sha256: sha256(b), size: b.length },
            }
          : { rfilename: f, size: b.length, blobId: gitBlobId(b) },
      );
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ id: repo, sha: commit, siblings }));
      return;
    }
    const prefix = `/${repo}/resolve/${commit}/`;
    const body = url.pathname.startsWith(prefix) ? files.get(url.pathname.slice(prefix.length)) : undefined;
    if (!body) {
      res.writeHead(404).end('Entry not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length) }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A URL where nothing listens (a port that was free a moment ago): the hub unreachable. */
export async function closedEndpoint(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}`;
}
