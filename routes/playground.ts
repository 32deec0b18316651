import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsync } from 'fastify';

/**
 * The page's own files: index.html, its style sheet and icon, and its scripts (native ES modules,
 * app.js importing the others; `.js` is served as JavaScript, which a module script must be).
 */
const root = fileURLToPath(new URL('../playground/', import.meta.url));
/** What is in the folder for the type checker (`tsc -p playground`, in `npm run lint`), not for the browser. */
const NOT_SERVED = ['tsconfig.json'];
/** Chart.js's self-contained (UMD) build, from the installed package: served, never fetched from elsewhere. */
const chartDir = dirname(createRequire(import.meta.url).resolve('chart.js'));
const CHART_FILE = 'chart.umd.min.js';

/**
 * The playground at `/`: static files (no API key needed, hidden from the OpenAPI document). Only
 * the files present at start are routes (`wildcard: false`): any other path is the app's 404.
 */
const playgroundRoutes: FastifyPluginAsync = async (app) => {
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    wildcard: false,
    globIgnore: NOT_SERVED,
    index: 'index.html',
    schemaHide: true,
  });
  app.get(`/assets/chart/${CHART_FILE}`, { schema: { hide: true } }, (_request, reply) =>
    reply.sendFile(CHART_FILE, chartDir),
  );
};

export default playgroundRoutes;
