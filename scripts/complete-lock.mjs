// Adds a lock entry for every optional platform package that a locked package names but the
// lock lacks. The npm registry mirror our machines reach answers 404 for other platforms'
// binaries (darwin, win32, ...), so `npm install` here leaves them out of package-lock.json and
// `npm ci` then refuses that lock as out of sync. The added entries carry only the exact
// version and `optional: true`: npm ci skips them where they are not for this platform or not
// found, and fetches them by name@version on a machine that needs them.
// Run after any change to the dependencies: `npm install && node scripts/complete-lock.mjs`.
import { readFileSync, writeFileSync } from 'node:fs';

const file = process.argv[2] ?? 'package-lock.json';
const lock = JSON.parse(readFileSync(file, 'utf8'));
const packages = lock.packages;
const added = [];

for (const [path, meta] of Object.entries(packages)) {
  for (const [name, spec] of Object.entries(meta.optionalDependencies ?? {})) {
    const key = `node_modules/${name}`;
    if (packages[key] || packages[`${path}/${key}`]) continue;
    if (!/^\d+\.\d+\.\d+(-[\w.]+)?$/.test(spec)) {
      console.error(`complete-lock: ${name}@${spec} (from ${path}) is not an exact version; left out`);
      continue;
    }
    packages[key] = { version: spec, ...(meta.dev ? { dev: true } : {}), optional: true };
    added.push(`${name}@${spec}`);
  }
}

const root = packages[''];
delete packages[''];
const sorted = Object.keys(packages).sort((a, b) => a.localeCompare(b, 'en'));
lock.packages = { '': root, ...Object.fromEntries(sorted.map((k) => [k, packages[k]])) };
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`complete-lock: ${added.length} entries added${added.length ? `: ${added.join(', ')}` : ''}`);
