import type { Config } from './config.js';

/**
 * pino's options for the server's log: the level, the redacted headers, and the format. `auto`
 * is steerd's choice (pino itself always writes JSON): people at a terminal get pino-pretty's
 * lines, anything else (a file, a pipe, a container's log collector) the JSON lines pino writes by
 * itself.
 */
export function logOptions(config: Pick<Config, 'logLevel' | 'logFormat'>, isTTY = process.stdout.isTTY === true) {
  const pretty = config.logFormat === 'pretty' || (config.logFormat === 'auto' && isTTY);
  return {
    level: config.logLevel,
    redact: ['req.headers.authorization', 'req.headers["x-api-key"]'],
    ...(pretty && {
      transport: {
        target: 'pino-pretty',
        options: { colorize: isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' },
      },
    }),
  };
}
