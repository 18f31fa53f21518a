#!/usr/bin/env node
import { Command, InvalidArgumentError } from 'commander';
import { readFileSync } from 'node:fs';
import { FogschedError } from '../domain/index.js';
import { loadConfig, type Config } from '../infra/config.js';
import { createLogger } from '../infra/logger.js';
import { migrate } from '../infra/postgres.js';
import { runDoctor } from './doctor.js';
import { ROLE_NAMES, runStart } from './start.js';

const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function config(): Config {
  return loadConfig();
}

const program = new Command()
  .name('fogsched')
  .description('Event-sourced task scheduler for fog computing')
  .version(version)
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) });

program
  .command('migrate')
  .description('create the database if missing and apply pending migrations')
  .action(async () => {
    const c = config();
    const logger = createLogger(c.LOG_LEVEL);
    await migrate(c.DATABASE_URL, logger);
    process.stdout.write('migrations applied\n');
  });

program
  .command('start')
  .description('migrate, then run the roles in this process until SIGTERM/SIGINT')
  .option('--roles <list>', `comma-separated roles: ${ROLE_NAMES.join(', ')}`, parseRoles, [...ROLE_NAMES])
  .option('--fog-nodes <n>', 'local fog nodes to run when the fog-node role is on', parsePositiveInt, 1)
  .option('--tier <tier>', 'tier of the local fog nodes (default FOG_NODE_TIER)')
  .option('--no-migrate', 'do not apply migrations first')
  .action(async (opts: { roles: string[]; fogNodes: number; tier?: string; migrate: boolean }) => {
    await runStart({ config: config(), version, roles: opts.roles, fogNodes: opts.fogNodes, tier: opts.tier, migrate: opts.migrate });
  });

program
  .command('doctor')
  .description('check PostgreSQL, RabbitMQ and Redis and say how to start what is missing')
  .action(async () => {
    const ok = await runDoctor(config());
    process.exitCode = ok ? 0 : 1;
  });

function parseRoles(value: string): string[] {
  const roles = value.split(',').map((r) => r.trim()).filter(Boolean);
  const unknown = roles.filter((r) => !(ROLE_NAMES as readonly string[]).includes(r));
  if (unknown.length > 0 || roles.length === 0) throw new InvalidArgumentError(`unknown role ${unknown.join(', ') || '(none)'}; roles are ${ROLE_NAMES.join(', ')}`);
  return roles;
}

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('must be a whole number ≥ 0');
  return n;
}

program.parseAsync(process.argv).catch((error: unknown) => {
  // One clear line for the user; the stack only with LOG_LEVEL=debug.
  const message = error instanceof FogschedError ? error.message : error instanceof Error ? error.message : String(error);
  process.stderr.write(`fogsched: ${message}\n`);
  if (process.env.LOG_LEVEL === 'debug' && error instanceof Error) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
