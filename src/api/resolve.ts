import type { Intervention, Positions } from '../engine/types.js';
import { SteerdError, UnprocessableError } from '../errors.js';
import { describe } from '../store/vectors.js';
import type { InterventionBody } from './schemas.js';
import type { Service } from './service.js';

/** An intervention as applied, echoed back in responses. */
export interface AppliedIntervention {
  vector: string | null;
  hash: string;
  shape: number[];
  layer: number;
  coeff: number;
  positions: Positions;
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

/** Resolves names from the store, checks each vector against the serving model. */
export async function resolveInterventions(
  svc: Service,
  list: InterventionBody[] | undefined,
): Promise<{ engine: Intervention[]; applied: AppliedIntervention[] }> {
  const items = list ?? [];
  const max = svc.config.limits.maxInterventions;
  if (items.length > max)
    throw new UnprocessableError(`${items.length} interventions exceed this server's limit (${max})`);
  const H = svc.engine.info.n_embd;
  const engine: Intervention[] = [];
  const applied: AppliedIntervention[] = [];
  for (const [i, iv] of items.entries()) {
    const where = `interventions[${i}]`;
    let values: Float32Array;
    let shape: number[];
    let name: string | null = null;
    let hash: string;
    if (typeof iv.vector === 'string') {
      const v = await svc.store.get(iv.vector);
      if (v.model.n_embd !== H || v.model.id !== svc.model.id) {
        throw new UnprocessableError(
          `${where}: vector "${v.name}" was made for model ${v.model.id} (hidden size ${v.model.n_embd}); this server runs ${svc.model.id} (hidden size ${H})`,
        );
      }
      ({ values, shape, hash } = v);
      name = v.name;
    } else {
      ({ values, shape } = toFloat32(iv.vector.values, where));
      hash = describe(values, shape).hash;
    }
    if (shape.at(-1) !== H)
      throw new UnprocessableError(
        `${where}: vector width ${shape.at(-1)} does not match this model's hidden size ${H}`,
      );
    const rows = shape.length === 1 ? 1 : shape[0];
    const positions = iv.positions ?? (rows === 1 ? 'all' : 'front');
    engine.push({ values, rows, layer: iv.layer, coeff: iv.coeff, positions, hash });
    applied.push({ vector: name, hash, shape, layer: iv.layer, coeff: iv.coeff, positions });
  }
  return { engine, applied };
}
