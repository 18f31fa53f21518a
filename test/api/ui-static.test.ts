import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorHandler, notFoundHandler } from '../../src/api/errors.js';
import { uiRoutes } from '../../src/api/ui.js';

/** The dashboard's static files at /ui, from a folder shaped like Vite's output. */
describe('GET /ui', () => {
  let dir: string;
  let app: FastifyInstance;
  let bare: FastifyInstance;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fogsched-ui-'));
    mkdirSync(join(dir, 'assets'));
    writeFileSync(join(dir, 'index.html'), '<!doctype html><title>fogsched</title>');
    writeFileSync(join(dir, 'assets', 'index-abc123.js'), 'console.log(1)');
    writeFileSync(join(dir, 'assets', 'index-abc123.css'), 'body{}');
    const make = async (uiDir: string) => {
      const a = Fastify();
      a.setErrorHandler(errorHandler);
      a.setNotFoundHandler(notFoundHandler);
      await a.register(uiRoutes, { dir: uiDir });
      return a;
    };
    app = await make(dir);
    bare = await make(join(dir, 'missing'));
  });
  afterAll(async () => {
    await app.close();
    await bare.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('redirects /ui to /ui/ and serves the page with a strict content security policy, never cached stale', async () => {
    const redirect = await app.inject('/ui');
    expect(redirect.statusCode).toBe(302);
    expect(redirect.headers.location).toBe('/ui/');
    const page = await app.inject('/ui/');
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['cache-control']).toBe('no-cache');
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    expect(page.headers['content-security-policy']).toContain("connect-src 'self'");
    expect(page.body).toContain('<title>fogsched</title>');
  });

  it('serves hashed assets with their type, cached for good', async () => {
    const js = await app.inject('/ui/assets/index-abc123.js');
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.headers['cache-control']).toContain('immutable');
    expect(js.headers['x-content-type-options']).toBe('nosniff');
    expect((await app.inject('/ui/assets/index-abc123.css')).headers['content-type']).toBe('text/css; charset=utf-8');
  });

  it('answers only files of the build: anything else, traversal included, is a 404 problem', async () => {
    for (const path of ['/ui/nope.js', '/ui/../package.json', '/ui/%2e%2e/package.json', '/ui/assets/../../package.json', '/ui/assets/']) {
      const res = await app.inject(path);
      expect(res.statusCode, path).toBe(404);
      expect(res.headers['content-type'], path).toContain('application/problem+json');
    }
  });

  it('says how to build the dashboard when it was not built', async () => {
    const res = await bare.inject('/ui/');
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ code: 'ROUTE_NOT_FOUND', detail: 'the dashboard is not built: run npm run build' });
  });
});
