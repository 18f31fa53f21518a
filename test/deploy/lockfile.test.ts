import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * `npm ci` (the README's install, and the Dockerfile's) refuses a lock that lacks an optional
 * package some locked package names. Our registry mirror has no other-platform binaries, so a
 * lock written here loses them unless scripts/complete-lock.mjs puts them back.
 */
const lock = JSON.parse(
  readFileSync(fileURLToPath(new URL('../../package-lock.json', import.meta.url)), 'utf8'),
) as { packages: Record<string, { optionalDependencies?: Record<string, string> }> };

describe('package-lock.json', () => {
  it('has an entry for every optional dependency, so npm ci accepts it on any platform', () => {
    const missing: string[] = [];
    for (const [path, meta] of Object.entries(lock.packages)) {
      for (const name of Object.keys(meta.optionalDependencies ?? {})) {
        const key = `node_modules/${name}`;
        if (!lock.packages[key] && !lock.packages[`${path}/${key}`]) missing.push(`${name} (from ${path})`);
      }
    }
    expect(missing, 'run `node scripts/complete-lock.mjs` after `npm install`').toEqual([]);
  });
});
