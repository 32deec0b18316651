import { writeFileSync } from 'node:fs';
import { CommanderError } from 'commander';
import { type CliOutput, parseOptions } from './options.js';
import { formatReport } from './report.js';
import { runLoadTest } from './run.js';

const stdio: CliOutput = {
  out: (text) => process.stdout.write(`${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
};

/**
 * `npm run loadtest -- [options]` (`argv` as process.argv): the table (or the help) to `io.out`,
 * errors and warnings to `io.err`. Resolves to the exit status: 0 when every request was answered
 * and passed its checks, 1 when any failed, 2 when the load test could not run (bad options,
 * server unreachable).
 */
export async function main(argv: string[], io: CliOutput = stdio): Promise<number> {
  // Ctrl-C ends the run early, still with a report and the vector deleted; a second one kills
  const stop = new AbortController();
  const interrupt = () => stop.abort();
  process.once('SIGINT', interrupt);
  try {
    const opts = parseOptions(argv, io);
    const report = await runLoadTest(opts, { log: io.err, stop: stop.signal });
    io.out(formatReport(report));
    if (opts.json) writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
    return report.errors.total ? 1 : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2; // commander has printed the message or the help
    io.err(`loadtest: ${(e as Error).message}`);
    return 2;
  } finally {
    process.off('SIGINT', interrupt);
  }
}
