/** Every /v1 route of the API and the ways of writing a path that tests of access send. */
export const ID = '0190a0b0-0000-7000-8000-000000000001';
/** Every /v1 route; access.int.test.ts checks this list against the app's routes. */
export const V1_ROUTES: readonly (readonly [string, string])[] = [
  ['POST', '/v1/tasks'],
  ['GET', '/v1/tasks'],
  ['POST', '/v1/tasks/batch'],
  ['GET', '/v1/tasks/:id'],
  ['GET', '/v1/tasks/:id/history'],
  ['GET', '/v1/tasks/:id/graph'],
  ['POST', '/v1/workflows'],
  ['POST', '/v1/tasks/:id/cancel'],
  ['POST', '/v1/tasks/:id/requeue'],
  ['GET', '/v1/cluster'],
  ['GET', '/v1/dlq'],
  ['POST', '/v1/dlq/requeue'],
  ['POST', '/v1/schedules'],
  ['GET', '/v1/schedules'],
  ['GET', '/v1/schedules/:id'],
  ['POST', '/v1/schedules/:id/pause'],
  ['POST', '/v1/schedules/:id/resume'],
  ['DELETE', '/v1/schedules/:id'],
  ['GET', '/v1/events'],
  ['GET', '/v1/tasks/:id/events'],
  ['GET', '/v1/stats'],
  ['GET', '/v1/audit/queries'],
  ['GET', '/v1/audit/queries/:name'],
];
export const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

/** Ways to write `path` (a concrete /v1 path) that a router, proxy or client may read differently. */
export function variants(path: string): string[] {
  const rest = path.slice('/v1/'.length); // e.g. tasks/<id>/cancel
  const [first = '', ...more] = rest.split('/');
  const tail = more.length > 0 ? `/${more.join('/')}` : '';
  const enc = (c: string) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`;
  return [
    path,
    `/%761/${rest}`,
    `/%561/${rest}`,
    `/v%31/${rest}`,
    `/%76%31/${rest}`,
    `/${[...'v1'].map(enc).join('')}/${[...first].map(enc).join('')}${tail}`,
    `//v1/${rest}`,
    `/v1//${rest}`,
    `///v1/${rest}`,
    `/v1/./${rest}`,
    `/./v1/${rest}`,
    `/v1/x/../${rest}`,
    `/v1/%2E/${rest}`,
    `/v1/${rest}/`,
    `/v1/${rest}/.`,
    `/V1/${rest}`,
    `/v1/${first.toUpperCase()}${tail}`,
    `/v1/${first.charAt(0).toUpperCase()}${first.slice(1)}${tail}`,
    `/v1/${rest}%2F`,
    `/v1/${rest}%2f`,
    `/v1%2F${rest}`,
    `/v1/${enc(first.charAt(0))}${first.slice(1)}${tail}`,
    `/v1/${rest}%20`,
    `/v1/${rest};x=1`,
    `/v1\\${rest}`,
    `/v1/${rest}?`,
    `/v1/${rest}?x=1`,
  ];
}

