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

/** Per engine: the measurement, kept once it succeeded (a failure is measured again next time). */
const measured = new WeakMap<EngineLike, Promise<NormStat[]>>();

/** Per hook point: mean, median and max L2 norm over positions (the first position, an outlier in GPT-2, left out). */
export function residNorms(svc: Pick<Service, 'engine'>): Promise<NormStat[]> {
  const { engine } = svc;
  let p = measured.get(engine);
  if (!p) {
    p = measure(engine);
    measured.set(engine, p);
    p.catch(() => measured.delete(engine));
  }
  return p;
}

/** The norms, or null when they are not measured within `ms` (no engine answered: Redis mode). */
export async function residNormsWithin(svc: Pick<Service, 'engine'>, ms: number): Promise<NormStat[] | null> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    residNorms(svc).catch(() => null),
    new Promise<null>((r) => {
      timer = setTimeout(() => r(null), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function measure(engine: EngineLike): Promise<NormStat[]> {
  const prompt = engine.tokenizer.encode(NORM_TEXT).slice(0, engine.maxContext);
  const layers = Array.from({ length: engine.info.n_layer + 1 }, (_, l) => l);
  const r = await engine.activations({ prompt, layers, reduce: 'none' });
  const H = engine.info.n_embd;
  return layers.map((l) => {
    const a = r.activations[l];
    const norms: number[] = [];
    for (let t = 1; t < r.rows; t++) {
      let s = 0;
      for (let i = 0; i < H; i++) s += a[t * H + i] ** 2;
      norms.push(Math.sqrt(s));
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
