import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { isNode, parse, parseDocument, visit } from 'yaml';
import type { Service } from '../src/api/service.ts';
import { buildApp } from '../src/app.ts';
import { program } from '../src/cli/main.ts';
import { loadConfig } from '../src/config.ts';
import { modelFreeService } from '../src/spec.ts';

// No Docker engine in this suite (docker/test-image.sh builds and runs the image): parse the
// Dockerfile, the compose files, .env.example and the README, and check what they run, publish and
// set against the code and each other.
const rootUrl = new URL('..', import.meta.url);
const root = fileURLToPath(rootUrl);
const read = (path: string) => readFileSync(new URL(path, rootUrl), 'utf8');
const pkg = JSON.parse(read('package.json')) as {
  bin: { steerd: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  scripts: Record<string, string>;
  allowScripts: Record<string, boolean>;
};
const cliCommands = program().commands.map((c) => c.name());
const defaults = loadConfig({});

// ---------------------------------------------------------------------------------------------
// The Dockerfile, as stages of instructions (continuations joined, comments dropped).

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  base: string;
  name?: string;
  body: Instruction[];
}
const dockerfile = read('Dockerfile');
const globalArgs: Record<string, string> = {};
const stages: Stage[] = [];
for (const line of dockerfile.replace(/\\\n/g, ' ').split('\n')) {
  const l = line.trim();
  if (!l || l.startsWith('#')) continue;
  const [, op, args] = /^(\w+)\s+(.*)$/.exec(l)!;
  const ins = { op: op.toUpperCase(), args: args.trim() };
  if (ins.op === 'FROM') {
    const [, base, name] = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args)!;
    stages.push({ base, name, body: [] });
  } else if (stages.length === 0) {
    if (ins.op === 'ARG') {
      const [k, v = ''] = ins.args.split('=');
      globalArgs[k] = v;
    }
  } else stages.at(-1)!.body.push(ins);
}
const stage = (name: string) => stages.find((s) => s.name === name)!;
const final = stages.at(-1)!;
const expand = (s: string, args: Record<string, string>) =>
  s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a, b) => args[a ?? b] ?? '');
const ops = (s: Stage, op: string) => s.body.filter((i) => i.op === op).map((i) => i.args);
/** `ENV K=V K2=V2` pairs of a stage. */
const envOf = (s: Stage) =>
  Object.fromEntries(ops(s, 'ENV').flatMap((a) => [...a.matchAll(/(\w+)=(\S+)/g)].map(([, k, v]) => [k, v])));
/** The stage a build with these args ends in, and the stages it goes through. */
function chain(variant: string): Stage[] {
  const args = { ...globalArgs, VARIANT: variant };
  const out: Stage[] = [];
  let s: Stage | undefined = final;
  while (s) {
    out.unshift(s);
    const base = expand(s.base, args);
    s = stages.find((x) => x.name === base);
  }
  return out;
}
const imageOf = (variant: string) => expand(chain(variant)[0].base, { ...globalArgs, VARIANT: variant });
const runtimeEnv = (variant: string) => Object.assign({}, ...chain(variant).map(envOf)) as Record<string, string>;

// ---------------------------------------------------------------------------------------------
// Which environment variables the code reads: everything loadConfig asks of its environment,
// and the few read from process.env elsewhere (the hub: HF_ENDPOINT, HF_TOKEN).

const configVars = new Set<string>();
loadConfig(
  new Proxy({} as NodeJS.ProcessEnv, {
    get: (_t, k) => {
      if (typeof k === 'string') configVars.add(k);
      return undefined;
    },
  }),
);
const sources = (dir: string): string[] =>
  readdirSync(join(root, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|js|mjs)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
const codeFiles = [...sources('src'), ...sources('routes'), ...sources('bin')];
const processEnvVars = new Set(
  codeFiles.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/process\.env\.([A-Z_][A-Z0-9_]*)/g)].map((m) => m[1])),
);
const knownVars = new Set([...configVars, ...processEnvVars]);
/** Read by the NVIDIA container runtime when the container starts, not by steerd. */
const CONTAINER_RUNTIME_VARS = new Set(['NVIDIA_DRIVER_CAPABILITIES']);
const readme = read('README.md');

t.test('the code reads its settings from the environment', async (t) => {
  t.ok(configVars.size >= 20, `loadConfig reads ${configVars.size} variables`);
  for (const k of ['HOST', 'PORT', 'REDIS_URL', 'STEERD_PROVIDER', 'STEERD_DRAIN_TIMEOUT_MS'])
    t.ok(configVars.has(k), k);
});

// ---------------------------------------------------------------------------------------------

t.test('the image runs the package bin with a command the CLI has', async (t) => {
  const entry = JSON.parse(ops(final, 'ENTRYPOINT')[0]) as string[];
  const cmd = JSON.parse(ops(final, 'CMD')[0]) as string[];
  t.same(entry.slice(0, 2), ['tini', '--'], 'tini is the init process');
  t.equal(entry.slice(2).join(' '), `node ${pkg.bin.steerd}`);
  t.same(cmd, ['serve'], 'serve by default');
  for (const c of ['serve', 'worker']) t.ok(cliCommands.includes(c), `"${c}" is a steerd command`);
  for (const variant of ['gpu', 'cpu']) {
    const body = chain(variant).flatMap((s) => s.body);
    t.ok(
      body.some((i) => i.op === 'RUN' && /apt-get install[^&]*\btini\b/.test(i.args)),
      `${variant}: installs tini`,
    );
    t.ok(
      body.some((i) => i.op === 'RUN' && /useradd .*\bsteerd\b/.test(i.args)),
      `${variant}: creates the user`,
    );
  }
  const users = ops(final, 'USER');
  t.same(users, ['steerd'], 'runs as the non-root user');
});

t.test('one Dockerfile, two variants: CUDA 12 + cuDNN 9 with Node 24, or CPU only', async (t) => {
  t.equal(globalArgs.VARIANT, 'gpu', 'GPU unless --build-arg VARIANT=cpu');
  // biome-ignore lint/suspicious/noTemplateCurlyInString: the Dockerfile's own variable
  t.equal(final.base, 'runtime-${VARIANT}', 'the build argument picks the runtime base');
  const gpu = imageOf('gpu');
  const cpu = imageOf('cpu');
  t.match(gpu, /^nvidia\/cuda:12\.[\d.]+-cudnn-runtime-ubuntu22\.04$/, `gpu base ${gpu}`);
  t.match(cpu, /^node:24-bookworm-slim$/, `cpu base ${cpu}`);
  t.notMatch(
    chain('cpu')
      .map((s) => s.base)
      .join(' '),
    /cuda/,
    'no CUDA in the CPU image',
  );
  // Node in the CUDA image: the official binary, from an official node:24 image (glibc 2.28+; Ubuntu 22.04 has 2.35)
  const copyNode = ops(stage('runtime-gpu'), 'COPY').find((a) => a.includes('/usr/local/bin/node'));
  t.ok(copyNode, 'the GPU base copies the node binary');
  const from = /--from=(\S+)/.exec(copyNode ?? '')?.[1] ?? '';
  const fromImage = stages.find((s) => s.name === from)?.base ?? from;
  t.match(expand(fromImage, globalArgs), /^node:24[-.\w]*$/, 'from an official Node 24 image');
  t.notMatch(dockerfile, /curl[^\n]*\|\s*(ba)?sh/, 'no curl | bash');
  t.equal(runtimeEnv('gpu').STEERD_PROVIDER, 'cuda', 'the GPU image runs the CUDA provider');
  t.equal(runtimeEnv('cpu').STEERD_PROVIDER, undefined, 'the CPU image keeps the default (cpu)');
  // --provider webgpu on NVIDIA: the Vulkan loader, and the driver's Vulkan part mounted
  t.match(ops(stage('runtime-gpu'), 'RUN').join('\n'), /apt-get install[^\n]*\blibvulkan1\b/, 'the Vulkan loader');
  const caps = (runtimeEnv('gpu').NVIDIA_DRIVER_CAPABILITIES ?? '').split(',');
  t.ok(
    ['compute', 'utility', 'graphics'].every((c) => caps.includes(c)),
    `driver capabilities ${caps}`,
  );
});

t.test('the build stage installs production dependencies; the runtime stage copies them', async (t) => {
  const build = stage('build');
  t.ok(build, 'a build stage');
  const install = ops(build, 'RUN').find((a) => a.includes('npm ci'))!;
  t.match(install, /npm ci --omit=dev/, 'dev dependencies left out');
  t.ok(
    ops(build, 'COPY').some((a) => /package-lock\.json/.test(a)),
    'installs from the lockfile',
  );
  t.ok(
    ops(final, 'COPY').some((a) => a.startsWith('--from=build ') && a.includes('/app/node_modules')),
    'node_modules from the build stage',
  );
  for (const dir of ['bin', 'src', 'routes', 'playground'])
    t.ok(
      ops(final, 'COPY').some((a) => a.startsWith(`${dir} `)),
      `copies ${dir}`,
    );
  t.notOk(
    ops(final, 'COPY').some((a) => /^test\b/.test(a)),
    'no tests in the image',
  );

  // ONNXRUNTIME_NODE_INSTALL=cuda12 in the GPU build only: run the install step with a stand-in npm
  const bin = mkdtempSync(join(tmpdir(), 'steerd-npm-'));
  t.teardown(() => rmSync(bin, { recursive: true, force: true }));
  writeFileSync(
    join(bin, 'npm'),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell script's variable
    '#!/bin/sh\necho "npm $* [ONNXRUNTIME_NODE_INSTALL=${ONNXRUNTIME_NODE_INSTALL:-}]"\n',
  );
  chmodSync(join(bin, 'npm'), 0o755);
  const run = (variant: string) => {
    const env: NodeJS.ProcessEnv = { PATH: `${bin}:${process.env.PATH}`, VARIANT: variant };
    const r = spawnSync('/bin/sh', ['-c', install], { env, encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  // the GPU build opts in to the CUDA 12 providers after the install; no build downloads them during it
  const gpu = run('gpu');
  const cpu = run('cpu');
  for (const [variant, out] of [
    ['gpu', gpu],
    ['cpu', cpu],
  ])
    t.match(out, /npm ci --omit=dev.*\[ONNXRUNTIME_NODE_INSTALL=skip\]/, `${variant}: npm ci skips the CUDA download`);
  t.match(gpu, /npm run install:cuda/, 'gpu: onnxruntime-node fetches its CUDA 12 providers');
  t.notMatch(cpu, /install:cuda/, 'cpu: no CUDA download');
  t.match(
    pkg.scripts['install:cuda'],
    /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install/,
  );
  t.equal(pkg.allowScripts['onnxruntime-node'], false, "npm's script policy never runs its download");
  t.notOk(existsSync(join(root, '.npmrc')), 'no .npmrc (npm 12 will not read its custom keys)');
  for (const s of stages.filter((s) => s !== build)) {
    t.notMatch(
      s.body.map((i) => i.args).join('\n'),
      /ONNXRUNTIME_NODE_INSTALL/,
      `${s.name ?? 'runtime'}: install-time only`,
    );
  }

  // --omit=dev is safe: everything the runtime imports is a regular dependency
  t.ok(pkg.dependencies.tsx, 'tsx (which runs the TypeScript sources) is a dependency');
  const builtins = new Set(builtinModules);
  const imported = new Set<string>();
  for (const f of codeFiles) {
    const text = readFileSync(f, 'utf8');
    const specs = [
      ...[...text.matchAll(/^\s*(?:import|export)\s+(?!type\b)[^'"]*?\bfrom\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]),
      ...[...text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]),
      ...[...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]),
    ];
    for (const s of specs) {
      if (s.startsWith('.') || s.startsWith('node:') || builtins.has(s)) continue;
      imported.add(s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]);
    }
  }
  t.ok(imported.has('tsx') && imported.has('onnxruntime-node'), 'the scan finds the imports');
  for (const name of imported) t.ok(pkg.dependencies[name], `${name} is a dependency (not dev)`);
});

t.test('environment, port and volumes agree with the code', async (t) => {
  for (const variant of ['gpu', 'cpu']) {
    const env = runtimeEnv(variant);
    for (const k of Object.keys(env))
      t.ok(configVars.has(k) || CONTAINER_RUNTIME_VARS.has(k), `${variant}: ENV ${k} is a setting src/config.ts reads`);
    const config = loadConfig(env);
    t.equal(config.host, '0.0.0.0', 'listens on all interfaces in the container');
    t.equal(config.port, defaults.port, 'on the default port');
    t.same(ops(final, 'EXPOSE'), [String(config.port)], 'EXPOSE is the port');
    const volumes = JSON.parse(ops(final, 'VOLUME')[0]) as string[];
    t.same(volumes.sort(), [config.dataDir, config.cacheDir].sort(), 'the data and cache directories are volumes');
  }
});

// ---------------------------------------------------------------------------------------------
// The health check: an exec-form script that asks /readyz of `serve` and passes a worker.

t.test('the health check asks /readyz of serve, a route the app serves; a worker passes', async (t) => {
  const hc = ops(final, 'HEALTHCHECK')[0];
  const [, cmd] = /\bCMD\s+(\[.*\])$/.exec(hc)!;
  const argv = JSON.parse(cmd) as string[];
  t.equal(argv[0], 'node');
  const script = argv[1];
  t.ok(
    ops(final, 'COPY').some((a) => a.startsWith(script)),
    `${script} is copied into the image`,
  );
  t.ok(existsSync(join(root, script)), `${script} exists`);
  t.match(readFileSync(join(root, script), 'utf8'), /\/readyz/);
  const interval = Number.parseInt(/--start-period=(\d+)m/.exec(hc)?.[1] ?? '0', 10);
  t.ok(interval >= 10, 'the start period leaves time for a first model download');

  const ready = { value: true };
  const svc = modelFreeService({
    config: { ...defaults, logLevel: 'silent' },
    engine: {
      get ready() {
        return ready.value;
      },
    } as Service['engine'],
    store: {} as Service['store'],
  });
  const app = await buildApp(svc, { logger: false });
  t.teardown(() => app.close());
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.ok(app.hasRoute({ method: 'GET', url: '/readyz' }), 'GET /readyz is a route');
  const port = (app.server.address() as { port: number }).port;

  const check = (args: string[], PORT: string) =>
    new Promise<number>((resolve) => {
      execFile(
        process.execPath,
        [join(root, script), ...args],
        { env: { ...process.env, PORT }, cwd: root, timeout: 20_000 },
        (err) => resolve(err ? ((err as { code?: number }).code ?? -1) : 0),
      );
    });
  t.equal(await check(['serve'], String(port)), 0, 'serve, ready: healthy');
  t.equal(await check(['serve', '--port', String(port)], '1'), 0, 'serve --port N: asks port N');
  t.equal(await check([`serve`, `--port=${port}`], '1'), 0, 'serve --port=N: asks port N');
  ready.value = false;
  t.equal(await check(['serve'], String(port)), 1, 'serve, engine not running: unhealthy');
  svc.draining = true;
  ready.value = true;
  t.equal(await check(['serve'], String(port)), 1, 'serve, draining: unhealthy');
  await app.close();
  t.equal(await check(['serve'], String(port)), 1, 'serve, nothing listening: unhealthy');
  t.equal(await check(['worker'], String(port)), 0, 'worker (no HTTP server): healthy while it runs');
});

// ---------------------------------------------------------------------------------------------
// Compose: the GPU stack, and the CPU override.

interface ComposeService {
  image?: string;
  build?: { context: string; args?: Record<string, string> };
  command?: string[];
  ports?: string[];
  environment?: Record<string, string | number>;
  env_file?: { path: string; required?: boolean }[];
  volumes?: string[];
  stop_grace_period?: string;
  healthcheck?: { test?: string[]; disable?: boolean; start_period?: string };
  depends_on?: Record<string, { condition: string }>;
  deploy?: {
    resources?: {
      reservations?: { devices?: { driver?: string; count?: number | string; capabilities?: string[] }[] };
    };
  };
  profiles?: string[];
}
interface Compose {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}
const compose = parse(read('docker/compose.yaml'), { merge: true }) as Compose;
const cpuDoc = parseDocument(read('docker/compose.cpu.yaml'), { merge: true, logLevel: 'silent' });
const cpu = cpuDoc.toJS() as Compose;
/** A service's `environment`, as the strings a process sees. */
const stringEnv = (s: ComposeService) =>
  Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, String(v)]));
const isSteerd = (s: ComposeService) => /^steerd:/.test(s.image ?? '');
const steerdServices = Object.entries(compose.services).filter(([, s]) => isSteerd(s));
const gpuDevices = (s: ComposeService) =>
  (s.deploy?.resources?.reservations?.devices ?? []).filter(
    (d) => d.driver === 'nvidia' && d.capabilities?.includes('gpu'),
  );
/** Go-style durations, as compose writes them: 45s, 1m30s, 500ms. */
const durationMs = (d: string) =>
  [...d.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)].reduce(
    (sum, [, n, u]) => sum + Number(n) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[u]!,
    0,
  );
const envFile = (path: string) =>
  Object.fromEntries(
    read(path)
      .split('\n')
      .map((l) => /^#?\s?([A-Z][A-Z0-9_]*)=(.*)$/.exec(l))
      .filter((m) => m !== null)
      .map((m) => [m[1], m[2]]),
  ) as Record<string, string>;

t.test('every compose service runs a CLI command of the one image', async (t) => {
  t.same(steerdServices.map(([n]) => n).sort(), ['api', 'embedded', 'worker']);
  for (const [name, s] of steerdServices) {
    t.ok(s.command && cliCommands.includes(s.command[0]), `${name}: "${s.command?.[0]}" is a steerd command`);
    t.equal(s.build?.context, '..', `${name}: builds the repository's Dockerfile`);
    t.equal(s.build?.args?.VARIANT, 'gpu', `${name}: the GPU image`);
    t.ok(existsSync(join(root, 'docker', s.build!.context, 'Dockerfile')));
  }
  t.same(compose.services.api.command, ['serve']);
  t.same(compose.services.worker.command, ['worker']);
});

t.test('compose: ports, environment and volumes agree with the code and the image', async (t) => {
  const imageEnv = runtimeEnv('gpu');
  for (const [name, s] of steerdServices) {
    const env = stringEnv(s);
    for (const k of Object.keys(env)) {
      t.ok(knownVars.has(k), `${name}: ${k} is a setting the code reads`);
      t.ok(readme.includes(`\`${k}\``), `${name}: ${k} is documented in the README's configuration table`);
    }
    const config = loadConfig({ ...imageEnv, ...env });
    t.equal(config.host, '0.0.0.0', `${name}: listens on all interfaces`);
    if (s.command![0] === 'serve') {
      t.same(s.ports, [`${config.port}:${config.port}`], `${name} publishes the port`);
      t.equal(String(config.port), ops(final, 'EXPOSE')[0], `${name}: the port the image exposes`);
    } else t.notOk(s.ports, `${name}: no port (no HTTP server)`);
    t.same(s.env_file, [{ path: '../.env', required: false }], `${name}: the root .env, optional`);
    const mounts = Object.fromEntries((s.volumes ?? []).map((v) => v.split(':').reverse()));
    t.ok(
      mounts[config.cacheDir!] && compose.volumes?.[mounts[config.cacheDir!]] !== undefined,
      `${name}: the model cache is a named volume`,
    );
    t.ok(
      mounts[config.dataDir] && compose.volumes?.[mounts[config.dataDir]] !== undefined,
      `${name}: the data directory is a named volume`,
    );
    const grace = durationMs(s.stop_grace_period ?? '0s');
    t.ok(
      grace > defaults.drainTimeoutMs,
      `${name}: stop_grace_period ${s.stop_grace_period} covers the drain timeout (${defaults.drainTimeoutMs} ms)`,
    );
  }
  t.equal(compose.services.api.environment?.REDIS_URL, 'redis://redis:6379', 'api: enqueues to the compose Redis');
  t.equal(compose.services.worker.environment?.REDIS_URL, 'redis://redis:6379', 'worker: consumes the compose Redis');
  t.equal(
    loadConfig({ REDIS_URL: String(compose.services.embedded.environment?.REDIS_URL) }).redisUrl,
    undefined,
    'embedded: no Redis, even if .env sets one',
  );
  t.equal(compose.services.worker.environment?.STEERD_PROVIDER, 'cuda');
});

t.test('compose: GPU reservations, Redis, health checks and dependencies', async (t) => {
  t.equal(gpuDevices(compose.services.worker).length, 1, 'the worker reserves a GPU');
  t.equal(gpuDevices(compose.services.embedded).length, 1, 'the embedded engine reserves a GPU');
  t.equal(gpuDevices(compose.services.api).length, 0, 'the API (enqueue only) needs none');
  t.same(compose.services.embedded.profiles, ['embedded'], 'embedded: only when asked for');

  const redis = compose.services.redis;
  const args = (redis.command ?? []).join(' ');
  t.match(args, /--appendonly yes/, 'redis: append-only');
  t.match(args, /--maxmemory-policy noeviction/, 'redis: noeviction (BullMQ)');
  t.match((redis.healthcheck?.test ?? []).join(' '), /redis-cli ping/, 'redis: health check');
  t.ok(
    redis.volumes?.some((v) => /^\w+:\/data$/.test(v) && compose.volumes?.[v.split(':')[0]] !== undefined),
    'redis: its data in a named volume',
  );

  const hasHealthcheck = (s: ComposeService) =>
    s.healthcheck?.disable !== true &&
    (Boolean(s.healthcheck?.test?.length) || (isSteerd(s) && ops(final, 'HEALTHCHECK').length > 0));
  for (const [name, s] of Object.entries(compose.services)) {
    for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
      t.ok(compose.services[dep], `${name} depends on ${dep}, a service`);
      if (condition === 'service_healthy')
        t.ok(
          hasHealthcheck(compose.services[dep]),
          `${name} waits for ${dep} to be healthy: ${dep} has a health check`,
        );
    }
  }
  t.equal(compose.services.worker.depends_on?.redis?.condition, 'service_healthy');
  t.equal(compose.services.api.depends_on?.redis?.condition, 'service_healthy');
  t.equal(compose.services.worker.healthcheck?.disable, true, 'worker: no health check (nothing to probe)');
  const api = compose.services.api.healthcheck!;
  t.same(
    api.test,
    ['CMD', 'node', JSON.parse(/\bCMD\s+(\[.*\])$/.exec(ops(final, 'HEALTHCHECK')[0])![1])[1], 'serve'],
    'api: the image script, as serve',
  );
  t.ok(durationMs(api.start_period ?? '0s') >= 10 * 60_000, 'api: time for a first model download');
});

t.test('the CPU variant: CPU image, cpu provider, no GPU, tiny model by default', async (t) => {
  t.same(cpuDoc.errors, [], 'parses');
  for (const [name, s] of Object.entries(cpu.services)) {
    t.ok(compose.services[name], `${name} overrides a service of compose.yaml`);
    t.equal(s.build?.args?.VARIANT, 'cpu', `${name}: the CPU image`);
    t.not(s.image, compose.services[name].image, `${name}: tagged apart from the GPU image`);
    t.equal(gpuDevices(s).length, 0, `${name}: no GPU reservation`);
    // the base's env_file is replaced: cpu.env first, so that the root .env overrides it
    const node = cpuDoc.getIn(['services', name, 'env_file'], true) as { tag?: string } | undefined;
    t.equal(node?.tag, '!override', `${name}: env_file replaced, not appended`);
    t.same(
      s.env_file,
      [{ path: 'cpu.env' }, { path: '../.env', required: false }],
      `${name}: cpu.env, then the root .env`,
    );
    for (const k of Object.keys(s.environment ?? {}))
      t.ok(knownVars.has(k) && readme.includes(`\`${k}\``), `${name}: ${k} is a documented setting`);
  }
  t.notMatch(read('docker/compose.cpu.yaml'), /devices|nvidia/, 'no GPU anywhere');
  for (const [name, s] of Object.entries(compose.services)) {
    if (gpuDevices(s).length === 0) continue;
    const node = cpuDoc.getIn(['services', name, 'deploy'], true) as { tag?: string } | undefined;
    t.equal(node?.tag, '!reset', `${name}: the GPU reservation is removed`);
    t.equal(cpu.services[name].environment?.STEERD_PROVIDER, 'cpu', `${name}: STEERD_PROVIDER=cpu`);
  }
  const cpuEnv = envFile('docker/cpu.env');
  t.same(cpuEnv, { STEERD_MODEL: 'tiny' }, 'the small random model unless .env says otherwise');
  for (const k of Object.keys(cpuEnv)) t.ok(configVars.has(k), `cpu.env: ${k} is a setting`);
});

/** The Compose release that first reads a feature the files use (docs.docker.com, compose-file). */
const COMPOSE_SINCE = {
  envFileRequired: '2.24.0', // env_file entries as `{ path, required }`
  '!override': '2.24.4',
} as const;
/** Tags Compose read before either. */
const OLDER_COMPOSE_TAGS = new Set(['!reset']);
const versionKey = (v: string) => v.split('.').map(Number) as [number, number, number];
const newer = (a: string, b: string) => {
  const [x, y] = [versionKey(a), versionKey(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i] > y[i];
  return false;
};

t.test('compose: the Compose release the files need is the one the README and the files name', async (t) => {
  const files = ['docker/compose.yaml', 'docker/compose.cpu.yaml'];
  const needs: [string, string][] = [];
  for (const f of files) {
    const doc = parseDocument(read(f), { merge: true, logLevel: 'silent' });
    t.same(doc.errors, [], `${f} parses`);
    const tags = new Set<string>();
    visit(doc, {
      Node: (_k, node) => {
        if (isNode(node) && node.tag) tags.add(node.tag);
      },
    });
    for (const tag of tags) {
      const since = COMPOSE_SINCE[tag as keyof typeof COMPOSE_SINCE];
      t.ok(since || OLDER_COMPOSE_TAGS.has(tag), `${f}: the tag ${tag} is one whose Compose release is known`);
      if (since) needs.push([`${tag} (${f})`, since]);
    }
    const services = (doc.toJS() as Compose).services;
    for (const [name, s] of Object.entries(services))
      if ((s.env_file ?? []).some((e) => typeof e === 'object' && 'required' in e))
        needs.push([`optional env_file (${f}, ${name})`, COMPOSE_SINCE.envFileRequired]);
  }
  t.ok(needs.length > 0, 'the files use features of recent Compose releases');
  const needed = needs.map(([, v]) => v).reduce((a, b) => (newer(b, a) ? b : a));
  t.comment(`needs Compose ${needed}: ${needs.map(([what, v]) => `${what} ${v}`).join(', ')}`);
  const stated = (text: string) => [...text.matchAll(/Compose (?:≥|>=) ?(\d+\.\d+\.\d+)/g)].map((m) => m[1]);
  t.ok(stated(readme).length > 0, 'the README names the Compose release the files need');
  for (const v of stated(readme)) t.equal(v, needed, `README: Compose ≥ ${v}`);
  for (const f of files) for (const v of stated(read(f))) t.equal(v, needed, `${f}: Compose >= ${v}`);
});

t.test("the README's Docker section: its commands, port, volumes and grace period", async (t) => {
  const section = readme.slice(readme.indexOf('## Docker and compose'), readme.indexOf('### GPU notes'));
  const lines = (cmd: string) =>
    [...section.matchAll(new RegExp(`^${cmd} (.*?)(?:\\s+#.*)?$`, 'gm'))].map((m) => m[1].split(/\s+/));

  // docker build: build arguments the Dockerfile declares, a variant it has a runtime stage for
  const builds = lines('docker build');
  t.ok(builds.length >= 2, 'docker build commands');
  for (const words of builds)
    for (const [i, w] of words.entries()) {
      if (w !== '--build-arg') continue;
      const [k, v] = words[i + 1].split('=');
      t.ok(k in globalArgs, `docker build --build-arg ${k}: an ARG of the Dockerfile`);
      if (k === 'VARIANT') t.ok(stage(`runtime-${v}`), `VARIANT=${v}: the stage runtime-${v} exists`);
    }

  // docker compose: the files exist, and every service it names is one of theirs
  const composes = lines('docker compose');
  t.ok(composes.length >= 4, 'docker compose commands');
  for (const words of composes) {
    const files = words.flatMap((w, i) => (w === '-f' ? [words[i + 1]] : []));
    t.ok(files.length > 0, `${words.join(' ')}: names its files`);
    for (const f of files) t.ok(existsSync(join(root, f)), `${f} exists`);
    const services = Object.assign(
      {},
      ...files.map((f) => (parse(read(f), { merge: true, logLevel: 'silent' }) as Compose).services),
    ) as Record<string, ComposeService>;
    const up = words.indexOf('up');
    const named: string[] = [];
    for (let i = up + 1; up >= 0 && i < words.length; i++) {
      if (words[i] === '--scale') named.push(words[++i].split('=')[0]);
      else if (!words[i].startsWith('-')) named.push(words[i]);
    }
    for (const n of named) t.ok(services[n], `${words.join(' ')}: ${n} is a service`);
  }

  // the API's port, as the README gives it
  const [published, target] = compose.services.api.ports![0].split(':');
  t.match(section, new RegExp(`the API \\(\`serve\`[^)]*\\bport ${published}\\)`), `the API on port ${published}`);
  t.equal(target, String(loadConfig({ ...runtimeEnv('gpu'), ...stringEnv(compose.services.api) }).port));

  // Volumes: `name` (..., `/path`, ...): every compose volume, mounted where the README says
  const para = /^Volumes: [\s\S]*?\)\./m.exec(section)?.[0] ?? '';
  const described = Object.fromEntries(
    [...para.matchAll(/`(\w+)` \(([^)]*)\)/g)].map(([, name, desc]) => [name, /`(\/[\w/]+)`/.exec(desc)?.[1]]),
  );
  t.same(Object.keys(described).sort(), Object.keys(compose.volumes ?? {}).sort(), 'every named volume described');
  for (const [name, path] of Object.entries(described)) {
    if (!path) continue;
    for (const [svc, s] of Object.entries(compose.services))
      for (const v of s.volumes ?? []) {
        const [source, dest] = v.split(':');
        if (source === name) t.equal(dest, path, `${svc}: the ${name} volume at ${path}`);
      }
  }

  // the grace period
  const grace = /`stop_grace_period` \((\d+) s\)/.exec(section)?.[1];
  t.ok(grace, 'the README gives the grace period');
  for (const [name, s] of steerdServices)
    t.equal(durationMs(s.stop_grace_period ?? '0s'), Number(grace) * 1000, `${name}: stop_grace_period ${grace} s`);
});

t.test('docker/test-image.sh builds with build arguments the Dockerfile takes', async (t) => {
  const script = read('docker/test-image.sh');
  const passed = [...script.matchAll(/--build-arg "?(\w+)=/g)].map((m) => m[1]);
  t.ok(passed.includes('VARIANT'), 'passes VARIANT');
  for (const k of passed) t.ok(k in globalArgs, `--build-arg ${k}: an ARG of the Dockerfile`);
  // the bases it replaces are the build arguments the stages start from, GPU stage included
  const baseArg = (s: Stage) => /^\$\{(\w+)\}$/.exec(s.base)?.[1];
  for (const name of ['build', 'runtime-cpu', 'runtime-gpu']) {
    const arg = baseArg(stage(name));
    t.ok(arg && passed.includes(arg), `${name} starts from \${${arg}}, which the script passes`);
  }
  const check = /for arg in ([\w ]+); do/.exec(script)?.[1].split(' ') ?? [];
  t.same(check.sort(), [...new Set(passed)].sort(), 'and checks that the Dockerfile still declares each');
});

// ---------------------------------------------------------------------------------------------

t.test('.env.example names every setting, with its default', async (t) => {
  const example = envFile('.env.example');
  const names = Object.keys(example);
  t.same(
    names.filter((k) => !knownVars.has(k)),
    [],
    'only settings the code reads',
  );
  t.same(
    [...configVars].filter((k) => !(k in example)),
    [],
    'every setting src/config.ts reads',
  );
  t.same(
    [...processEnvVars].filter((k) => !(k in example)),
    [],
    'and the hub settings',
  );
  t.equal(new Set(names).size, read('.env.example').match(/^#?\s?[A-Z][A-Z0-9_]*=/gm)!.length, 'each once');
  for (const [k, v] of Object.entries(example)) {
    if (configVars.has(k) && v !== '') t.same(loadConfig({ [k]: v }), defaults, `${k}=${v} is the default`);
    t.ok(readme.includes(`\`${k}\``), `${k} is documented in the README's configuration table`);
  }
  t.match(read('.env.example'), /^# HF_ENDPOINT=https:\/\/huggingface\.co$/m);
  // commented out: copying it to .env changes nothing (HOST=127.0.0.1 would hide a container's port)
  t.notMatch(read('.env.example'), /^[A-Z]/m, 'every setting commented out');
});

t.test('.dockerignore keeps the context small and the copied paths in', async (t) => {
  const patterns = read('.dockerignore')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  for (const p of ['node_modules', '.git', 'coverage', '.tap', 'models', 'data', 'bench/results', '.scratch*', '.env'])
    t.ok(patterns.includes(p), `ignores ${p}`);
  const copied = stages
    .flatMap((s) => ops(s, 'COPY'))
    .filter((a) => !a.startsWith('--from'))
    .flatMap((a) => a.split(/\s+/).slice(0, -1));
  t.ok(copied.includes('docker/healthcheck.mjs') && copied.includes('package-lock.json'));
  const ignored = (path: string) =>
    patterns.some((p) => !p.startsWith('!') && (path === p || path.startsWith(`${p}/`)));
  for (const path of copied) {
    t.notOk(ignored(path), `${path} reaches the build`);
    t.ok(existsSync(join(root, path)), `${path} exists`);
  }
});
