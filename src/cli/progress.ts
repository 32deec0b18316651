import cliProgress from 'cli-progress';
import type { ProgressReporter } from '../model/hub.js';

/** A progress bar on a terminal; plain log lines (start, every 10%, end) otherwise. */
export function consoleProgress(stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  if (stream.isTTY) {
    let bar: cliProgress.SingleBar | undefined;
    return {
      start(file, total, already) {
        bar = new cliProgress.SingleBar(
          { stream, format: `${file} [{bar}] {percentage}% | {value}/{total} bytes | {eta_formatted}` },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, already);
      },
      advance: (n) => bar?.increment(n),
      stop: () => bar?.stop(),
      log: (m) => stream.write(`${m}\n`),
    };
  }
  let file = '';
  let total = 0;
  let done = 0;
  let nextMark = 0;
  return {
    start(f, t, already) {
      file = f;
      total = t;
      done = already;
      nextMark = 0.1;
      stream.write(`${file}: downloading ${t ? `${t} bytes` : ''}${already ? ` (resuming at ${already})` : ''}\n`);
    },
    advance(n) {
      done += n;
      while (total > 0 && done / total >= nextMark && nextMark < 1) {
        stream.write(`${file}: ${Math.round(nextMark * 100)}%\n`);
        nextMark += 0.1;
      }
    },
    stop() {},
    log: (m) => stream.write(`${m}\n`),
  };
}
