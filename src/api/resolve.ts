import type { Intervention } from '../engine/types.js';
import { BadRequestError, SteerdError, UnavailableError, UnprocessableError } from '../errors.js';
import { maxLayer, type Site } from '../model/hooks.js';
import { describe } from '../store/content.js';
import type { PresetIntervention, StoredPreset } from '../store/presets.js';
import { NotFoundError } from '../store/types.js';
import { l2norm } from '../util/vec.js';
import { NORMS_WAIT_MS, residNormsWithin } from './norms.js';
import type { InterventionBody } from './schemas.js';
import type { Service } from './service.js';

/**
 * An intervention as applied, echoed back in responses (and recorded in receipts): what a preset
 * keeps of one (the vector by hash, its site, op, coefficient and unit), and what was applied.
 */
export interface AppliedIntervention extends PresetIntervention {
  /** The multiplier applied to the stored values (`coeff` itself for `absolute`). */
  applied_coeff: number;
  /** add: the norm of what was added, |applied_coeff| × the vector's norm (a sequence: its largest row's); clamp: |target|. */
  applied_norm: number;
  /** The preset it came from (a preset's interventions come first). */
  preset?: string;
}

export type Unit = PresetIntervention['unit'];

/** A vector's size for units: its norm, or for a sequence its largest row's. */
export function unitNorm(values: Float32Array, rows: number): number {
  const H = values.length / rows;
  let best = 0;
  for (let r = 0; r < rows; r++) {
    best = Math.max(best, l2norm(values, r * H, (r + 1) * H));
  }
  return best;
}

/** Flattens number[H] or number[k][H] to float32 with its shape; ragged rows are refused. */
export function toFloat32(values: number[] | number[][], where: string): { values: Float32Array; shape: number[] } {
  if (Array.isArray(values[0])) {
    const rows = values as number[][];
    const H = rows[0].length;
    if (rows.some((r) => r.length !== H))
      throw new SteerdError(`${where}: every row of a sequence needs the same length`, 400, 'invalid_request');
    const out = new Float32Array(rows.length * H);
    for (const [i, r] of rows.entries()) out.set(r, i * H);
    return { values: out, shape: [rows.length, H] };
  }
  return { values: Float32Array.from(values as number[]), shape: [values.length] };
}

/** The vector an intervention names, found: its values and identity (and the site a stored one was made at). */
interface Source {
  values: Float32Array;
  shape: number[];
  name: string | null;
  hash: string;
  site?: Site;
}

/** The fields of an intervention besides its vector (as the API takes them, or as a preset keeps them). */
type Setting = Omit<InterventionBody, 'vector'>;

/** A stored vector by name (checked against the serving model), inline values, or values by content hash. */
async function sourceOf(svc: Service, vector: InterventionBody['vector'], where: string): Promise<Source> {
  const H = svc.engine.info.n_embd;
  if (typeof vector === 'string') {
    let v: Awaited<ReturnType<typeof svc.store.get>>;
    try {
      v = await svc.store.get(vector);
    } catch (e) {
      if (e instanceof NotFoundError)
        throw new SteerdError(`${where}.vector: no vector named "${vector}"`, 404, 'not_found', { name: vector });
      throw e;
    }
    if (v.model.n_embd !== H || v.model.id !== svc.model.id) {
      throw new UnprocessableError(
        `${where}: vector "${v.name}" was made for model ${v.model.id} (hidden size ${v.model.n_embd}); this server runs ${svc.model.id} (hidden size ${H})`,
      );
    }
    return { values: v.values, shape: v.shape, name: v.name, hash: v.hash, site: v.site };
  }
  if ('hash' in vector) {
    const got = await svc.store.getValues(vector.hash);
    if (!got)
      throw new SteerdError(`${where}.vector: no values with content hash ${vector.hash} are kept`, 404, 'not_found', {
        hash: vector.hash,
      });
    return { ...got, name: null, hash: vector.hash };
  }
  const { values, shape } = toFloat32(vector.values, where);
  return { values, shape, name: null, hash: describe(values, shape).hash };
}

/**
 * Resolves an intervention list: a preset's first (its pinned values; `preset` names it in what is
 * applied), then the request's, names looked up in the store; each vector checked against the
 * serving model.
 */
export async function resolveInterventions(
  svc: Service,
  list: InterventionBody[] | undefined,
  preset?: StoredPreset | null,
): Promise<{ engine: Intervention[]; applied: AppliedIntervention[] }> {
  const items = list ?? [];
  const pinned = preset?.interventions ?? [];
  const max = svc.config.limits.maxInterventions;
  if (pinned.length + items.length > max)
    throw new UnprocessableError(
      `${pinned.length + items.length} interventions${preset ? ` (${pinned.length} of them preset "${preset.name}"'s)` : ''} exceed this server's limit (${max})`,
    );
  if (preset && preset.model.id !== svc.model.id)
    throw new UnprocessableError(
      `preset "${preset.name}" was made for model ${preset.model.id}; this server runs ${svc.model.id}`,
    );
  const engine: Intervention[] = [];
  const applied: AppliedIntervention[] = [];
  for (const [i, iv] of pinned.entries()) {
    const src = { values: preset!.values[i], shape: iv.shape, name: iv.vector, hash: iv.hash, site: iv.site };
    const one = await resolveOne(svc, iv, src, `preset "${preset!.name}".interventions[${i}]`);
    engine.push(one.engine);
    applied.push({ ...one.applied, preset: preset!.name });
  }
  for (const [i, iv] of items.entries()) {
    const where = `interventions[${i}]`;
    const one = await resolveOne(svc, iv, await sourceOf(svc, iv.vector, where), where);
    engine.push(one.engine);
    applied.push(one.applied);
  }
  return { engine, applied };
}

/** One intervention's coefficient resolved (its unit), the rest defaulted. */
async function resolveOne(
  svc: Service,
  iv: Setting,
  src: Source,
  where: string,
): Promise<{ engine: Intervention; applied: AppliedIntervention }> {
  const H = svc.engine.info.n_embd;
  const { values, shape, name, hash } = src;
  if (shape.at(-1) !== H)
    throw new UnprocessableError(`${where}: vector width ${shape.at(-1)} does not match this model's hidden size ${H}`);
  // a vector remembers the site it was made at: an intervention without a site uses it
  const site = iv.site ?? src.site ?? 'resid_pre';
  const op = iv.op ?? 'add';
  if (op !== 'ablate' && iv.coeff === undefined) throw new BadRequestError(`${where}.coeff is needed for ${op}`);
  const coeff = op === 'ablate' ? 0 : iv.coeff!;
  const rows = shape.length === 1 ? 1 : shape[0];
  const positions = iv.positions ?? (rows === 1 ? 'all' : 'front');
  const unit = iv.unit ?? 'absolute';
  const norm = unitNorm(values, rows);
  // add: what multiplies the values; clamp: the projection's target (a length along the unit direction)
  let applied_coeff = coeff;
  if (unit === 'resid_norm' && op !== 'ablate') {
    const top = maxLayer(site, svc.engine.info.n_layer);
    if (iv.layer > top)
      throw new UnprocessableError(
        `${where}.layer ${iv.layer} is out of range: this model's ${site} hook points are 0..${top}`,
      );
    if (norm === 0) throw new UnprocessableError(`${where}: a zero vector cannot be scaled to a residual-norm unit`);
    const norms = await residNormsWithin(svc, NORMS_WAIT_MS, site);
    if (!norms)
      throw new UnavailableError(
        `${where}: unit "resid_norm" counts the norms at ${site}, which no engine has measured yet; retry shortly`,
      );
    const median = norms[iv.layer].median;
    applied_coeff = op === 'clamp' ? coeff * median : (coeff * median) / norm;
  }
  return {
    engine: { values, rows, layer: iv.layer, site, op, coeff: applied_coeff, positions, hash },
    applied: {
      vector: name,
      hash,
      shape,
      layer: iv.layer,
      site,
      op,
      coeff,
      unit,
      applied_coeff,
      applied_norm: op === 'add' ? Math.abs(applied_coeff) * norm : Math.abs(applied_coeff),
      positions,
    },
  };
}
