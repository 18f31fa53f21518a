import type { FastifyReply, FastifyRequest } from 'fastify';
import { FogschedError, ValidationError } from '../domain/index.js';
import { INPUT_LIMITS } from './schemas.js';

/**
 * Checks on what a request carries that a JSON schema cannot say: text PostgreSQL refuses (a NUL
 * character, a lone UTF-16 surrogate, which `jsonb` and `text` reject as a 500 deep in a
 * transaction), nesting that overflows a recursive JSON walk, payload sizes, cursors and times.
 * Each throws a FogschedError the problem writer turns into a 400 or 413 with the path.
 */

export interface InputViolation {
  readonly path: string;
  readonly message: string;
}

const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();

function textViolation(s: string): string | null {
  if (s.includes('\u0000')) return 'contains a NUL character (\\u0000), which cannot be stored';
  if (!isWellFormed(s)) return 'contains a lone surrogate (not valid Unicode)';
  return null;
}

const pointer = (key: string) => key.replace(/~/g, '~0').replace(/\//g, '~1');

/**
 * The first NUL, lone surrogate or too-deep nesting in a parsed JSON value (keys included), or
 * null. Iterative, so a body nested 500,000 levels costs a walk of 32.
 */
export function findTextViolation(value: unknown, path: string, maxDepth = INPUT_LIMITS.maxJsonDepth): InputViolation | null {
  const stack: [unknown, string, number][] = [[value, path, 1]];
  for (let next = stack.pop(); next; next = stack.pop()) {
    const [v, p, depth] = next;
    if (typeof v === 'string') {
      const message = textViolation(v);
      if (message) return { path: p, message };
      continue;
    }
    if (v === null || typeof v !== 'object') continue;
    if (depth > maxDepth) return { path: p, message: `is nested deeper than ${maxDepth} levels` };
    if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push([v[i], `${p}/${i}`, depth + 1]);
      continue;
    }
    const keys = Object.keys(v);
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i] as string;
      const message = textViolation(key);
      // The key itself stays out of the path: it is what cannot be shown.
      if (message) return { path: p, message: `has a key that ${message}` };
      stack.push([(v as Record<string, unknown>)[key], `${p}/${pointer(key)}`, depth + 1]);
    }
  }
  return null;
}

/** `s` cut to at most `max` UTF-16 units, never between the halves of a surrogate pair (half of one is text PostgreSQL refuses). */
export function cutText(s: string, max: number): string {
  if (s.length <= max) return s;
  const last = s.charCodeAt(max - 1);
  return s.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

function refuse(violation: InputViolation): never {
  throw new ValidationError(`${violation.path} ${violation.message}`, { errors: [violation] });
}

/**
 * onRequest: a NUL in the URL (path or query, raw or %00), in a decoded query value or in a
 * header value is refused before any route runs. Node's HTTP parser already refuses a raw NUL in
 * a header on a real socket; this also covers `inject` and every other way in.
 */
export async function refuseBadTextInRequest(request: FastifyRequest, _reply: FastifyReply): Promise<void> {
  const url = request.raw.url ?? request.url;
  const q = url.indexOf('?');
  const pathPart = q < 0 ? url : url.slice(0, q);
  // eslint-disable-next-line no-control-regex -- NUL is what PostgreSQL refuses: finding it is the point
  if (/%00|\u0000/i.test(pathPart)) refuse({ path: 'url', message: 'contains a NUL character (%00), which cannot be stored' });
  const query = request.query as Record<string, unknown> | undefined;
  if (query && typeof query === 'object') {
    for (const [key, value] of Object.entries(query)) {
      const inKey = textViolation(key);
      if (inKey) refuse({ path: 'querystring', message: `has a parameter name that ${inKey}` });
      const v = findTextViolation(value, `querystring/${pointer(key)}`);
      if (v) refuse(v);
    }
  }
  for (const [name, value] of Object.entries(request.headers)) {
    const v = findTextViolation(value, `headers/${name}`);
    if (v) refuse(v);
  }
}

/** preValidation: the parsed body, keys and values at any depth. */
export async function refuseBadTextInBody(request: FastifyRequest, _reply: FastifyReply): Promise<void> {
  if (request.body === undefined) return;
  const v = findTextViolation(request.body, 'body');
  if (v) refuse(v);
}

export class PayloadTooLargeError extends FogschedError {
  constructor(limitBytes: number, violations: (InputViolation & { bytes: number })[]) {
    const first = violations[0] as InputViolation & { bytes: number };
    super({
      code: 'PAYLOAD_TOO_LARGE',
      status: 413,
      message: `${first.path} is ${first.bytes} bytes as JSON; the limit is ${limitBytes} (MAX_PAYLOAD_BYTES)${violations.length > 1 ? `; and ${violations.length - 1} more` : ''}`,
      details: { limitBytes, errors: violations.map(({ path, message }) => ({ path, message })) },
    });
  }
}

/** Throws PAYLOAD_TOO_LARGE (413) naming every payload over `limitBytes` as UTF-8 JSON. */
export function checkPayloadSizes(payloads: readonly { readonly path: string; readonly payload: unknown }[], limitBytes: number): void {
  const over: (InputViolation & { bytes: number })[] = [];
  for (const { path, payload } of payloads) {
    if (payload === undefined) continue;
    const bytes = Buffer.byteLength(JSON.stringify(payload));
    if (bytes > limitBytes) over.push({ path, bytes, message: `is ${bytes} bytes as JSON; the limit is ${limitBytes}` });
  }
  if (over.length > 0) throw new PayloadTooLargeError(limitBytes, over);
}

/**
 * A cursor is a position (bigint). The schema admits 1 to 19 digits; this refuses what bigint
 * cannot hold. Positions come from bigserial columns read as JavaScript numbers (they stay far
 * below 2^53), so a larger valid cursor means "after every row" and is clamped to 2^53 - 1.
 */
export function parseCursor(cursor: string | undefined, path = 'querystring/cursor'): number | undefined {
  if (cursor === undefined) return undefined;
  const value = BigInt(cursor);
  if (value < 1n || value > INPUT_LIMITS.maxCursor) refuse({ path, message: `must be a position from 1 to ${INPUT_LIMITS.maxCursor}` });
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

/**
 * The nextCursor of a page: its last position when the page is full, by count (`limit`) or by
 * bytes (INPUT_LIMITS.maxPageBytes reached); null otherwise. A page that ends exactly at the last
 * item may still give a cursor, whose page is then empty.
 */
export function nextCursorOf(rows: readonly { readonly seq: number; readonly pageBytes?: number }[], limit: number): string | null {
  const last = rows[rows.length - 1];
  if (!last) return null;
  return rows.length >= limit || (last.pageBytes ?? 0) >= INPUT_LIMITS.maxPageBytes ? String(last.seq) : null;
}

const EARLIEST = Date.parse(INPUT_LIMITS.earliestTime);
const LATEST = Date.parse(INPUT_LIMITS.latestTime);

/** The `date-time` format the API validates with: RFC 3339 (as ajv-formats checks it), and an instant JavaScript and PostgreSQL both hold. */
export function strictDateTime(base: (s: string) => boolean): (s: string) => boolean {
  return (s) => {
    if (!base(s)) return false;
    const ms = Date.parse(s);
    return Number.isFinite(ms) && ms >= EARLIEST && ms <= LATEST;
  };
}

/** notBefore and deadline of a submit: not too far ahead, a deadline not in the past (beyond skew) nor before notBefore. */
export function checkTaskTimes(body: { readonly notBefore?: string; readonly deadline?: string }, path: string, now = Date.now()): void {
  const errors: InputViolation[] = [];
  const latest = now + INPUT_LIMITS.maxAheadMs;
  const notBefore = body.notBefore ? Date.parse(body.notBefore) : null;
  const deadline = body.deadline ? Date.parse(body.deadline) : null;
  if (notBefore !== null && notBefore > latest) errors.push({ path: `${path}/notBefore`, message: 'must be at most 10 years ahead' });
  if (deadline !== null && deadline > latest) errors.push({ path: `${path}/deadline`, message: 'must be at most 10 years ahead' });
  if (deadline !== null && deadline < now - INPUT_LIMITS.deadlineSkewMs) errors.push({ path: `${path}/deadline`, message: `is in the past (more than ${INPUT_LIMITS.deadlineSkewMs / 1000} s ago)` });
  if (notBefore !== null && deadline !== null && deadline <= notBefore) errors.push({ path: `${path}/deadline`, message: 'must be after notBefore' });
  if (errors.length > 0) throw new ValidationError(errors.map((e) => `${e.path} ${e.message}`).join('; '), { errors });
}
