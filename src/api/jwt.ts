import { KeyObject } from 'node:crypto';
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt';
import { createRemoteJWKSet, customFetch, errors as joseErrors, jwksCache, type ExportedJWKSCache, type JWKSCacheInput } from 'jose';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { FogschedError } from '../domain/index.js';
import { API_ROLES, RESERVED_TENANTS, TENANT_PATTERN, type ApiRole, type JwtSettings } from '../infra/config.js';
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
 * The key set is fetched again this long after the last fetch that worked, in the background: a
 * key the provider dropped is refused a minute later, and once a set is loaded no token waits for
 * the provider, nor fails while it is down (the last set answers meanwhile).
 */
const JWKS_MAX_AGE_MS = 60_000;
/**
 * A kid the key set lacks makes us fetch the set again, but at most once per this: tokens naming
 * random kids (anyone can send them, with no credential) cost the provider one fetch per 10 s,
 * and since the whole set is kept, a key the provider rotates in is found within 10 s whatever
 * else is sent meanwhile. (Looking kids up one by one under a lookup budget, as before, let such
 * a flood spend the budget and keep a rotated key refused for as long as it lasted.)
 */
const UNKNOWN_KID_COOLDOWN_MS = 10_000;

export class AuthUnavailableError extends FogschedError {
  constructor(cause: unknown) {
    super({ code: 'AUTH_UNAVAILABLE', status: 503, message: 'the signing keys of the token issuer cannot be fetched; retry later', cause });
  }
}

/**
 * Registers @fastify/jwt on `app` and returns the verifier the access hook calls for a bearer
 * value shaped like a JWT. HS256 with JWT_SECRET, and/or RS256/ES256 with the key the token's `kid`
 * names in the key set at JWT_JWKS_URL (fetched whole with jose's remote key set, refreshed in the
 * background after a minute; only that URL is ever fetched, whatever the token's `iss` says). Every token needs `exp` and
 * `sub`, and `iss` and `aud` (matching) when JWT_ISSUER and JWT_AUDIENCE are set; the tenant and
 * role come from the configured claims.
 */
export async function registerJwt(app: FastifyInstance, settings: JwtSettings): Promise<JwtVerifier> {
  const algorithms = [...(settings.secret ? HMAC_ALGORITHMS : []), ...(settings.jwksUrl ? JWKS_ALGORITHMS : [])];
  let secret: string | ((request: FastifyRequest, token: unknown) => Promise<string>);
  if (!settings.jwksUrl) {
    secret = settings.secret as string;
  } else {
    const url = new URL(settings.jwksUrl);
    // jose's cooldown counts from the last fetch that worked: while the provider fails, every token
    // would make it fetch again, so a failed fetch holds the next one back for the cooldown too.
    let failedAt = -Infinity;
    const fetchOnceInAWhile = async (resource: string, init: RequestInit): Promise<Response> => {
      if (Date.now() - failedAt < UNKNOWN_KID_COOLDOWN_MS) throw new Error(`the key set could not be fetched less than ${UNKNOWN_KID_COOLDOWN_MS / 1000} s ago`);
      try {
        const response = await fetch(resource, init);
        if (response.status !== 200) failedAt = Date.now();
        return response;
      } catch (error) {
        failedAt = Date.now();
        throw error;
      }
    };
    const loaded: Partial<ExportedJWKSCache> = {}; // jose writes the set and the time (uat) of each fetch that worked
    const keySet = createRemoteJWKSet(url, {
      timeoutDuration: JWKS_TIMEOUT_MS,
      cacheMaxAge: Infinity, // aged out below, in the background, instead of in the request that finds it old
      cooldownDuration: UNKNOWN_KID_COOLDOWN_MS,
      [customFetch]: fetchOnceInAWhile,
      [jwksCache]: loaded as JWKSCacheInput,
    });
    const unavailable = (error: unknown) => app.log.warn({ err: (error as Error).message, jwks: url.origin + url.pathname }, 'jwks unavailable');
    const pems = new WeakMap<object, string>(); // jose keeps one key object per JWK of the set; fast-jwt wants PEM
    secret = async (_request, token) => {
      const header = (token as { header?: { alg?: unknown; kid?: unknown } }).header ?? {};
      const alg = typeof header.alg === 'string' ? header.alg : '';
      const kid = typeof header.kid === 'string' ? header.kid : '';
      if (!(algorithms as string[]).includes(alg)) throw new UnauthorizedError(`the token is signed ${JSON.stringify(alg)}; this API accepts ${algorithms.join(', ')}`);
      // The key follows from the alg, never the other way round: an HS256 token is checked with the secret only.
      if ((HMAC_ALGORITHMS as string[]).includes(alg)) return settings.secret as string;
      if (!kid) throw new UnauthorizedError('the token names no key (kid)');
      const now = Date.now();
      if (loaded.uat !== undefined && now - loaded.uat >= JWKS_MAX_AGE_MS && now - failedAt >= UNKNOWN_KID_COOLDOWN_MS && !keySet.reloading) {
        keySet.reload().catch(unavailable);
      }
      let key: Awaited<ReturnType<typeof keySet>>;
      try {
        key = await keySet({ alg, kid });
      } catch (error) {
        if (error instanceof joseErrors.JWKSNoMatchingKey || error instanceof joseErrors.JWKSMultipleMatchingKeys) {
          throw new UnauthorizedError(`the token's key ${JSON.stringify(kid)} is not in the issuer's key set`);
        }
        unavailable(error);
        throw new AuthUnavailableError(error);
      }
      let pem = pems.get(key);
      if (pem === undefined) pems.set(key, (pem = KeyObject.from(key).export({ type: 'spki', format: 'pem' }) as string));
      return pem;
    };
  }
  await app.register(fastifyJwt, {
    secret,
    decode: { complete: true },
    verify: {
      algorithms,
      // fast-jwt checks allowedIss/allowedAud only on a token that has the claim: without requiring
      // them, a token with no iss or no aud (one the provider made for another client) passed both.
      requiredClaims: ['exp', 'sub', ...(settings.issuer ? ['iss'] : []), ...(settings.audience.length > 0 ? ['aud'] : [])],
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
  if (RESERVED_TENANTS.has(tenant)) throw new UnauthorizedError(`the token's ${settings.tenantClaim} claim names the reserved tenant ${tenant}`);
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
