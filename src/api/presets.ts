import { checkInterventions } from '../engine/validate.js';
import { SteerdError, UnprocessableError } from '../errors.js';
import { HUB_ALIASES } from '../model/hub.js';
import { isPresetName, PresetNotFoundError, type StoredPreset } from '../store/presets.js';
import { resolveInterventions } from './resolve.js';
import type { InterventionBody } from './schemas.js';
import type { Service } from './service.js';

/** The names a request's `model` may use for the base model: the served name, its id, and its hub names. */
export function servedNames(svc: Service): Set<string> {
  const names = new Set([svc.model.name, svc.model.id]);
  for (const [alias, repo] of Object.entries(HUB_ALIASES)) {
    if (svc.model.name === alias || svc.model.name === repo) {
      names.add(alias);
      names.add(repo);
    }
  }
  return names;
}

/**
 * What a request's `model` names: the base model (absent, or one of its names: null) or a preset
 * of this model (404 `model_not_found` for anything else).
 */
export async function presetOf(svc: Service, model: string | null | undefined): Promise<StoredPreset | null> {
  const served = servedNames(svc);
  if (model == null || served.has(model)) return null;
  // a name no preset can have is looked up nowhere (the file store would make it a path)
  if (isPresetName(model)) {
    try {
      return await svc.store.getPreset(svc.model.id, model);
    } catch (e) {
      if (!(e instanceof PresetNotFoundError)) throw e;
    }
  }
  const others = [...served].filter((x) => x !== svc.model.name);
  throw new SteerdError(
    `the model "${model}" is not served here: this server serves ${svc.model.name} (also accepted: ${others.join(', ')}) and its presets (GET /v1/models lists them)`,
    404,
    'model_not_found',
    { model },
  );
}

/**
 * A preset from its body, checked as a request's interventions are (every vector found and fit for
 * this model, every layer, site, op and coefficient valid) before anything is stored: a missing
 * vector or one that does not fit is a 422 naming the field. The vectors are pinned: their values
 * are kept in the preset, by content hash.
 */
export async function makePreset(
  svc: Service,
  name: string,
  body: { description?: string; interventions: InterventionBody[] },
): Promise<StoredPreset> {
  if (servedNames(svc).has(name))
    throw new SteerdError(`"${name}" names the base model; a preset needs a name of its own`, 409, 'conflict', {
      preset: name,
    });
  // a hub name is reserved even where it is not the base model: a client naming it means that checkpoint
  if (Object.hasOwn(HUB_ALIASES, name) || Object.values(HUB_ALIASES).includes(name))
    throw new SteerdError(
      `"${name}" names a checkpoint on the hub; a preset needs a name of its own`,
      409,
      'conflict',
      {
        preset: name,
      },
    );
  let resolved: Awaited<ReturnType<typeof resolveInterventions>>;
  try {
    resolved = await resolveInterventions(svc, body.interventions);
  } catch (e) {
    // a vector the body names that is not there: the body cannot be stored
    if (e instanceof SteerdError && e.status === 404) throw new UnprocessableError(e.message, e.details);
    throw e;
  }
  // the prompt's length is not known yet: a sequence's rows are checked against it when used
  checkInterventions(resolved.engine, Number.MAX_SAFE_INTEGER, svc.engine.info);
  return {
    name,
    description: body.description ?? null,
    model: { id: svc.model.id, n_embd: svc.engine.info.n_embd },
    created_at: new Date().toISOString(),
    interventions: resolved.applied.map((a) => ({
      vector: a.vector,
      hash: a.hash,
      shape: a.shape,
      layer: a.layer,
      site: a.site,
      op: a.op,
      coeff: a.coeff,
      unit: a.unit,
      positions: a.positions,
    })),
    values: resolved.engine.map((e) => e.values),
  };
}
