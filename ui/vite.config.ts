import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// The dashboard, bundled at build time into dist/ui and served by the api at /ui (src/api/ui.ts).
// Preact's JSX through esbuild: no Babel preset, so the build takes seconds.
export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/ui/',
  logLevel: 'warn',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: fileURLToPath(new URL('../dist/ui', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    reportCompressedSize: false,
  },
});
