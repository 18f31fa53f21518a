import { readdir, readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { FogschedError } from '../domain/index.js';

/**
 * The dashboard's static files (built by `npm run build` into dist/ui; sources in ui/), served at
 * /ui. They are public, like /docs: they hold no data. The page asks for a credential and calls
 * the authenticated /v1 API with it, so what anyone sees is what their credential may read.
 */
export const DEFAULT_UI_DIR = fileURLToPath(new URL('../../dist/ui/', import.meta.url));

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};

// The page loads only its own files and talks only to this origin.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** A dashboard file that is not there is a path without a route, as for any other path. */
const notFound = (message: string) => new FogschedError({ code: 'ROUTE_NOT_FOUND', status: 404, message });

interface File {
  readonly body: Buffer;
  readonly type: string;
  /** Vite names assets by content hash: they never change under their name. */
  readonly immutable: boolean;
}

/** Every file under `dir`, read once at start (the bundle is small); an absent folder gives none. */
async function loadFiles(dir: string): Promise<Map<string, File>> {
  const files = new Map<string, File>();
  let names: string[];
  try {
    names = await readdir(dir, { recursive: true });
  } catch {
    return files;
  }
  for (const name of names) {
    const path = join(dir, name);
    let body: Buffer;
    try {
      body = await readFile(path);
    } catch {
      continue; // a folder
    }
    const url = relative(dir, path).split(sep).join('/');
    const ext = url.slice(url.lastIndexOf('.'));
    files.set(url, { body, type: TYPES[ext] ?? 'application/octet-stream', immutable: url.startsWith('assets/') });
  }
  return files;
}

/**
 * GET /ui (redirects to /ui/), /ui/ (the page) and /ui/<file>. Only files that exist in the build
 * are served, looked up by name in a table: no path from the URL ever reaches the file system.
 */
export async function uiRoutes(app: FastifyInstance, options: { dir?: string }): Promise<void> {
  const files = await loadFiles(options.dir ?? DEFAULT_UI_DIR);
  const send = (reply: FastifyReply, name: string) => {
    const file = files.get(name);
    if (!file) throw notFound(name === 'index.html' ? 'the dashboard is not built: run npm run build' : `no file ${name} in the dashboard`);
    return reply
      .header('content-type', file.type)
      .header('cache-control', file.immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .send(file.body);
  };
  const schema = { hide: true };
  app.get('/ui', { config: { access: 'public' }, schema }, async (_request, reply) => reply.redirect('/ui/', 302));
  app.get('/ui/', { config: { access: 'public' }, schema }, async (_request, reply) => send(reply, 'index.html'));
  app.get<{ Params: { '*': string } }>('/ui/*', { config: { access: 'public' }, schema }, async (request, reply) => send(reply, request.params['*']));
}
