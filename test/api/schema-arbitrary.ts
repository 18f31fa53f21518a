import fc from 'fast-check';
import type { JsonSchema } from './contract.js';

/**
 * fast-check arbitraries from the JSON Schemas of an OpenAPI document: values a schema admits
 * (with its boundaries: shortest and longest strings, smallest and largest numbers) and values
 * that break it (one part of a valid value replaced by something hostile). Covers the keywords
 * fogsched's document uses; an unknown one fails loudly rather than generate nonsense.
 */

export interface SchemaContext {
  /** Resolves `#/components/schemas/Name`. */
  resolve(ref: string): JsonSchema;
  /** Generators that replace the schema's for a property of this name (e.g. a cron expression). */
  readonly hints?: Readonly<Record<string, fc.Arbitrary<unknown>>>;
}

const STRING_CAP = 40;
const ARRAY_CAP = 4;

/** Values `schema` admits. */
export function validValue(schema: JsonSchema, ctx: SchemaContext, name?: string): fc.Arbitrary<unknown> {
  if (name && ctx.hints?.[name]) return ctx.hints[name];
  if (schema.$ref) return validValue(ctx.resolve(schema.$ref), ctx, name);
  if (Array.isArray(schema.enum)) return fc.constantFrom(...(schema.enum as unknown[]));
  if ('const' in schema) return fc.constant(schema.const);
  const union = (schema.anyOf ?? schema.oneOf) as JsonSchema[] | undefined;
  if (union) return fc.oneof(...union.map((s) => validValue(s, ctx, name)));
  const type = schema.type as string | string[] | undefined;
  if (Array.isArray(type)) return fc.oneof(...type.map((t) => validValue({ ...schema, type: t }, ctx, name)));
  switch (type) {
    case undefined:
      return anyJson;
    case 'null':
      return fc.constant(null);
    case 'boolean':
      return fc.boolean();
    case 'integer': {
      const min = (schema.minimum as number | undefined) ?? -1_000_000;
      const max = (schema.maximum as number | undefined) ?? 1_000_000;
      return fc.oneof({ arbitrary: fc.integer({ min, max }), weight: 3 }, fc.constantFrom(min, max));
    }
    case 'number': {
      const exclusive = schema.exclusiveMinimum as number | undefined;
      const min = exclusive !== undefined ? exclusive + 1e-6 : ((schema.minimum as number | undefined) ?? -1e6);
      const max = (schema.maximum as number | undefined) ?? 1e6;
      return fc.oneof({ arbitrary: fc.double({ min, max, noNaN: true, noDefaultInfinity: true }), weight: 3 }, fc.constantFrom(min, max));
    }
    case 'string':
      return validString(schema);
    case 'array': {
      const items = validValue((schema.items as JsonSchema | undefined) ?? {}, ctx);
      const minLength = (schema.minItems as number | undefined) ?? 0;
      return fc.array(items, { minLength, maxLength: Math.max(minLength, Math.min((schema.maxItems as number | undefined) ?? ARRAY_CAP, ARRAY_CAP)) });
    }
    case 'object': {
      const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
      const required = (schema.required ?? []) as string[];
      const model = Object.fromEntries(Object.entries(properties).map(([key, s]) => [key, validValue(s, ctx, key)]));
      if (Object.keys(model).length === 0) return fc.dictionary(fc.string({ maxLength: 8 }), anyJson, { maxKeys: 3 });
      return fc.record(model, { requiredKeys: required, noNullPrototype: true });
    }
    default:
      throw new Error(`schema-arbitrary: type ${JSON.stringify(type)} is not handled`);
  }
}

function validString(schema: JsonSchema): fc.Arbitrary<string> {
  const minLength = (schema.minLength as number | undefined) ?? 0;
  const maxLength = (schema.maxLength as number | undefined) ?? 1000;
  if (schema.format === 'uuid') return fc.uuid();
  if (schema.format === 'date-time') return dateTime;
  if (typeof schema.pattern === 'string') {
    const re = new RegExp(schema.pattern);
    return fc.stringMatching(re).filter((s) => s.length >= minLength && s.length <= maxLength);
  }
  return fc.oneof(
    { arbitrary: fc.string({ minLength, maxLength: Math.max(minLength, Math.min(maxLength, STRING_CAP)), unit: 'grapheme' }), weight: 4 },
    // The longest allowed, in ASCII and in characters of 2 and 4 UTF-8 bytes.
    fc.constantFrom('x'.repeat(maxLength), 'é'.repeat(maxLength), '\u{1F600}'.repeat(Math.floor(maxLength / 2))),
  );
}

const DAY = 86_400_000;
/** Times a submit would take: mostly ahead (a deadline must not be past), some with an offset. */
const dateTime = fc
  .tuple(fc.integer({ min: 120_000, max: 3 * 365 * DAY }), fc.constantFrom('Z', '+00:00', '+05:30', '-08:00'))
  .map(([ahead, zone]) => {
    const iso = new Date(Date.now() + ahead).toISOString();
    return zone === 'Z' ? iso : iso.replace('Z', zone);
  });

const anyJson: fc.Arbitrary<unknown> = fc.jsonValue({ maxDepth: 3 });

const nest = (depth: number, leaf: unknown, asObject: boolean): unknown => {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = asObject ? { k: v } : [v];
  return v;
};

/** Strings a careless server chokes on. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '\u0000',
    'a\u0000b',
    'noop\u0000',
    '\ud800',
    'x\udc00y',
    '\udbff\udfff',
    '\u{1F600}',
    '\u202egnp.exe',
    '\u200b',
    '\ufeff',
    '\uffff',
    '',
    ' ',
    '%00',
    '../../etc/passwd',
    "'; DROP TABLE events; --",
    '{"type":"noop"}',
    '1e400',
    'NaN',
    '-0',
    'x'.repeat(201),
    'x'.repeat(100_000),
  ),
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.string({ unit: fc.constantFrom('\u0000', '\ud800', '\udfff', 'a', '\u00e9'), minLength: 1, maxLength: 10 }),
);

/** Values of the wrong type, too large, too deep, too many. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  hostileString,
  fc.constantFrom(0, -0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1, 2 ** 63, Number.MIN_VALUE, 101, 86_400_001),
  fc.constantFrom(true, false, null, [], {}, [1, 2], { a: 1 }, [null]),
  fc.integer({ min: 33, max: 300 }).chain((depth) => fc.boolean().map((asObject) => nest(depth, 1, asObject))),
  fc.constant(Array.from({ length: 1001 }, () => ({ type: 'noop' }))),
  fc.dictionary(hostileString, fc.constant(1), { minKeys: 1, maxKeys: 2 }),
);

type Json = unknown;

/** Every place in a JSON value: the root, each property, each item. */
function placesOf(value: Json, path: (string | number)[] = []): (string | number)[][] {
  const here = [path];
  if (Array.isArray(value)) return here.concat(...value.map((v, i) => placesOf(v, [...path, i])));
  if (value && typeof value === 'object') return here.concat(...Object.entries(value).map(([k, v]) => placesOf(v, [...path, k])));
  return here;
}

function setAt(root: Json, path: (string | number)[], f: (parent: Record<string | number, Json>, key: string | number) => void): Json {
  const copy = structuredClone<Json>(root);
  if (path.length === 0) return copy;
  let parent = copy as Record<string | number, Json>;
  for (const key of path.slice(0, -1)) parent = parent[key] as Record<string | number, Json>;
  f(parent, path[path.length - 1]!);
  return copy;
}

/** A valid value with one part broken: replaced, removed, or joined by an unknown field. */
export function broken(valid: fc.Arbitrary<Json>): fc.Arbitrary<Json> {
  return fc.tuple(valid, fc.nat(), fc.constantFrom('replace', 'remove', 'add', 'root'), hostileValue, hostileString).map(([value, pick, action, hostile, key]) => {
    if (action === 'root') return hostile;
    const places = placesOf(value);
    const place = places[pick % places.length]!;
    if (place.length === 0) return action === 'replace' ? hostile : value;
    return setAt(value, place, (parent, last) => {
      if (action === 'replace') parent[last] = hostile;
      else if (action === 'remove') {
        if (Array.isArray(parent)) parent.splice(Number(last), 1);
        else delete parent[last];
      } else if (parent && typeof parent === 'object' && !Array.isArray(parent)) parent[key] = hostile;
      else parent[last] = { [key]: hostile };
    });
  });
}
