/**
 * What a request that fails its schema is told: the field and the actual reason, from the
 * validator's errors (Ajv, with `verbose`: each error also carries its keyword's schema and the
 * schema around it).
 */

/** One validator error, as fastify passes it on. */
export interface SchemaError {
  keyword: string;
  instancePath: string;
  schemaPath: string;
  params: Record<string, unknown>;
  message?: string;
  /** With `verbose`: the value of the failing keyword (a union's alternatives). */
  schema?: unknown;
  /** With `verbose`: the schema holding the failing keyword. */
  parentSchema?: Record<string, unknown>;
}

/** An error as a response's `details` list it: without the schemas `verbose` adds. */
export const plainError = ({ keyword, instancePath, schemaPath, params, message }: SchemaError) => ({
  keyword,
  instancePath,
  schemaPath,
  params,
  message,
});

const orList = (xs: string[]) => (xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} or ${xs.at(-1)}`);
const withArticle = (type: string) => (type === 'null' ? type : `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`);
const quoted = (xs: unknown[]) => xs.map((x) => JSON.stringify(x));
const unique = <T>(xs: T[]) => [...new Set(xs)];
const segments = (path: string) => path.split('/').slice(1);

/**
 * Which of two errors got further into the data: the deeper one; at the same depth, the one at a
 * later array index; then one whose value had the right type (a range, a length) over a type
 * mismatch. Positive when `a` got further.
 */
function further(a: SchemaError, b: SchemaError): number {
  const sa = segments(a.instancePath);
  const sb = segments(b.instancePath);
  if (sa.length !== sb.length) return sa.length - sb.length;
  for (let i = 0; i < sa.length; i++) {
    const [na, nb] = [Number(sa[i]), Number(sb[i])];
    if (Number.isInteger(na) && Number.isInteger(nb) && na !== nb) return na - nb;
  }
  return Number(a.keyword !== 'type') - Number(b.keyword !== 'type');
}

/**
 * The message for a failed validation, `context` naming where the data came from (`body`,
 * `querystring`, `params`). With all-errors off the validator stops at the first failing keyword,
 * so the last error is the one that failed the schema; the errors before it are those of a union's
 * alternatives (`oneOf`, `anyOf`), listed before the union's own.
 */
export function explain(errors: SchemaError[], context = 'body'): string {
  return errors.length ? describe(errors, errors.length - 1, context) : `${context} is invalid`;
}

function describe(errors: SchemaError[], i: number, context: string): string {
  const e = errors[i];
  const where = `${context}${e.instancePath}`;
  switch (e.keyword) {
    case 'additionalProperties': {
      const known = Object.keys((e.parentSchema?.properties as object | undefined) ?? {});
      return `${where} has an unknown property ${JSON.stringify(e.params.additionalProperty)}${known.length ? ` (known: ${known.join(', ')})` : ''}`;
    }
    case 'enum':
      return `${where} must be one of ${quoted(e.params.allowedValues as unknown[]).join(', ')}`;
    case 'oneOf':
    case 'anyOf':
      return union(errors, i, context);
    default:
      return `${where} ${e.message ?? 'is invalid'}`;
  }
}

/**
 * A union that failed: when several alternatives matched (`oneOf`), which; when none did, the
 * reason of the alternative that got furthest, or, when every one failed at the value itself (its
 * type, a required property), what the value may be.
 */
function union(errors: SchemaError[], i: number, context: string): string {
  const u = errors[i];
  const where = `${context}${u.instancePath}`;
  const alternatives = (Array.isArray(u.schema) ? u.schema : []) as Record<string, unknown>[];
  const passing = u.params.passingSchemas as number[] | null | undefined;
  if (passing) {
    const required = passing.flatMap((j) => (alternatives[j]?.required as string[] | undefined) ?? []);
    return required.length
      ? `${where} takes one of ${orList(quoted(unique(required)))}, not several`
      : `${where} matches more than one of its forms (alternatives ${passing.join(' and ')})`;
  }
  // each alternative's errors come before the union's, under its schema path; the last is its own
  const last = new Map<number, number>();
  const prefix = `${u.schemaPath}/`;
  for (let j = 0; j < i; j++) {
    const path = errors[j].schemaPath;
    if (!path.startsWith(prefix)) continue;
    const alt = Number.parseInt(path.slice(prefix.length), 10);
    if (Number.isInteger(alt)) last.set(alt, j);
  }
  const atValue = (j: number) =>
    errors[j].instancePath === u.instancePath && (errors[j].keyword === 'type' || errors[j].keyword === 'required');
  const reasons = [...last.values()];
  const inside = reasons.filter((j) => !atValue(j));
  if (inside.length) {
    const j = inside.reduce((a, b) => (further(errors[b], errors[a]) > 0 ? b : a));
    return describe(errors, j, context);
  }
  const types = unique(
    reasons.filter((j) => errors[j].keyword === 'type').flatMap((j) => String(errors[j].params.type).split(',')),
  );
  const missing = unique(
    reasons.filter((j) => errors[j].keyword === 'required').map((j) => String(errors[j].params.missingProperty)),
  );
  // an alternative that failed on a missing property is an object form: say what it must hold
  const objectForm = missing.length ? `an object with ${orList(quoted(missing))}` : undefined;
  if (types.length)
    return `${where} must be ${orList([...types.map(withArticle), ...(objectForm ? [objectForm] : [])])}`;
  if (missing.length) return `${where} must have ${orList(quoted(missing))}`;
  return `${where} ${u.message ?? 'is invalid'}`;
}
