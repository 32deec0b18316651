import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, ConsoleMessage, Page } from 'playwright-core';
import t, { type Test } from 'tap';
import { writeChatTemplate } from '../../src/model/chat-templates.ts';
import { writeTinyCheckpoint } from '../../src/model/gpt2/tiny.ts';
import { writeTinyLlamaCheckpoint } from '../../src/model/llama/tiny.ts';
import { type Harness, harness } from '../helpers/api.ts';
import { browserSkip, launchChromium } from '../helpers/browser.ts';

// The playground page at `/`, in a real headless Chromium against a listening steerd on a tiny
// generated checkpoint. Screenshots go to test-artifacts/ (git-ignored).

const root = mkdtempSync(join(tmpdir(), 'steerd-pg-'));
const model = join(root, 'model');
writeTinyCheckpoint(model, { layers: 4, embd: 64, heads: 4, ctx: 128, seed: 4, initScale: 10 });
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const artifacts = new URL('../../test-artifacts/', import.meta.url);

async function listening(keys: string[] = []) {
  const h = await harness(model, (c) => ({ ...c, apiKeys: keys }));
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = h.app.server.address() as { port: number };
  return { h, url: `http://127.0.0.1:${port}` };
}

const json = (body: unknown, key?: string) => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...(key && { authorization: `Bearer ${key}` }) },
  body: JSON.stringify(body),
});

/**
 * A browser context that lets no request leave `origin`: every request is recorded, and any to
 * another origin is refused (and makes the test fail).
 */
async function sealed(context: BrowserContext, origin: string) {
  const requests: { url: string; headers: Record<string, string>; stream?: boolean }[] = [];
  await context.route('**/*', (route) => {
    const r = route.request();
    let stream: boolean | undefined;
    try {
      stream = (r.postDataJSON() as { stream?: boolean } | null)?.stream;
    } catch {
      stream = undefined;
    }
    requests.push({ url: r.url(), headers: r.headers(), stream });
    return new URL(r.url()).origin === origin ? route.continue() : route.abort('blockedbyclient');
  });
  return requests;
}

/** Console errors and uncaught exceptions of a page. */
function watch(page: Page) {
  const errors: string[] = [];
  page.on('console', (m: ConsoleMessage) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  return errors;
}

/**
 * Content-Security-Policy violations of a page (its directive and what it blocked): the page's own
 * listener, added before any of its scripts runs (Playwright's init scripts are not subject to it).
 */
async function cspViolations(page: Page) {
  await page.addInitScript(() => {
    const w = window as unknown as { cspViolations: string[] };
    w.cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      w.cspViolations.push(`${e.effectiveDirective} ${e.blockedURI}`),
    );
  });
  return () => page.evaluate(() => (window as unknown as { cspViolations: string[] }).cspViolations);
}

/** The security headers the page and the docs are served with (README: Security). */
function securityHeaders(t: Test, res: Response, what: string) {
  const csp = res.headers.get('content-security-policy') ?? '';
  for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"])
    t.ok(csp.split('; ').includes(directive), `${what}: ${directive}`);
  t.notMatch(csp, /unsafe-inline|unsafe-eval|https?:|\*/, `${what}: nothing inline, no other origin`);
  t.ok(csp.split('; ').includes("frame-ancestors 'none'"), `${what}: frame-ancestors 'none'`);
  t.equal(res.headers.get('x-frame-options'), 'DENY', `${what}: X-Frame-Options`);
  t.equal(res.headers.get('x-content-type-options'), 'nosniff', `${what}: nosniff`);
}

/** The page's script and the modules it imports, however deep: their paths on the server. */
function pageModules() {
  const dir = new URL('../../playground/', import.meta.url);
  const found: string[] = [];
  const visit = (file: string) => {
    if (found.includes(`/${file}`)) return;
    found.push(`/${file}`);
    const source = readFileSync(new URL(file, dir), 'utf8');
    for (const [, imported] of source.matchAll(/^import [^;]*? from '\.\/([\w-]+\.js)';$/gm)) visit(imported);
  };
  visit('app.js');
  return found;
}

const id = (testid: string) => `[data-testid="${testid}"]`;
const overflow = (page: Page) =>
  page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

t.test('steerd serves the page and its assets, nothing else, without a key', async (t) => {
  const { h, url } = await listening(['k1']);
  t.teardown(() => h.close());
  const get = (path: string) => fetch(`${url}${path}`);
  const page = await get('/');
  t.equal(page.status, 200);
  t.match(page.headers.get('content-type'), /^text\/html/);
  securityHeaders(t, page, '/');
  const docs = await get('/docs/');
  securityHeaders(t, docs, '/docs/');
  await docs.arrayBuffer();
  const html = await page.text();
  for (const testid of ['prompt', 'vector', 'layer', 'coeff', 'generate', 'sweep', 'sweep-chart'])
    t.ok(html.includes(`data-testid="${testid}"`), `the page has ${testid}`);
  for (const [path, type] of [
    ['/index.html', /^text\/html/],
    ['/app.js', /javascript/],
    ['/style.css', /^text\/css/],
    ['/favicon.svg', /^image\/svg\+xml/],
    ['/assets/chart/chart.umd.min.js', /javascript/],
  ] as const) {
    const res = await get(path);
    t.equal(res.status, 200, `${path} is served without a key`);
    t.match(res.headers.get('content-type'), type, `${path}: ${type}`);
    await res.arrayBuffer();
  }
  // app.js and every module it imports, however deep, as JavaScript (a module script must be)
  const modules = pageModules();
  t.ok(modules.length > 1, `the page's modules: ${modules.join(', ')}`);
  for (const path of modules) {
    const res = await get(path);
    t.equal(res.status, 200, `${path} is served`);
    t.match(res.headers.get('content-type'), /^(application|text)\/javascript/, `${path}: JavaScript`);
    await res.arrayBuffer();
  }
  for (const path of [
    '/nope',
    '/assets/chart/chart.cjs',
    '/assets/chart/../package.json',
    '/playground/app.js',
    '/tsconfig.json',
  ]) {
    const res = await get(path);
    t.equal(res.status, 404, `${path}: 404`);
    t.equal(((await res.json()) as { error: { code: string } }).error.code, 'not_found', 'in the API error shape');
  }
  t.equal((await get('/v1/model')).status, 401, 'the API still wants its key');
  t.equal((await get('/docs/')).status, 200, 'Swagger UI is still at /docs');
  const spec = (await (await get('/openapi.json')).json()) as { paths: Record<string, unknown> };
  t.same(
    Object.keys(spec.paths).filter((p) => p === '/' || p.startsWith('/assets/') || /\.(html|js|css|svg)$/.test(p)),
    [],
    'the page is not in the API document',
  );
});

const skip = browserSkip();

t.test('in Chromium: model card, recipe, generate with telemetry, receipt, sweep chart', { skip }, async (t) => {
  const started = Date.now();
  const { h, url } = await listening();
  t.teardown(() => h.close());
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  mkdirSync(artifacts, { recursive: true });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const requests = await sealed(context, url);
  const page = await context.newPage();
  const errors = watch(page);
  const violations = await cspViolations(page);

  await page.goto(url);
  const card = page.locator(id('model-card'));
  await card.locator('dd[data-field="id"]').waitFor();
  t.equal(await card.locator('dd[data-field="id"]').textContent(), h.svc.model.id, 'the model card: id');
  t.equal(await card.locator('dd[data-field="hidden size"]').textContent(), '64', 'hidden size');
  t.match(await card.locator('dd[data-field="layers"]').textContent(), /^4 /, 'layers');
  t.ok(await page.locator(id('random-weights')).isVisible(), 'the random-weights warning');
  t.ok(await page.locator(id('chat-panel')).isHidden(), 'GPT-2 has no chat template: no chat box');
  // site and op: offered as the API's own document lists them, or not at all
  const spec = (await (await fetch(`${url}/openapi.json`)).json()) as {
    components: { schemas: { Intervention: { properties: Record<string, { enum?: string[] }> } } };
  };
  const fields = spec.components.schemas.Intervention.properties;
  for (const field of ['site', 'op']) {
    if (fields[field]?.enum)
      t.same(
        await page.locator(`${id(field)} option`).allTextContents(),
        fields[field].enum,
        `${field}: the API's values`,
      );
    else t.ok(await page.locator(id(field)).isHidden(), `no ${field} field: the API does not take one`);
  }

  // a diff vector from the recipe form, at the layer field's layer
  await page.locator('#recipe summary').click();
  await page.fill(id('layer'), '2');
  await page.fill(id('recipe-name'), 'love-hate');
  await page.fill(id('recipe-positive'), 'Love');
  await page.fill(id('recipe-negative'), 'Hate');
  await page.click(id('recipe-register'));
  await page
    .locator(id('recipe-status'))
    .filter({ hasText: /^registered/ })
    .waitFor();
  t.equal(await page.locator(id('vector')).inputValue(), 'love-hate', 'the new vector is picked');
  const stored = await h.svc.store.get('love-hate');
  t.match(stored.recipe, { kind: 'diff', layer: 2, positive: 'Love', negative: 'Hate' }, 'registered as a diff recipe');

  // generate: steered and baseline side by side, each token with its KL
  await page.fill(id('coeff'), '2');
  await page.selectOption(id('unit'), 'resid_norm');
  await page.fill('#max-new-tokens', '8');
  await page.fill('#seed', '5');
  await page.click(id('generate'));
  const steered = page.locator(`${id('steered-output')} .tok`);
  const baseline = page.locator(`${id('baseline-output')} .tok`);
  // the two outputs fill as their tokens arrive, the baseline's after the steered ones may
  await steered.nth(7).waitFor();
  await baseline.nth(7).waitFor();
  t.equal(await steered.count(), 8, '8 steered tokens');
  t.equal(await baseline.count(), 8, '8 baseline tokens');
  const kls = await page
    .locator(`${id('steered-output')} .tok, ${id('baseline-output')} .tok`)
    .evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.kl));
  t.equal(kls.length, 16);
  t.ok(
    kls.every((k) => k !== undefined && k !== '' && Number.isFinite(Number(k))),
    'every token element has a numeric data-kl',
  );
  t.ok(
    kls.slice(0, 8).some((k) => Number(k) > 0),
    'steering moved the distribution',
  );
  const direct = (await (
    await fetch(
      `${url}/v1/generate`,
      json({
        prompt: 'I think dogs are',
        max_new_tokens: 8,
        temperature: 1,
        top_k: 0,
        top_p: 1,
        seed: 5,
        telemetry: true,
        compare: true,
        interventions: [{ vector: 'love-hate', layer: 2, coeff: 2, unit: 'resid_norm', positions: 'all' }],
      }),
    )
  ).json()) as { text: string; baseline: { text: string }; tokens: { kl: number }[] };
  t.equal(await page.locator(id('steered-output')).textContent(), `I think dogs are${direct.text}`, 'the steered text');
  t.equal(
    await page.locator(id('baseline-output')).textContent(),
    `I think dogs are${direct.baseline.text}`,
    'the baseline text',
  );
  t.same(
    kls.slice(0, 8).map(Number),
    direct.tokens.map((x) => x.kl),
    'data-kl is the API telemetry',
  );
  await steered.first().hover();
  t.match(
    await page.locator(id('token-info')).textContent(),
    /logprob .* baseline .* KL .*projection/,
    'hover details',
  );
  t.match(await page.locator(id('telemetry')).textContent(), /mean KL [\d.]+ · max KL/, 'the telemetry summary');

  // the receipt: downloaded as JSON, replayed identically
  const asked = requests.find((r) => r.url === `${url}/v1/generate`);
  t.equal(asked?.stream, true, 'the generation was streamed (server-sent events)');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click(id('download-receipt'))]);
  t.match(download.suggestedFilename(), /^receipt-gen-.*\.json$/);
  const file = JSON.parse(readFileSync((await download.path())!, 'utf8')) as {
    receipt: { runs: { output: number[]; seed: number }[] };
  };
  t.equal(file.receipt.runs[0].output.length, 8, 'the downloaded receipt has the run');
  t.equal(file.receipt.runs[0].seed, 5);
  await page.click(id('replay'));
  await page.locator(`${id('replay-result')}[data-identical]`).waitFor();
  t.equal(await page.locator(id('replay-result')).getAttribute('data-identical'), 'true');
  t.match(await page.locator(id('replay-result')).textContent(), /^identical/, 'Replay says identical');

  // a sweep: 3 layers × 3 coeffs, drawn as one line per layer and a heatmap
  await page.fill(id('sweep-layers'), '1, 2, 3');
  await page.fill(id('sweep-coeffs'), '-2, 0, 2');
  await page.fill('#max-new-tokens', '6');
  await page.click(id('sweep'));
  await page
    .locator(`${id('sweep-heatmap')} button.cell`)
    .nth(8)
    .waitFor();
  const chart = await page.evaluate(() => {
    const canvas = document.querySelector('[data-testid="sweep-chart"]') as HTMLCanvasElement;
    const c = (
      window as unknown as { Chart: { getChart(c: HTMLCanvasElement): { data: { datasets: unknown[] } } } }
    ).Chart.getChart(canvas);
    const datasets = (c?.data.datasets ?? []) as { label: string; data: { x: number; y: number | null }[] }[];
    const ctx = canvas.getContext('2d')!;
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
    return {
      labels: datasets.map((d) => d.label),
      points: datasets.map((d) => d.data.map((p) => [p.x, p.y])),
      painted,
      size: canvas.width * canvas.height,
    };
  });
  t.same(chart.labels, ['layer 1', 'layer 2', 'layer 3'], 'one line per layer');
  for (const line of chart.points) {
    t.same(
      line.map(([x]) => x),
      [-2, 0, 2],
      'a point per coeff',
    );
    t.ok(
      line.every(([, y]) => typeof y === 'number'),
      'every point has a mean KL',
    );
    t.equal(line[1][1], 0, 'coeff 0: no KL');
  }
  t.ok(chart.painted > chart.size * 0.01, `the canvas is drawn (${chart.painted} of ${chart.size} pixels)`);
  await page
    .locator(`${id('sweep-heatmap')} button.cell`)
    .nth(2)
    .click();
  t.match(await page.locator(id('sweep-cell')).textContent(), /^layer 1, coeff 2, seed 5/, "a cell's text on click");
  t.ok(await page.locator(`${id('sweep-cell')} .tok`).count(), "the cell's tokens");
  await page.selectOption(id('sweep-metric'), 'logprob_delta');
  t.match(await page.locator(`${id('sweep-heatmap')} caption`).textContent(), /^logprob delta/, 'another metric');
  // the sweep's receipt: downloaded like a generation's, a run per cell and the baseline, replayable
  const [sweepFile] = await Promise.all([page.waitForEvent('download'), page.click(id('sweep-download-receipt'))]);
  t.match(sweepFile.suggestedFilename(), /^receipt-sweep-.*\.json$/);
  const swept = JSON.parse(readFileSync((await sweepFile.path())!, 'utf8')) as { receipt: { runs: unknown[] } };
  t.equal(swept.receipt.runs.length, 10, 'the baseline and 9 cells');
  const replayed = await fetch(`${url}/v1/replay`, json(swept));
  t.equal(((await replayed.json()) as { identical: boolean }).identical, true, 'and it replays');

  t.ok((await overflow(page)) <= 0, 'no horizontal overflow at 1280 px');
  await page.screenshot({ path: new URL('playground-1280.png', artifacts).pathname, fullPage: true });
  t.same(errors, [], 'no console errors');
  t.same(await violations(), [], 'nothing the Content-Security-Policy refused');

  // the API reference, under the same policy: rendered, nothing refused
  const docs = await context.newPage();
  const docsErrors = watch(docs);
  const docsViolations = await cspViolations(docs);
  await docs.goto(`${url}/docs/`);
  await docs.locator('.opblock-summary-path').first().waitFor();
  t.ok(await docs.locator('.opblock-summary-path', { hasText: '/v1/generate' }).count(), 'Swagger UI lists the routes');
  t.same(await docsViolations(), [], '/docs: nothing the Content-Security-Policy refused');
  t.same(docsErrors, [], '/docs: no console errors');
  await docs.close();

  // the keyboard alone: Tab from the prompt reaches the fields and Generate; Enter and Space run it
  await page.fill('#max-new-tokens', '4');
  await page.focus(id('prompt'));
  const visited: string[] = [];
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    const at = await page.evaluate(() => (document.activeElement as HTMLElement | null)?.dataset.testid ?? '');
    if (at) visited.push(at);
    if (at === 'generate') break;
  }
  t.equal(visited.at(-1), 'generate', 'Tab reaches Generate');
  for (const f of ['vector', 'recipe-positive', 'recipe-negative', 'layer', 'coeff'])
    t.ok(visited.includes(f), `Tab passes ${f}`);
  for (const key of ['Enter', 'Space']) {
    const response = page.waitForResponse((r) => r.url() === `${url}/v1/generate`);
    await page.keyboard.press(key);
    t.equal((await response).status(), 200, `${key} on Generate generates`);
    await page
      .locator(`${id('steered-output')} .tok`)
      .nth(3)
      .waitFor();
    t.equal(await page.locator(`${id('steered-output')} .tok`).count(), 4);
    // the tokens show before the stream ends; a press while the button is busy does nothing
    await page.locator(`${id('generate')}:not([aria-busy])`).waitFor();
  }

  // an API error, shown as the API wrote it
  await page.fill(id('layer'), '9');
  const response = page.waitForResponse((r) => r.url() === `${url}/v1/generate`);
  await page.click(id('generate'));
  const refused = await (await response).json();
  await page.locator(id('error')).waitFor();
  t.equal(await page.locator(id('error-message')).textContent(), refused.error.message, 'the API message');
  t.match(refused.error.message, /layer 9/);
  t.ok(
    errors.every((e) => /status of 422/.test(e)),
    'the only console errors are the refused request',
  );

  // a phone-sized viewport: one column, nothing wider than the screen
  const phone = await context.newPage();
  const phoneErrors = watch(phone);
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(url);
  await phone.locator(`${id('model-card')} dd[data-field="id"]`).waitFor();
  await phone.locator(`${id('vector')} option[value="love-hate"]`).waitFor({ state: 'attached' });
  await phone.selectOption(id('vector'), 'love-hate');
  await phone.fill('#max-new-tokens', '12');
  await phone.click(id('generate'));
  await phone
    .locator(`${id('steered-output')} .tok`)
    .nth(11)
    .waitFor();
  await phone.fill(id('sweep-layers'), '0, 1, 2, 3, 4');
  await phone.fill(id('sweep-coeffs'), '-8, -4, -2, 0, 2, 4, 8');
  await phone.fill('#max-new-tokens', '3');
  await phone.click(id('sweep'));
  await phone
    .locator(`${id('sweep-heatmap')} button.cell`)
    .nth(34)
    .waitFor();
  t.ok((await overflow(phone)) <= 0, 'no horizontal overflow at 390 px');
  const box = (await phone.locator(id('generate')).boundingBox())!;
  t.ok(box.x >= 0 && box.x + box.width <= 390, 'Generate is on screen');
  await phone.screenshot({ path: new URL('playground-390.png', artifacts).pathname, fullPage: true });
  t.same(phoneErrors, [], 'no console errors on the phone');

  // `op` (and `site`, where the API has it) sent only when not the default; an API without `op`
  // is given one in its document here, to see the field appear
  const opPage = await context.newPage();
  if (!fields.op)
    await opPage.route(`${url}/openapi.json`, async (route) => {
      const doc = await (await route.fetch()).json();
      doc.components.schemas.Intervention.properties.op = { type: 'string', enum: ['add', 'ablate', 'clamp'] };
      await route.fulfill({ json: doc });
    });
  await opPage.goto(url);
  await opPage.locator(id('op')).waitFor();
  t.same(
    await opPage.locator(`${id('op')} option`).allTextContents(),
    fields.op?.enum ?? ['add', 'ablate', 'clamp'],
    'the op field, from the API document',
  );
  await opPage.locator(`${id('vector')} option[value="love-hate"]`).waitFor({ state: 'attached' });
  await opPage.selectOption(id('vector'), 'love-hate');
  await opPage.fill('#max-new-tokens', '2');
  const sent = async () => {
    const request = opPage.waitForRequest((r) => r.url() === `${url}/v1/generate`);
    await opPage.click(id('generate'));
    const body = (await request).postDataJSON() as { interventions: Record<string, unknown>[] };
    await opPage.locator(`${id('generate')}:not([aria-busy])`).waitFor();
    return body.interventions[0];
  };
  const first = await sent();
  t.notOk('op' in first || 'site' in first, 'defaults (add, resid_pre): neither sent');
  await opPage.selectOption(id('op'), 'ablate');
  t.equal((await sent()).op, 'ablate', 'ablate: sent');
  if (fields.site?.enum) {
    const other = fields.site.enum.find((x) => x !== 'resid_pre')!;
    await opPage.selectOption(id('site'), other);
    t.equal((await sent()).site, other, `site ${other}: sent`);
  }

  const outside = requests.filter((r) => new URL(r.url).origin !== url);
  t.same(outside, [], 'no request left the server');
  t.ok(
    requests.some((r) => r.url.endsWith('/assets/chart/chart.umd.min.js')),
    'the chart library came from steerd',
  );
  t.comment(`the browser run took ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

t.test('in Chromium, with STEERD_API_KEYS: the page asks for a key and sends it', { skip }, async (t) => {
  const { h, url }: { h: Harness; url: string } = await listening(['k1']);
  t.teardown(() => h.close());
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const requests = await sealed(context, url);
  const page = await context.newPage();
  const errors = watch(page);
  const message = async (key?: string) =>
    (
      (await (await fetch(`${url}/v1/model`, key ? { headers: { authorization: `Bearer ${key}` } } : {})).json()) as {
        error: { message: string };
      }
    ).error.message;

  await page.goto(url);
  const key = page.locator(id('api-key'));
  await key.waitFor();
  t.ok(await key.isVisible(), 'asks for a key');
  t.equal(await page.locator(id('error-message')).textContent(), await message(), "the 401's message");

  await key.fill('wrong');
  let answer = page.waitForResponse((r) => r.url() === `${url}/v1/model`);
  await page.click(id('api-key-submit'));
  t.equal((await answer).status(), 401);
  t.equal(
    await page.locator(id('error-message')).textContent(),
    await message('wrong'),
    "a wrong key: the 401's message as the API wrote it",
  );
  t.ok(await key.isVisible(), 'still asks');

  await key.fill('k1');
  answer = page.waitForResponse((r) => r.url() === `${url}/v1/model`);
  await page.click(id('api-key-submit'));
  t.equal((await answer).status(), 200);
  await page.locator(`${id('model-card')} dd[data-field="id"]`).waitFor();
  t.ok(await page.locator(id('error')).isHidden(), 'the error is gone');
  t.ok(await key.isHidden(), 'the key form is gone');
  await page.fill('#max-new-tokens', '4');
  await page.click(id('generate'));
  await page
    .locator(`${id('steered-output')} .tok`)
    .nth(3)
    .waitFor();

  const api = requests.filter((r) => new URL(r.url).pathname.startsWith('/v1/'));
  const last = api.filter((r) => r.url.endsWith('/v1/generate'));
  t.equal(last.length, 1);
  t.equal(last[0].headers.authorization, 'Bearer k1', 'the key as a bearer token');
  const statics = requests.filter((r) => !new URL(r.url).pathname.startsWith('/v1/') && !r.url.endsWith('.json'));
  t.ok(
    statics.every((r) => r.headers.authorization === undefined),
    'static files need no key',
  );
  t.ok(
    errors.every((e) => /status of 401/.test(e)),
    'the only console errors are the two refused requests',
  );
  t.same(
    requests.filter((r) => new URL(r.url).origin !== url),
    [],
    'no request left the server',
  );
});

t.test('in Chromium, a model with a chat template: the chat box, steered, turn after turn', { skip }, async (t) => {
  const dir = join(root, 'chat-model');
  writeTinyLlamaCheckpoint(dir, { modelType: 'qwen2', layers: 2, embd: 64, heads: 4, ctx: 256, seed: 2 });
  writeChatTemplate(dir, 'chatml', { eos_token: '<|endoftext|>' });
  const h = await harness(dir);
  t.teardown(() => h.close());
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(h.app.server.address() as { port: number }).port}`;
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const requests = await sealed(context, url);
  const page = await context.newPage();
  const errors = watch(page);
  await page.goto(url);
  await page.locator(`${id('model-card')} dd[data-field="id"]`).waitFor();
  t.ok(await page.locator(id('chat-panel')).isVisible(), 'the chat box');

  await page.fill('#max-new-tokens', '6');
  await page.fill('#seed', '5');
  await page.fill(id('chat-system'), 'Be brief.');
  // one turn through the page: the body it sent, and the answer it shows
  const turn = async (text: string, n: number) => {
    await page.fill(id('chat-input'), text);
    const sent = page.waitForRequest((r) => r.url() === `${url}/v1/chat/completions`);
    await page.click(id('chat-send'));
    const body = (await sent).postDataJSON() as { messages: { role: string; content: string }[] };
    // the turn is over when its answer is kept: the message box is then emptied
    await page.waitForFunction(
      ([sel, k]) =>
        document.querySelectorAll(sel).length === k &&
        (document.querySelector('#chat-input') as HTMLTextAreaElement).value === '',
      [`${id('chat-log')} li[data-role="assistant"]`, n] as const,
    );
    return {
      body,
      shown:
        (await page
          .locator(`${id('chat-log')} li[data-role="assistant"]`)
          .nth(n - 1)
          .textContent()) ?? '',
    };
  };
  const api = async (messages: { role: string; content: string }[]) => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, max_tokens: 6, temperature: 1, top_p: 1, seed: 5, interventions: [] }),
    });
    return ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
  };

  const first = await turn('Hello', 1);
  t.same(first.body.messages, [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hello' },
  ]);
  t.equal(first.shown, await api(first.body.messages), "the answer shown is the API's for the same request");
  const second = await turn('And then?', 2);
  t.same(
    second.body.messages,
    [...first.body.messages, { role: 'assistant', content: first.shown }, { role: 'user', content: 'And then?' }],
    'the second turn carries the conversation',
  );
  t.equal(second.shown, await api(second.body.messages));
  t.same(
    await page.locator(`${id('chat-log')} li`).evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.role)),
    ['user', 'assistant', 'user', 'assistant'],
  );

  // steered by the form's vector: another answer to the same conversation
  const H = h.svc.engine.info.n_embd;
  const made = await fetch(`${url}/v1/vectors`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'wave', values: Array.from({ length: H }, (_, i) => Math.sin(i)) }),
  });
  t.equal(made.status, 201);
  await page.click('#vectors-refresh');
  await page.locator(`${id('vector')} option[value="wave"]`).waitFor({ state: 'attached' });
  await page.selectOption(id('vector'), 'wave');
  await page.fill(id('layer'), '1');
  await page.fill(id('coeff'), '30');
  await page.click(id('chat-clear'));
  t.equal(await page.locator(`${id('chat-log')} li`).count(), 0, 'cleared');
  const steered = await turn('Hello', 1);
  t.match(steered.body, { interventions: [{ vector: 'wave', layer: 1, coeff: 30 }] });
  t.not(steered.shown, first.shown, 'steering changes the answer');

  t.same(errors, [], 'no console errors');
  t.same(
    requests.filter((r) => new URL(r.url).origin !== url),
    [],
    'no request left the server',
  );
});
