import { PassThrough } from 'node:stream';
import Fastify from 'fastify';
import t from 'tap';
import { loadConfig } from '../src/config.ts';
import { logOptions } from '../src/logging.ts';

t.test('log format: pretty on a terminal, JSON otherwise, either forced by STEERD_LOG_FORMAT', async (t) => {
  const pretty = (format: string | undefined, tty: boolean) =>
    'transport' in logOptions(loadConfig(format === undefined ? {} : { STEERD_LOG_FORMAT: format }), tty);
  t.equal(loadConfig({}).logFormat, 'auto', 'default: auto');
  t.equal(pretty(undefined, true), true, 'auto at a terminal: pretty');
  t.equal(pretty(undefined, false), false, 'auto elsewhere: JSON');
  t.equal(pretty('json', true), false, 'json forced at a terminal');
  t.equal(pretty('pretty', false), true, 'pretty forced into a pipe');
  t.throws(() => loadConfig({ STEERD_LOG_FORMAT: 'yaml' }), {
    message: /STEERD_LOG_FORMAT must be auto, pretty or json, not "yaml"/,
  });
  const o = logOptions({ logLevel: 'warn', logFormat: 'json' }, true);
  t.equal(o.level, 'warn');
  t.ok(o.redact.includes('req.headers.authorization'), 'keys redacted either way');
});

t.test('the JSON format is one object a line; the pretty one is a line a person reads', async (t) => {
  // JSON: what the server writes to a pipe
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d));
  const app = Fastify({ logger: { ...logOptions({ logLevel: 'info', logFormat: 'json' }, false), stream: out } });
  app.log.info({ model: 'gpt2' }, 'serving');
  await app.close();
  const line = JSON.parse(text.split('\n')[0]);
  t.match(line, { level: 30, msg: 'serving', model: 'gpt2' });

  // pretty: the transport the server names, loaded and run
  const { prettyFactory } = (await import('pino-pretty')) as unknown as {
    prettyFactory: (o: object) => (line: object) => string;
  };
  const opts = logOptions({ logLevel: 'info', logFormat: 'pretty' }, false);
  t.equal(opts.transport?.target, 'pino-pretty');
  const shown = prettyFactory(opts.transport!.options)(line);
  t.match(shown, /INFO.*: serving\n\s+model: "gpt2"/s, shown);
  t.notOk(shown.includes('\x1b['), 'no colours into a pipe');
});
