import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join, sep } from 'node:path';

/**
 * The Hugging Face hub cache, the one Python's huggingface_hub and transformers use, so that they
 * and steerd share one copy of a model:
 *
 *   <hub cache>/models--{owner}--{name}/refs/{revision}       the commit a branch or tag resolved to
 *   <hub cache>/models--{owner}--{name}/snapshots/{commit}/   the files: symlinks into ../../blobs
 *   <hub cache>/models--{owner}--{name}/blobs/{etag}          SHA-256 (LFS files) or git blob id
 *
 * The folder is named after the id that was asked for: `from_pretrained("gpt2-xl")` writes
 * `models--gpt2-xl`, `from_pretrained("openai-community/gpt2-xl")` writes
 * `models--openai-community--gpt2-xl`; callers pass every spelling of a repository to look in.
 * steerd reads the cache here and writes to it only when downloading (src/model/hub.ts): blobs,
 * snapshot symlinks and refs, as huggingface_hub does. The graphs it builds go elsewhere
 * ({@link servingDir}).
 */

/**
 * The hub cache, found as huggingface_hub finds it: `$HF_HUB_CACHE`, else the older
 * `$HUGGINGFACE_HUB_CACHE`, else `hub/` in the Hugging Face home (`$HF_HOME`, else
 * `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`). A leading `~` is the home directory.
 */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const set = (v: string | undefined) => (v ? expandHome(v) : undefined);
  const home = set(env.HF_HOME) ?? join(set(env.XDG_CACHE_HOME) ?? join(homedir(), '.cache'), 'huggingface');
  return set(env.HF_HUB_CACHE) ?? set(env.HUGGINGFACE_HUB_CACHE) ?? join(home, 'hub');
}

/** `HF_HUB_OFFLINE` set to 1, true, yes or on (any case), as huggingface_hub reads it: no download. */
export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'TRUE', 'YES', 'ON'].includes((env.HF_HUB_OFFLINE ?? '').trim().toUpperCase());
}

const expandHome = (p: string) => (p === '~' || p.startsWith(`~${sep}`) ? join(homedir(), p.slice(1)) : p);

/** `models--{owner}--{name}` (or `models--{name}` for a legacy id without an owner). */
export const repoFolder = (id: string): string => `models--${id.split('/').join('--')}`;

const COMMIT = /^[0-9a-f]{40}$/;
const ALL = ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt'];

/**
 * The files steerd needs of a checkpoint directory that are not there (a dangling symlink counts as
 * missing): config.json, model.safetensors, and vocab.json + merges.txt unless tokenizer.json is.
 */
export function missingFiles(dir: string): string[] {
  const has = (f: string) => existsSync(join(dir, f));
  const missing = ['config.json', 'model.safetensors'].filter((f) => !has(f));
  if (!has('tokenizer.json')) missing.push(...['vocab.json', 'merges.txt'].filter((f) => !has(f)));
  return missing;
}

/** A list of missing files in words ("vocab.json, merges.txt (or tokenizer.json)"). */
export function describeMissing(missing: string[]): string {
  const tokenizer = missing.includes('vocab.json') || missing.includes('merges.txt');
  return `${missing.join(', ')}${tokenizer ? ' (or tokenizer.json)' : ''}`;
}

/** One repository folder of the hub cache, looked at for one revision. */
export interface CachedRevision {
  /** The repository id the folder is named after. */
  id: string;
  /** `<hub cache>/models--...` */
  repoDir: string;
  /** The commit the revision names (itself when a commit, else refs/{revision}), when known. */
  commit?: string;
  /** `<repoDir>/snapshots/<commit>`, when the commit is known. */
  dir?: string;
  /** What steerd needs and the snapshot lacks (everything when there is no snapshot). */
  missing: string[];
  /** Where this looked and what it found, in words (for error messages). */
  note: string;
}

/** Looks for a revision of one repository in the hub cache. */
export function lookupRevision(hubCache: string, id: string, revision: string): CachedRevision {
  const repoDir = join(hubCache, repoFolder(id));
  const all = [...ALL];
  if (!existsSync(repoDir)) return { id, repoDir, missing: all, note: `${repoDir}: absent` };
  let commit: string | undefined;
  if (COMMIT.test(revision)) commit = revision;
  else {
    const ref = join(repoDir, 'refs', revision);
    if (existsSync(ref)) commit = readFileSync(ref, 'utf8').trim();
    if (!commit) return { id, repoDir, missing: all, note: `${repoDir}: no refs/${revision}` };
  }
  const dir = join(repoDir, 'snapshots', commit);
  const missing = missingFiles(dir);
  const note = missing.length ? `${dir}: lacks ${describeMissing(missing)}` : `${dir}: complete`;
  return { id, repoDir, commit, dir, missing, note };
}

/**
 * Looks for a revision in the folders of every spelling of a repository, in order. `hit` is the
 * first complete snapshot; `partial` the first folder that exists without one (where a download
 * should go, to reuse its blobs and resume its partial files); `looked` says what each held.
 */
export function findInHubCache(
  hubCache: string,
  ids: string[],
  revision: string,
): { hit?: CachedRevision; partial?: CachedRevision; looked: string[] } {
  const found = ids.map((id) => lookupRevision(hubCache, id, revision));
  return {
    hit: found.find((r) => r.dir && r.missing.length === 0),
    partial: found.find((r) => existsSync(r.repoDir)),
    looked: found.map((r) => r.note),
  };
}

// ---------------------------------------------------------------------------------------------
// Serving a snapshot.

/**
 * The files of a checkpoint directory that the graph and the engine read.
 * Weights are read by ONNX Runtime, the rest by steerd itself.
 */
const SERVED = [
  'config.json',
  'model.safetensors',
  'vocab.json',
  'merges.txt',
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
];

/**
 * The directory steerd serves a checkpoint from, where the engine writes its graphs
 * (model.onnx, model.serve.onnx: src/model/graph.ts buildGraph, src/engine/runner.ts).
 *
 * This is where the decision about graphs and the hub cache lives. A graph's weights are ONNX
 * external data whose location is `model.safetensors`, resolved relative to the graph's folder, and
 * ONNX Runtime (1.30) refuses the initializer when the canonical path (symlinks followed) leaves
 * that folder: "External data path escapes model directory". In a hub-cache snapshot
 * model.safetensors is a symlink into ../../blobs, so a graph written into the snapshot is refused,
 * and so is one beside a symlink to the snapshot's file. So:
 *
 * - A hub-cache snapshot (`.../models--{owner}--{name}/snapshots/{commit}`) is served from
 *   `<steerd cache>/hub/models--{owner}--{name}/{commit}/`: hard links to the snapshot's blobs
 *   (the same inode: no copy, no extra space, and a regular file inside the graph's folder for
 *   ONNX Runtime) and the graphs. When a hard link cannot be made (another filesystem, or a blob
 *   owned by someone else under fs.protected_hardlinks) the file is copied, and `log` says so.
 *   Nothing is written into the hub cache: its symlinks, blobs and refs stay as huggingface_hub
 *   wrote them, and Python keeps using it. A blob deleted from the hub cache (`hf cache delete`)
 *   keeps its data on disk while steerd's link remains; the folders of revisions that are no
 *   longer in the hub cache are removed whenever a snapshot of the same repository is served.
 * - Any other directory whose model.safetensors resolves outside it is served the same way from
 *   `<steerd cache>/linked/<hash of its real path>/`.
 * - Any other directory (a checkpoint of real files, the old steerd cache, `tiny`) is served in
 *   place: the graphs go beside model.safetensors, as before.
 */
export function servingDir(dir: string, steerdCache: string, log: (m: string) => void = () => {}): string {
  const real = realpathSync(dir);
  const snapshot = /^(.*)[/\\](models--[^/\\]+)[/\\]snapshots[/\\]([^/\\]+)$/.exec(real);
  let target: string;
  if (snapshot) {
    const [, hubCache, folder, commit] = snapshot;
    target = join(steerdCache, 'hub', folder, commit);
    pruneServed(join(steerdCache, 'hub', folder), join(hubCache, folder), commit);
  } else {
    const weights = join(real, 'model.safetensors');
    if (!existsSync(weights) || dirname(realpathSync(weights)) === real) return dir;
    target = join(steerdCache, 'linked', createHash('sha256').update(real).digest('hex').slice(0, 16));
  }
  mkdirSync(target, { recursive: true });
  for (const f of SERVED) {
    const from = join(real, f);
    if (existsSync(from)) linkOrCopy(realpathSync(from), join(target, f), !!snapshot, log);
    else rmSync(join(target, f), { force: true });
  }
  return target;
}

/**
 * Makes `to` the same file as `from`: a hard link, else a copy. Atomic (temp name + rename).
 * `immutable`: `from` is a blob of a snapshot, named by its content, so a copy of the same size
 * made by an earlier start is the same file.
 */
function linkOrCopy(from: string, to: string, immutable: boolean, log: (m: string) => void): void {
  const src = statSync(from);
  const dst = statSync(to, { throwIfNoEntry: false });
  if (dst && ((dst.ino === src.ino && dst.dev === src.dev) || (immutable && dst.size === src.size))) return;
  const tmp = `${to}.${process.pid}.tmp`;
  rmSync(tmp, { force: true });
  try {
    linkSync(from, tmp);
  } catch (e) {
    log(
      `${basename(to)}: no hard link possible to ${from} (${(e as NodeJS.ErrnoException).code}); copying ${src.size} bytes to ${to}`,
    );
    copyFileSync(from, tmp);
  }
  renameSync(tmp, to);
}

/** Removes steerd's serving folders of a repository whose revision is gone from the hub cache. */
function pruneServed(servedRepo: string, hubRepo: string, keep: string): void {
  if (!existsSync(servedRepo)) return;
  for (const commit of readdirSync(servedRepo)) {
    if (commit === keep || existsSync(join(hubRepo, 'snapshots', commit))) continue;
    if (lstatSync(join(servedRepo, commit)).isDirectory())
      rmSync(join(servedRepo, commit), { recursive: true, force: true });
  }
}
