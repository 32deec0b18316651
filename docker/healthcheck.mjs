// The image's HEALTHCHECK: `node docker/healthcheck.mjs [command]`, exit 0 healthy, 1 unhealthy.
//
// `serve` is healthy while GET /readyz answers 200 (model loaded, Redis reachable, not draining).
// `worker` has no HTTP server and nothing else to ask: it is healthy while it runs (a worker that
// fails exits, and the restart policy replaces it), so the check passes. The command is the
// argument, else the container's own (PID 1 is `tini -- node bin/steerd.js <command> [options]`).
import { readFileSync } from 'node:fs';

function containerArgs() {
  try {
    const argv = readFileSync('/proc/1/cmdline', 'utf8').split('\0');
    const i = argv.findIndex((a) => a.endsWith('steerd.js'));
    return i >= 0 ? argv.slice(i + 1) : [];
  } catch {
    return [];
  }
}

const args = process.argv.length > 2 ? process.argv.slice(2) : containerArgs();
const command = args[0] ?? 'serve';
if (command !== 'serve') process.exit(0);

// `serve --port N` (or --port=N) wins over PORT, as in the CLI.
const flag = args.findIndex((a) => a === '--port' || a.startsWith('--port='));
const port =
  flag < 0 ? process.env.PORT || '8080' : args[flag].includes('=') ? args[flag].split('=')[1] : args[flag + 1];
try {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(4000) });
  process.exit(res.ok ? 0 : 1);
} catch {
  process.exit(1);
}
