import { describe, expect, it } from 'vitest';
import { mayCall } from '../../src/api/auth.js';
import { principalOf } from '../../src/api/jwt.js';
import { jwtSettings, loadConfig, parseApiKeys } from '../../src/infra/config.js';

const K = '0123456789abcdef0123';

describe('parseApiKeys', () => {
  it('reads `key`, `tenant:key` (both operator) and `tenant:role:key`', () => {
    expect(parseApiKeys(`${K}a, acme:${K}b ,acme:submitter:${K}c,acme:auditor:${K}d,globex:operator:${K}e`)).toEqual([
      { tenant: 'default', role: 'operator', key: `${K}a` },
      { tenant: 'acme', role: 'operator', key: `${K}b` },
      { tenant: 'acme', role: 'submitter', key: `${K}c` },
      { tenant: 'acme', role: 'auditor', key: `${K}d` },
      { tenant: 'globex', role: 'operator', key: `${K}e` },
    ]);
  });

  it('takes the second field as a role only when it is exactly one; otherwise the rest is the key, colons and all', () => {
    expect(parseApiKeys(`acme:Submitter:${K}`)).toEqual([{ tenant: 'acme', role: 'operator', key: `Submitter:${K}` }]);
    expect(parseApiKeys(`acme:admin:${K}`)).toEqual([{ tenant: 'acme', role: 'operator', key: `admin:${K}` }]);
    expect(parseApiKeys(`acme:${K}:x:y`)).toEqual([{ tenant: 'acme', role: 'operator', key: `${K}:x:y` }]);
  });

  it('refuses short keys, bad tenants, keys shaped like a JWT and a key listed twice', () => {
    expect(() => parseApiKeys('acme:auditor:short')).toThrow(/key of 5 characters \(tenant acme\)/);
    expect(() => parseApiKeys(`ac me:${K}`)).toThrow(/tenant "ac me"/);
    expect(() => parseApiKeys(`acme:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.${K}`)).toThrow(/shaped like a JWT/);
    expect(() => parseApiKeys(`acme:${K},globex:auditor:${K}`)).toThrow(/lists one key twice/);
    // `system` is the tenant fog-node and autoscaler events record: no credential may carry it.
    expect(() => parseApiKeys(`system:submitter:${K}`)).toThrow(/tenant "system" is reserved/);
  });
});

describe('mayCall', () => {
  const table = (method: string) =>
    Object.fromEntries((['public', 'submitter', 'auditor', 'operator'] as const).map((access) => [access, (['submitter', 'auditor', 'operator'] as const).filter((r) => mayCall(r, access, method))]));

  it('operator calls everything; submitter its routes; auditor reads only', () => {
    expect(table('GET')).toEqual({
      public: ['submitter', 'auditor', 'operator'],
      submitter: ['submitter', 'auditor', 'operator'],
      auditor: ['auditor', 'operator'],
      operator: ['operator'],
    });
    for (const method of ['POST', 'DELETE', 'PUT', 'PATCH']) {
      expect(table(method)).toEqual({ public: ['submitter', 'auditor', 'operator'], submitter: ['submitter', 'operator'], auditor: ['auditor', 'operator'], operator: ['operator'] });
    }
    expect(table('HEAD')).toEqual(table('GET'));
  });
});

describe('JWT settings', () => {
  const base = { JWT_TENANT_CLAIM: 'tenant', JWT_ROLE_CLAIM: 'role', JWT_ISSUER: '', JWT_AUDIENCE: '', JWT_SECRET: '', JWT_JWKS_URL: '' };

  it('off without a secret or a JWKS URL', () => {
    expect(jwtSettings(base)).toBeNull();
    expect(jwtSettings(loadConfig({}))).toBeNull();
  });

  it('HS256 from JWT_SECRET or JWT_SECRET_FILE; RS256/ES256 from JWT_JWKS_URL with issuer and audience', () => {
    const secret = 's'.repeat(32);
    expect(jwtSettings(loadConfig({ JWT_SECRET_FILE: '/run/secrets/jwt_secret' }, () => `${secret}\n`))).toMatchObject({ secret, jwksUrl: null });
    expect(jwtSettings({ ...base, JWT_JWKS_URL: 'https://idp.example/realms/fog/protocol/openid-connect/certs', JWT_ISSUER: 'https://idp.example/realms/fog', JWT_AUDIENCE: 'fogsched, other' })).toEqual({
      secret: null,
      jwksUrl: 'https://idp.example/realms/fog/protocol/openid-connect/certs',
      issuer: 'https://idp.example/realms/fog',
      audience: ['fogsched', 'other'],
      tenantClaim: 'tenant',
      roleClaim: 'role',
    });
  });

  it('refuses unsafe or unclear settings at start', () => {
    expect(() => loadConfig({ JWT_SECRET: 'short' })).toThrow(/JWT_SECRET has 5 characters; HS256 needs at least 32/);
    expect(() => loadConfig({ JWT_SECRET: 's'.repeat(32), JWT_JWKS_URL: 'https://idp.example/certs' })).toThrow(/needs JWT_ISSUER and JWT_AUDIENCE/);
    expect(() => loadConfig({ JWT_JWKS_URL: 'https://idp.example/certs', JWT_ISSUER: 'https://idp.example' })).toThrow(/needs JWT_ISSUER and JWT_AUDIENCE/);
    expect(() => loadConfig({ JWT_JWKS_URL: 'ftp://idp.example/certs', JWT_ISSUER: 'x', JWT_AUDIENCE: 'y' })).toThrow(/must be http\(s\)/);
    expect(() => loadConfig({ JWT_ISSUER: 'https://idp.example' })).toThrow(/neither JWT_SECRET/);
    expect(() => loadConfig({ JWT_SECRET: 's'.repeat(32), JWT_ROLE_CLAIM: 'a..b' })).toThrow(/JWT_ROLE_CLAIM/);
  });
});

describe('principalOf (claims of a verified token)', () => {
  const claims = { tenantClaim: 'tenant', roleClaim: 'role' };

  it('tenant and role from the claims, actor from sub', () => {
    expect(principalOf({ sub: 'svc-1', tenant: 'acme', role: 'auditor' }, claims)).toEqual({ tenant: 'acme', role: 'auditor', actor: 'jwt:svc-1', via: 'jwt' });
  });

  it('reaches into nested claims and takes an array holding exactly one role', () => {
    const keycloak = { sub: 'u', org: { id: 'acme' }, realm_access: { roles: ['offline_access', 'submitter', 'uma_authorization'] } };
    expect(principalOf(keycloak, { tenantClaim: 'org.id', roleClaim: 'realm_access.roles' })).toMatchObject({ tenant: 'acme', role: 'submitter' });
  });

  it('refuses a missing or unusable tenant, role or subject', () => {
    expect(() => principalOf({ sub: 'x', tenant: 'system', role: 'operator' }, claims)).toThrow(/reserved tenant system/);
    expect(() => principalOf({ sub: 'u', role: 'operator' }, claims)).toThrow(/tenant claim must name a tenant/);
    expect(() => principalOf({ sub: 'u', tenant: 'a b', role: 'operator' }, claims)).toThrow(/tenant claim/);
    expect(() => principalOf({ sub: 'u', tenant: 'acme' }, claims)).toThrow(/role claim must hold exactly one of submitter, operator, auditor/);
    expect(() => principalOf({ sub: 'u', tenant: 'acme', role: 'admin' }, claims)).toThrow(/role claim/);
    expect(() => principalOf({ sub: 'u', tenant: 'acme', role: ['auditor', 'operator'] }, claims)).toThrow(/it holds auditor, operator/);
    expect(() => principalOf({ tenant: 'acme', role: 'operator' }, claims)).toThrow(/no subject/);
    expect(() => principalOf({ sub: 'u\u0000', tenant: 'acme', role: 'operator' }, claims)).toThrow(/subject \(sub\) contains a NUL/);
    expect(() => principalOf({ sub: 'u\ud800', tenant: 'acme', role: 'operator' }, claims)).toThrow(/subject \(sub\) contains a lone surrogate/);
    expect(() => principalOf({ sub: 'u', tenant: 'acme', role: 'toString' }, claims)).toThrow(/role claim/);
    expect(() => principalOf({ sub: 'u', role: 'operator' }, { tenantClaim: 'constructor', roleClaim: 'role' })).toThrow(/constructor claim must name a tenant/);
  });
});
