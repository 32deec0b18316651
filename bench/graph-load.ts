/**
 * Measures, on a GPT-2-small-shaped generated checkpoint (12 layers, 768 wide, 12 heads, 124M
 * parameters): graph build time and peak RSS, and ONNX Runtime session load time and RSS against
 * the size of the weights. Each phase runs in a fresh process so that peaks do not mix.
 *
 *   npm run bench:load [-- --dir DIR --layers 12 --embd 768 --heads 12 --ctx 1024 --out FILE]
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    dir: { type: 'string', default: join(tmpdir(), 'steerd-bench-gpt2-small') },
    layers: { type: 'string', default: '12' },
    embd: { type: 'string', default: '768' },
    heads: { type: 'string', default: '12' },
    ctx: { type: 'string', default: '1024' },
    out: { type: 'string', default: 'bench/results/graph-load.json' },
    phase: { type: 'string' },
  },
});

const mb = (b: number) => b / 2 ** 20;

async function phase(name: string): Promise<Record<string, number>> {
  const t0 = performance.now();
  if (name === 'baseline') {
    await import('onnxruntime-node');
  } else if (name === 'build') {
    const { buildGraph } = await import('../src/model/graph.ts');
    buildGraph(o.dir!, { force: true });
  } else if (name === 'load') {
    const ort = await import('onnxruntime-node');
    const before = process.memoryUsage().rss;
    const t1 = performance.now();
    const s = await ort.InferenceSession.create(join(o.dir!, 'model.onnx'));
    const ms = performance.now() - t1;
    const rss = process.memoryUsage().rss;
    await s.release();
    return { ms, rss_before_mb: mb(before), rss_after_mb: mb(rss), peak_rss_mb: process.resourceUsage().maxRSS / 1024 };
  }
  return {
    ms: performance.now() - t0,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    rss_after_mb: mb(process.memoryUsage().rss),
  };
}

if (o.phase) {
  process.stdout.write(JSON.stringify(await phase(o.phase)));
} else {
  if (!existsSync(join(o.dir!, 'model.safetensors'))) {
    const { writeTinyCheckpoint } = await import('../src/model/gpt2/tiny.ts');
    writeTinyCheckpoint(o.dir!, { layers: +o.layers!, embd: +o.embd!, heads: +o.heads!, ctx: +o.ctx! });
  }
  const self = fileURLToPath(import.meta.url);
  const run = (p: string) =>
    JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', self, '--dir', o.dir!, '--phase', p], { encoding: 'utf8' }),
    );
  const weights = mb(statSync(join(o.dir!, 'model.safetensors')).size);
  const baseline = run('baseline');
  const build = run('build');
  const load = run('load');
  const graph = statSync(join(o.dir!, 'model.onnx')).size;
  const result = {
    shape: { layers: +o.layers!, embd: +o.embd!, heads: +o.heads!, ctx: +o.ctx! },
    weights_mb: weights,
    graph_file_kb: graph / 1024,
    node_ort_baseline_peak_rss_mb: baseline.peak_rss_mb,
    build_ms: build.ms,
    build_peak_rss_mb: build.peak_rss_mb,
    load_ms: load.ms,
    load_rss_added_mb: load.rss_after_mb - load.rss_before_mb,
    load_peak_rss_mb: load.peak_rss_mb,
    load_rss_added_over_weights: (load.rss_after_mb - load.rss_before_mb) / weights,
    load_peak_over_weights: (load.peak_rss_mb - baseline.peak_rss_mb) / weights,
  };
  console.table(
    Object.entries(result).map(([k, v]) => ({
      measure: k,
      value: typeof v === 'number' ? +v.toFixed(2) : JSON.stringify(v),
    })),
  );
  mkdirSync(dirname(o.out!), { recursive: true });
  writeFileSync(o.out!, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${o.out}`);
}
