import { defineConfig } from 'vitest/config';

// Three projects: pure unit tests, integration tests against the real services,
// and end-to-end tests that spawn the built CLI. `npm test` runs all three.
export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.int.test.ts', 'test/**/*.e2e.test.ts'],
        },
      },
      {
        test: {
          name: 'int',
          include: ['test/**/*.int.test.ts'],
          globalSetup: ['test/helpers/global-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/**/*.e2e.test.ts'],
          globalSetup: ['test/helpers/global-setup.ts'],
          testTimeout: 180_000,
          hookTimeout: 60_000,
          // Spawned processes compete for 2 cores: one e2e file at a time.
          fileParallelism: false,
        },
      },
    ],
  },
});
