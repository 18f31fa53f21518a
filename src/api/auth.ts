import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import { FogschedError } from '../domain/index.js';
import { API_ROLES, JWT_SHAPE, type ApiKey, type ApiRole } from '../infra/config.js';

/**
 * Who may call a route. `public`: anyone, no credential needed. A role: a credential of that
 * role or a stronger one, where `operator` may call every route, `auditor` every route declared
 * `submitter` or `auditor` that only reads (GET/HEAD), and `submitter` the routes declared
 * `submitter`. Every route declares one in `config: { access }`; the API does not start otherwise.
 */
export type Access = 'public' | ApiRole;

/** The authenticated caller. */
export interface Principal {
  readonly tenant: string;
  readonly role: ApiRole;
  /**
   * Who, for the audit trail, from the credential alone: `key:<tenant>/<first 8 hex of the key's
   * SHA-256>`, `jwt:<sub>`, or `anonymous` when the API runs without credentials.
   */
  readonly actor: string;
  readonly via: 'api-key' | 'jwt' | 'open';
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's tenant: from its credential, or `default` when the API runs without any. */
    tenant: string;
    /** The authenticated caller; null on a public route called without a (valid) credential. */
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyInstance {
    /** Every route with its declared access, as registered (tests and docs read it). */
    routeAccess: readonly RouteAccess[];
  }
}

export interface RouteAccess {
  readonly method: string;
  readonly url: string;
  readonly access: Access | undefined;
}

/** Verifies a bearer value shaped like a JWT; throws UnauthorizedError (or a 503 when the keys cannot be fetched). */
export type JwtVerifier = (request: FastifyRequest) => Promise<Principal>;

export class UnauthorizedError extends FogschedError {
  constructor(message: string) {
    super({ code: 'UNAUTHORIZED', status: 401, message });
  }
}

export class ForbiddenError extends FogschedError {
  constructor(message: string, details?: Record<string, unknown>) {
    super({ code: 'FORBIDDEN', status: 403, message, ...(details ? { details } : {}) });
  }
}

const ACCESS: readonly string[] = ['public', ...API_ROLES];
const READS = new Set(['GET', 'HEAD']);

/** Whether a caller of `role` may call a route declared `access` with `method`. */
export function mayCall(role: ApiRole, access: Access, method: string): boolean {
  switch (access) {
    case 'public':
      return true;
    case 'operator':
      return role === 'operator';
    case 'auditor':
      return role === 'operator' || role === 'auditor';
    case 'submitter':
      return role !== 'auditor' || READS.has(method);
    default:
      return access satisfies never;
  }
}

/**
 * Makes every route of `app` declare its access: routes are collected as they are registered and
 * `ready()` fails naming any without a valid `config.access` (an `auditor` route must only read).
 * Decorates `app.routeAccess` with the table.
 */
export function requireAccessDeclarations(app: FastifyInstance): void {
  const routes: RouteOptions[] = [];
  app.addHook('onRoute', (route) => {
    routes.push(route);
  });
  const table = () =>
    routes.flatMap((r) => (Array.isArray(r.method) ? r.method : [r.method]).map((method) => ({ method: String(method), url: r.url, access: r.config?.access })));
  app.decorate('routeAccess', { getter: table });
  app.addHook('onReady', async () => {
    const bad = table().filter((r) => !ACCESS.includes(r.access as string) || (r.access === 'auditor' && !READS.has(r.method)));
    if (bad.length > 0) {
      throw new Error(`routes without a valid access declaration (config.access: public, submitter, operator or auditor; auditor only on GET): ${bad.map((r) => `${r.method} ${r.url}`).join(', ')}`);
    }
  });
}

/** An onRoute hook that declares `access` on every route of the scope it is added to (for plugins' own routes). */
export function declareAccess(access: Access) {
  return (route: RouteOptions): void => {
    route.config = { ...route.config, access };
  };
}

export interface AuthOptions {
  readonly keys: readonly ApiKey[];
  /** Present when JWT bearer tokens are enabled. */
  readonly jwt?: JwtVerifier | undefined;
}

/**
 * The onRequest hook deciding access from the matched route's declaration, never from the URL
 * text: the router has already decoded and matched the path, so `/%761/tasks` is the route
 * `/v1/tasks` with its declaration, and a path no route matches goes to the 404 handler, which
 * runs no route handler. Credentials: `Authorization: Bearer <API key or JWT>` or
 * `X-API-Key: <key>`; keys are compared as SHA-256 digests in constant time. With no key and no
 * JWT setting every caller is an operator of tenant `default` (local use; a warning is logged).
 */
export function accessHook(options: AuthOptions) {
  const keys = options.keys.map((k) => ({ tenant: k.tenant, role: k.role, digest: sha256(k.key), actor: `key:${k.tenant}/${sha256(k.key).toString('hex').slice(0, 8)}` }));
  const open = keys.length === 0 && !options.jwt;
  const OPEN: Principal = Object.freeze({ tenant: 'default', role: 'operator', actor: 'anonymous', via: 'open' });

  const authenticate = async (request: FastifyRequest): Promise<Principal> => {
    if (open) return OPEN;
    const presented = credentialOf(request);
    if (!presented) throw new UnauthorizedError('this API needs a credential: send `Authorization: Bearer <API key or JWT>` or `X-API-Key: <key>`');
    if (presented.bearer && JWT_SHAPE.test(presented.value)) {
      if (!options.jwt) throw new UnauthorizedError('this API does not accept JWT bearer tokens');
      return options.jwt(request);
    }
    const digest = sha256(presented.value);
    // Every key is compared, so the time taken does not tell which one nearly matched.
    let found: (typeof keys)[number] | null = null;
    for (const k of keys) if (timingSafeEqual(k.digest, digest) && found === null) found = k;
    if (found === null) throw new UnauthorizedError('the API key is not valid');
    return { tenant: found.tenant, role: found.role, actor: found.actor, via: 'api-key' };
  };

  return async function checkAccess(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    request.principal = null;
    request.tenant = 'default';
    if (request.is404) return; // the not-found handler answers; no route handler runs
    const access = request.routeOptions.config.access;
    if (access === 'public') {
      // Optional there: a valid credential only adds details (the operator's view of /readyz).
      request.principal = await authenticate(request).catch(() => null);
      return;
    }
    if (access === undefined || !ACCESS.includes(access)) {
      request.log.error({ route: request.routeOptions.url, method: request.method }, 'route declares no access; refused');
      throw new ForbiddenError('this route declares no access and is refused');
    }
    let principal: Principal;
    try {
      principal = await authenticate(request);
    } catch (error) {
      if (error instanceof UnauthorizedError) reply.header('www-authenticate', 'Bearer realm="fogsched"');
      throw error;
    }
    if (!mayCall(principal.role, access, request.method)) {
      throw new ForbiddenError(`role ${principal.role} may not call ${request.method} ${request.routeOptions.url ?? ''}; it needs ${access === 'submitter' ? 'submitter or operator' : access === 'auditor' ? 'auditor or operator' : 'operator'}`, {
        role: principal.role,
      });
    }
    request.principal = principal;
    request.tenant = principal.tenant;
  };
}

/** The bearer value (API key or JWT) or the X-API-Key header. */
function credentialOf(request: FastifyRequest): { value: string; bearer: boolean } | null {
  const token = bearerOf(request);
  if (token) return { value: token, bearer: true };
  const key = request.headers['x-api-key'];
  return typeof key === 'string' && key.length > 0 ? { value: key, bearer: false } : null;
}

export function bearerOf(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  if (typeof header !== 'string') return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? (match[1] as string) : null;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}
