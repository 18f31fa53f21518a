import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt';
import buildGetJwks from 'get-jwks';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { FogschedError } from '../domain/index.js';
import { API_ROLES, TENANT_PATTERN, type ApiRole, type JwtSettings } from '../infra/config.js';
import { UnauthorizedError, bearerOf, type JwtVerifier, type Principal } from './auth.js';
import { cutText, findTextViolation } from './input.js';

type Algorithm = NonNullable<NonNullable<FastifyJWTOptions['verify']>['algorithms']>[number];

/** Algorithms per key source: a token naming any other (`none`, or HS256 against a JWKS) is refused before its key is looked up. */
const HMAC_ALGORITHMS: Algorithm[] = ['HS256'];
const JWKS_ALGORITHMS: Algorithm[] = ['RS256', 'ES256'];
/** Clock skew accepted on `exp` and `nbf`. */
const CLOCK_TOLERANCE_MS = 5_000;
/** A JWKS that does not answer within this is treated as down (503), not as a bad token. */
const JWKS_TIMEOUT_MS = 5_000;
/**
 * Lookups of (alg, kid) pairs not seen before, at most this many per window, and a pair the key set
 * lacked is not looked up again for a minute: tokens with random kids must not make us hammer the
 * provider. The price: while such a flood lasts, a key rotated in meanwhile may be refused for a
 * window. Pairs, not kids, so a token naming a real kid with the wrong alg cannot block that kid.
 */
const UNKNOWN_KID_LOOKUPS = 10;
const UNKNOWN_KID_WINDOW_MS = 10_000;
const MISSING_KID_MS = 60_000;

export class AuthUnavailableError extends FogschedError {
  constructor(cause: unknown) {
    super({ code: 'AUTH_UNAVAILABLE', status: 503, message: 'the signing keys of the token issuer cannot be fetched; retry later', cause });
  }
}

/**
 * Registers @fastify/jwt on `app` and returns the verifier the access hook calls for a bearer
 * value shaped like a JWT. HS256 with JWT_SECRET, and/or RS256/ES256 with the key the token's `kid`
 * names in JWT_JWKS_URL (fetched with get-jwks, cached a minute; only that URL is ever fetched,
 * whatever the token's `iss` says). Every token needs `exp` and `sub`; `iss` and `aud` are checked
 * when set; the tenant and role come from the configured claims.
 */
export async function registerJwt(app: FastifyInstance, settings: JwtSettings): Promise<JwtVerifier> {
  const algorithms = [...(settings.secret ? HMAC_ALGORITHMS : []), ...(settings.jwksUrl ? JWKS_ALGORITHMS : [])];
  let secret: string | ((request: FastifyRequest, token: unknown) => Promise<string>);
  if (!settings.jwksUrl) {
    secret = settings.secret as string;
  } else {
    const url = new URL(settings.jwksUrl);
    const jwks = buildGetJwks({ jwksPath: `${url.pathname}${url.search}`, ttl: 60_000 });
    const known = new Set<string>(); // `${alg} ${kid}` found in the key set
    const missing = new Map<string, number>(); // `${alg} ${kid}` → when the key set lacked it
    let window = { start: 0, lookups: 0 };
    secret = async (_request, token) => {
      const header = (token as { header?: { alg?: unknown; kid?: unknown } }).header ?? {};
      const alg = typeof header.alg === 'string' ? header.alg : '';
      const kid = typeof header.kid === 'string' ? header.kid : '';
      if (!(algorithms as string[]).includes(alg)) throw new UnauthorizedError(`the token is signed ${JSON.stringify(alg)}; this API accepts ${algorithms.join(', ')}`);
      // The key follows from the alg, never the other way round: an HS256 token is checked with the secret only.
      if ((HMAC_ALGORITHMS as string[]).includes(alg)) return settings.secret as string;
      if (!kid) throw new UnauthorizedError('the token names no key (kid)');
      const notFound = new UnauthorizedError(`the token's key ${JSON.stringify(kid)} is not in the issuer's key set`);
      const pair = `${alg} ${kid}`;
      if (!known.has(pair)) {
        const now = Date.now();
        if (now - (missing.get(pair) ?? -Infinity) < MISSING_KID_MS) throw notFound;
        if (now - window.start >= UNKNOWN_KID_WINDOW_MS) window = { start: now, lookups: 0 };
        if (++window.lookups > UNKNOWN_KID_LOOKUPS) throw notFound;
      }
      try {
        const key = await withTimeout(jwks.getPublicKey({ domain: url.origin, alg, kid }), JWKS_TIMEOUT_MS);
        known.add(pair);
        return key;
      } catch (error) {
        if ((error as { code?: string }).code === 'JWK_NOT_FOUND') {
          if (missing.size > 10_000) missing.clear();
          missing.set(pair, Date.now());
          known.delete(pair); // rotated out
          throw notFound;
        }
        app.log.warn({ err: (error as Error).message, jwks: url.origin + url.pathname }, 'jwks unavailable');
        throw new AuthUnavailableError(error);
      }
    };
  }
  await app.register(fastifyJwt, {
    secret,
    decode: { complete: true },
    verify: {
      algorithms,
      requiredClaims: ['exp', 'sub'],
      clockTolerance: CLOCK_TOLERANCE_MS,
      ...(settings.issuer ? { allowedIss: settings.issuer } : {}),
      ...(settings.audience.length > 0 ? { allowedAud: [...settings.audience] } : {}),
      extractToken: (request: FastifyRequest) => bearerOf(request) ?? undefined,
    },
  });

  return async (request) => {
    let claims: Record<string, unknown>;
    try {
      claims = await request.jwtVerify<Record<string, unknown>>();
    } catch (error) {
      if (error instanceof FogschedError) throw error;
      throw new UnauthorizedError(`the token is not valid: ${(error as Error).message}`);
    }
    return principalOf(claims, settings);
  };
}

/** Tenant, role and actor from verified claims; 401 when one is missing or not usable. */
export function principalOf(claims: Record<string, unknown>, settings: Pick<JwtSettings, 'tenantClaim' | 'roleClaim'>): Principal {
  const tenant = claimAt(claims, settings.tenantClaim);
  if (typeof tenant !== 'string' || !TENANT_PATTERN.test(tenant)) {
    throw new UnauthorizedError(`the token's ${settings.tenantClaim} claim must name a tenant (letters, digits, '.', '_' or '-')`);
  }
  const raw = claimAt(claims, settings.roleClaim);
  const named = (Array.isArray(raw) ? raw : [raw]).filter((r): r is ApiRole => typeof r === 'string' && (API_ROLES as readonly string[]).includes(r));
  if (named.length !== 1) {
    throw new UnauthorizedError(`the token's ${settings.roleClaim} claim must hold exactly one of ${API_ROLES.join(', ')}${named.length > 1 ? ` (it holds ${named.join(', ')})` : ''}`);
  }
  const sub = claims.sub;
  if (typeof sub !== 'string' || sub.length === 0) throw new UnauthorizedError('the token has no subject (sub)');
  // The actor goes into every event's metadata (jsonb): text PostgreSQL refuses would be a 500 there.
  const bad = findTextViolation(sub, 'sub');
  if (bad) throw new UnauthorizedError(`the token's subject (sub) ${bad.message}`);
  return { tenant, role: named[0] as ApiRole, actor: `jwt:${cutText(sub, 200)}`, via: 'jwt' };
}

/** `a.b.c` reaches into nested objects (Keycloak puts roles under `realm_access.roles`); a claim named with the dots wins. */
function claimAt(claims: Record<string, unknown>, path: string): unknown {
  if (Object.hasOwn(claims, path)) return claims[path];
  let at: unknown = claims;
  for (const part of path.split('.')) {
    if (at === null || typeof at !== 'object' || !Object.hasOwn(at, part)) return undefined;
    at = (at as Record<string, unknown>)[part];
  }
  return at;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
