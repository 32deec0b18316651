import { maxLayer, type Site } from '../model/hooks.js';
import { encodeText } from '../model/tokenizer.js';
import { l2norm } from '../util/vec.js';
import type { EngineLike, Service } from './service.js';

/**
 * The residual stream's size at each hook point, measured once per engine on a fixed text: what
 * `/v1/model` reports and what `unit: "resid_norm"` coefficients count.
 */

/** A fixed, neutral text whose residual-stream norms tell clients what coefficient sizes mean. */
export const NORM_TEXT =
  'The city council met on Tuesday to discuss the budget for the coming year. Members reviewed the reports, asked questions, and agreed to continue the discussion at the next meeting.';

/** How long a request waits for the norms (measured at start) before going on without them. */
export const NORMS_WAIT_MS = 5000;

export interface NormStat {
  layer: number;
  mean: number;
  median: number;
  max: number;
}

/** Per engine and site: the measurement, kept once it succeeded (a failure is measured again next time). */
const measured = new WeakMap<EngineLike, Map<Site, Promise<NormStat[]>>>();

/**
 * Per layer at a hook site (default the residual stream entering each block): mean, median and max
 * L2 norm over positions (the first position, an outlier in GPT-2, left out).
 */
export function residNorms(svc: Pick<Service, 'engine'>, site: Site = 'resid_pre'): Promise<NormStat[]> {
  const { engine } = svc;
  if (!measured.has(engine)) measured.set(engine, new Map());
  const bySite = measured.get(engine)!;
  let p = bySite.get(site);
  if (!p) {
    p = measure(engine, site);
    bySite.set(site, p);
    p.catch(() => bySite.delete(site));
  }
  return p;
}

/** The norms, or null when they are not measured within `ms` (no engine answered: Redis mode). */
export async function residNormsWithin(
  svc: Pick<Service, 'engine'>,
  ms: number,
  site: Site = 'resid_pre',
): Promise<NormStat[] | null> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    residNorms(svc, site).catch(() => null),
    new Promise<null>((r) => {
      timer = setTimeout(() => r(null), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function measure(engine: EngineLike, site: Site): Promise<NormStat[]> {
  const prompt = encodeText(engine.tokenizer, NORM_TEXT).slice(0, engine.maxContext);
  const layers = Array.from({ length: maxLayer(site, engine.info.n_layer) + 1 }, (_, l) => l);
  const r = await engine.activations({ prompt, layers, site, reduce: 'none' });
  const H = engine.info.n_embd;
  return layers.map((l) => {
    const a = r.activations[l];
    const norms: number[] = [];
    for (let t = 1; t < r.rows; t++) {
      norms.push(l2norm(a, t * H, (t + 1) * H));
    }
    norms.sort((x, y) => x - y);
    return {
      layer: l,
      mean: norms.reduce((x, y) => x + y, 0) / norms.length,
      median: norms[norms.length >> 1],
      max: norms[norms.length - 1],
    };
  });
}
