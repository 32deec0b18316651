// `npm test`: the suite through tap, with coverage of every process and thread it starts, then the
// ten slowest test files.
//
// Coverage is V8's own (NODE_V8_COVERAGE, inherited by the test files' processes, the engine's
// worker threads and the `steerd worker` children they spawn), mapped back to the TypeScript
// through the source maps tsx writes, and reported by c8 over every file under src/ and routes/:
// a file no test loads shows as 0 %. The thresholds in package.json "c8" are held on the whole.
//
//   npm test                      every suite, coverage checked
//   npm test -- test/x.test.ts    those files (or folders) only; coverage not checked: a part says little
//   npm test -- --disable-coverage, or any other tap option, passed through
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const root = join(import.meta.dirname, '..');
const args = process.argv.slice(2);
const bin = (name: string) => join(root, 'node_modules', '.bin', name);
const files = args.filter((a) => !a.startsWith('-') && existsSync(a));
const coverage = files.length === 0 && !args.includes('--disable-coverage');
const v8Dir = join(root, '.tap', 'v8-coverage');
const results = join(root, '.tap', 'test-results');

// tap builds its Test class with the plugins it is configured with, but the first run after an
// install still loads the test files the old way (the runner already holds the default plugins:
// TypeScript through ts-node, the module mock): build it first when it still has a plugin we leave out.
const built = join(root, 'node_modules', '@tapjs', 'test', 'test-built', 'dist', 'esm', 'index.js');
const signature = /export const signature = `([^`]*)`/.exec(readFileSync(built, 'utf8'))?.[1] ?? '';
const pkgTap = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).tap as { plugin?: string[] };
const excluded = (pkgTap.plugin ?? []).filter((p) => p.startsWith('!')).map((p) => p.slice(1));
if (excluded.some((p) => signature.split('\n').includes(p))) {
  console.log('# building tap with the configured plugins (once after an install)');
  const b = spawnSync(bin('tap'), ['build'], { stdio: ['ignore', 'ignore', 'inherit'], cwd: root });
  if (b.status !== 0) process.exit(b.status ?? 1);
}

rmSync(v8Dir, { recursive: true, force: true });
if (coverage) mkdirSync(v8Dir, { recursive: true });
const started = Date.now();
// tap's own coverage stays off: it sees only the test files' main threads
// Three test files run at a time on two cores (much of the suite waits: on Redis, on child
// processes, on timeouts): each engine they start gets one intra-op thread (STEERD_THREADS, unless
// set), so that the files share the cores instead of fighting over them.
const env = { STEERD_THREADS: '1', ...process.env, ...(coverage && { NODE_V8_COVERAGE: v8Dir }) };
const tap = spawnSync(bin('tap'), ['--disable-coverage', ...args], { stdio: 'inherit', cwd: root, env });
const wall = (Date.now() - started) / 1000;

/** Each test file this run ran: its time (tap's closing `# time=` line) and whether it passed. */
function fileResults() {
  const out: { file: string; s: number; ok: boolean }[] = [];
  const walk = (dir: string) => {
    for (const e of existsSync(dir) ? readdirSync(dir, { withFileTypes: true }) : []) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.tap') && statSync(p).mtimeMs >= started) {
        const text = readFileSync(p, 'utf8');
        const time = /^# time=([\d.]+)ms\s*$/m.exec(text.split('\n').slice(-4).join('\n'));
        const failed = /^(not ok \d|Bail out!)/m.test(text);
        out.push({
          file: relative(results, p).replace(/\.tap$/, ''),
          s: Number(time?.[1] ?? Number.NaN) / 1000,
          ok: !failed,
        });
      }
    }
  };
  walk(results);
  return out.sort((a, b) => b.s - a.s);
}

/** Source files with nothing left once their types are erased: nothing of them runs, nothing to cover. */
function typeOnly(dirs: string[]): string[] {
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const js = ts.transpileModule(readFileSync(join(root, p), 'utf8'), {
          compilerOptions: {
            module: ts.ModuleKind.ESNext,
            target: ts.ScriptTarget.ES2022,
            verbatimModuleSyntax: false,
          },
        }).outputText;
        if (!js.replace(/^\s*export\s*\{\s*\};?\s*$/gm, '').trim()) found.push(p);
      }
    }
  };
  for (const d of dirs) walk(d);
  return found;
}

const ran = fileResults();
if (ran.length) {
  console.log(`\n# the ten slowest test files (of ${ran.length}; ${wall.toFixed(0)} s in all)`);
  for (const r of ran.slice(0, 10))
    console.log(`${r.s.toFixed(1).padStart(7)} s  ${r.file}${r.ok ? '' : '  (failed)'}`);
}

let status = tap.status ?? 1;
if (coverage && tap.status === 0) {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const config = pkg.c8 as { include: string[]; exclude?: string[] };
  const dirs = [...new Set(config.include.map((g) => g.split('/')[0]))];
  const exclude = [...(config.exclude ?? []), ...typeOnly(dirs)];
  console.log(`\n# coverage of ${dirs.join(', ')}: every process and thread the suite started (tap's own is off)`);
  const report = spawnSync(
    bin('c8'),
    ['report', '--temp-directory', v8Dir, ...exclude.flatMap((e) => ['--exclude', e])],
    { stdio: 'inherit', cwd: root },
  );
  status = report.status ?? 1;
  if (status !== 0) console.log('# coverage below the thresholds in package.json "c8"');
}
const failed = ran.filter((r) => !r.ok).length;
console.log(`test files: ${ran.length - failed} passed, ${failed} failed`);
process.exit(status);
