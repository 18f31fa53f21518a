// @ts-check
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/**
 * The folder boundaries of DESIGN.md and STYLE.md, as import rules. Patterns are matched
 * against the import as written (relative paths included), gitignore style.
 */

/** Node modules that do I/O (files, network, processes, threads, clocks of the host). */
const NODE_IO = [
  'fs',
  'fs/promises',
  'net',
  'tls',
  'dgram',
  'dns',
  'dns/promises',
  'http',
  'https',
  'http2',
  'child_process',
  'cluster',
  'worker_threads',
  'os',
  'readline',
  'inspector',
  'process',
].flatMap((m) => [m, `node:${m}`]);

const IO_PACKAGES = ['pg', 'pg-copy-streams', 'kysely', 'amqplib', 'ioredis', 'fastify', '@fastify/*', 'node-pg-migrate', 'pino'];

/** The domain is pure: nothing outside domain/, no package or node module that does I/O. */
/** Where the domain would take time or randomness itself; they come in the command instead. */
const NODE_CLOCKS = ['crypto', 'perf_hooks', 'timers', 'timers/promises'].flatMap((m) => [m, `node:${m}`]);

const domainRule = {
  paths: [
    ...NODE_IO.map((name) => ({ name, message: 'src/domain has no I/O: pass what it needs in the command.' })),
    ...NODE_CLOCKS.map((name) => ({ name, message: 'src/domain is pure: clock, ids and randomness come in the command.' })),
  ],
  patterns: [
    { group: ['../*', '../../*'], message: 'src/domain imports nothing outside src/domain.' },
    { group: IO_PACKAGES, message: 'src/domain has no I/O: it never touches a database, broker, Redis or HTTP.' },
  ],
};

/** A fog node sees RabbitMQ and Redis only: it never reaches PostgreSQL or the code that writes it. */
const fogNodeRule = {
  patterns: [
    { group: ['pg', 'pg-*', 'kysely', 'kysely/*', 'node-pg-migrate'], message: 'A fog node never talks to PostgreSQL.' },
    { group: ['**/store', '**/store/*', '**/projections', '**/projections/*', '**/tasks', '**/tasks/*'], message: 'A fog node never reaches the event store, the read models or the task service.' },
    { group: ['**/outbox', '**/outbox/*', '**/infra/postgres*', '**/infra/index*'], message: 'A fog node reaches the broker through src/broker, never through the outbox or the PostgreSQL helpers.' },
  ],
};

/** The broker module is messaging only. */
const brokerRule = {
  patterns: [
    { group: ['**/store', '**/store/*', '**/projections', '**/projections/*', '**/tasks', '**/tasks/*', '**/outbox', '**/outbox/*'], message: 'src/broker knows RabbitMQ, not the store, the read models or the outbox.' },
    { group: ['pg', 'pg-*', 'kysely', 'kysely/*'], message: 'src/broker knows RabbitMQ, not PostgreSQL.' },
  ],
};

/**
 * The typed client ships as `fogsched/client` for Node 20+ and browsers: global fetch only, so it
 * imports nothing outside its folder, no package and no node module.
 */
const clientRule = {
  patterns: [
    { regex: '^(?!\\./)', message: 'src/client imports only its own files: no package, no node module, nothing outside src/client (it uses the global fetch).' },
  ],
};

/** Everywhere else, the broker module is used through its index.ts, its public face. */
const brokerFace = { group: ['**/broker/*', '!**/broker/index.js'], message: 'Import src/broker through its index.js.' };

export default defineConfig(
  { ignores: ['dist/', 'coverage/', 'node_modules/', 'bench/results/', '.scratch/'] },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      // `_` marks what is left out on purpose (a destructured field dropped, a Fastify hook's reply).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true }],
      // A `let` read by a closure before its one assignment (the relay's term) cannot be a const.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // Async without await is how an interface is met here (Role.start, Fastify plugins and hooks,
      // test doubles of async functions); the rule finds no bug in this code base, only those.
      '@typescript-eslint/require-await': 'off',
      // Passing on what was caught or an abort reason, as it is, is not inventing a non-Error.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingAny: true, allowThrowingUnknown: true }],
      'no-restricted-imports': ['error', { patterns: [brokerFace] }],
    },
  },
  { files: ['src/domain/**/*.ts'], rules: { 'no-restricted-imports': ['error', domainRule] } },
  { files: ['src/fog-node/**/*.ts'], rules: { 'no-restricted-imports': ['error', { patterns: [...fogNodeRule.patterns, brokerFace] }] } },
  { files: ['src/broker/**/*.ts'], rules: { 'no-restricted-imports': ['error', brokerRule] } },
  { files: ['src/client/**/*.ts'], rules: { 'no-restricted-imports': ['error', clientRule] } },
  {
    // Tests read arbitrary JSON (API answers, log lines, broker messages) as `any` on purpose.
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    // Plain JavaScript (the bin shim, scripts, this file) and the contract client, which is
    // type-checked on its own against types generated at test time (test/api/openapi-contract.int.test.ts):
    // linted without type information.
    files: ['**/*.js', '**/*.mjs', 'test/api/contract-client.ts'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: globals.node },
  },
);
