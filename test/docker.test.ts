import t from 'tap';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { program } from '../src/cli/main.ts';
import { loadConfig } from '../src/config.ts';

// There is no Docker engine here: check that what the image and the compose file run exists.
const root = new URL('..', import.meta.url);
const dockerfile = readFileSync(new URL('Dockerfile', root), 'utf8');
const compose = parse(readFileSync(new URL('docker/compose.yaml', root), 'utf8')) as {
  services: Record<string, { environment?: Record<string, string>; ports?: string[]; stop_grace_period?: string }>;
};
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8'));

t.test('the image runs the package bin with a command the CLI has', async (t) => {
  const entry = JSON.parse(/^ENTRYPOINT (.*)$/m.exec(dockerfile)![1]) as string[];
  const cmd = JSON.parse(/^CMD (.*)$/m.exec(dockerfile)![1]) as string[];
  t.same(entry.slice(0, 2), ['tini', '--'], 'an init process');
  t.equal(entry.slice(2).join(' '), `node ${pkg.bin.steerd}`);
  const commands = program().commands.map((c) => c.name());
  t.ok(commands.includes(cmd[0]), `"${cmd[0]}" is a steerd command`);
  for (const dir of ['bin', 'src', 'routes']) t.match(dockerfile, new RegExp(`^COPY ${dir} `, 'm'), `copies ${dir}`);
  t.match(dockerfile, /ONNXRUNTIME_NODE_INSTALL=cuda12/, 'the GPU image opts into the CUDA build');
  t.match(dockerfile, /^USER steerd$/m, 'non-root');
});

t.test('ports, health path and environment agree with the code', async (t) => {
  const env = Object.fromEntries([...dockerfile.matchAll(/(\w+)=(\S+)/g)].filter(([, k]) => /^[A-Z_]+$/.test(k)).map(([, k, v]) => [k, v]));
  const config = loadConfig(env);
  t.equal(config.host, '0.0.0.0', 'listens on all interfaces in the container');
  t.match(dockerfile, new RegExp(`^EXPOSE ${config.port}$`, 'm'));
  t.match(dockerfile, /HEALTHCHECK[\s\S]*\/readyz/, 'health check on /readyz');
  const readme = readFileSync(new URL('README.md', root), 'utf8');
  for (const [name, svc] of Object.entries(compose.services)) {
    t.same(svc.ports, [`${config.port}:${config.port}`], `${name} publishes the port`);
    for (const k of Object.keys(svc.environment ?? {})) {
      t.ok(readme.includes(`\`${k}\``), `${name}: ${k} is documented in the README's configuration table`);
    }
    const grace = Number.parseInt(svc.stop_grace_period ?? '0', 10);
    t.ok(grace * 1000 > loadConfig({}).drainTimeoutMs, `${name}: stop_grace_period covers the drain timeout`);
  }
});
