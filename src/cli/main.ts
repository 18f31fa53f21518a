#!/usr/bin/env node
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { readFileSync, writeFileSync } from 'node:fs';
import { FogschedError } from '../domain/index.js';
import { loadConfig, type Config } from '../infra/config.js';
import { createLogger } from '../infra/logger.js';
import { DEFAULT_ROLES, ROLE_NAMES, runStart, topologyOf } from './start.js';
import { DEFAULT_VHOST, formatDefinitions, topologyDefinitions } from './topology-export.js';
import type { HealthcheckRole } from './healthcheck.js';

/**
 * `start` runs for as long as the process lives, so it loads only what its roles need (a fog
 * node alone never loads pg, Kysely, node-pg-migrate or Fastify); the other commands' modules
 * load only when one of them runs.
 */
const starting = process.argv[2] === 'start';

// `fogsched tasks list | head -1`: the reader went away, so the rest of the output has nowhere to
// go. A command stops quietly, as other command-line tools do, rather than with an EPIPE stack
// trace (`start` writes its logs elsewhere and is left as it was).
if (!starting) {
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
    process.exit(0);
  });
}

const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function config(): Config {
  return loadConfig();
}

const program = new Command()
  .name('fogsched')
  .description('Event-sourced task scheduler for fog computing')
  .version(version)
  // Commander's own errors (unknown option, missing argument, bad value) are one line too; the
  // exit code is decided below, where every error ends.
  .exitOverride()
  .configureOutput({ outputError: (text, write) => write(`fogsched: ${text.replace(/^error: /, '').trim().replace(/\s*\n\s*/g, ' ')} (see --help)\n`) });

program
  .command('migrate')
  .description('create the database if missing and apply pending migrations')
  .action(async () => {
    const c = config();
    const logger = createLogger(c.LOG_LEVEL);
    const { migrate } = await import('../infra/postgres.js');
    await migrate(c.DATABASE_URL, logger);
    process.stdout.write('migrations applied\n');
  });

program
  .command('start')
  .description('migrate, then run the roles in this process until SIGTERM/SIGINT')
  .option('--roles <list>', `comma-separated roles: ${ROLE_NAMES.join(', ')} (default all but autoscaler)`, parseRoles, [...DEFAULT_ROLES])
  .option('--fog-nodes <n>', 'local fog nodes to run when the fog-node role is on', parsePositiveInt, 1)
  .option('--tier <tier>', 'tier of the local fog nodes (default FOG_NODE_TIER)')
  .option('--no-migrate', 'do not apply migrations first')
  .option('--rebuild-stale', 'rebuild read models older than this code\'s projection versions before serving (else start refuses them)')
  .action(async (opts: { roles: string[]; fogNodes: number; tier?: string; migrate: boolean; rebuildStale?: boolean }) => {
    await runStart({ config: config(), version, roles: opts.roles, fogNodes: opts.fogNodes, tier: opts.tier, migrate: opts.migrate, rebuildStale: opts.rebuildStale === true });
  });

program
  .command('doctor')
  .description('check PostgreSQL, RabbitMQ and Redis and say how to start what is missing')
  .action(async () => {
    const { runDoctor } = await import('./doctor.js');
    const ok = await runDoctor(config());
    process.exitCode = ok ? 0 : 1;
  });

if (!starting) {
  const { HEALTHCHECK_ROLES, runHealthcheck } = await import('./healthcheck.js');
  const parseHealthcheckRole = (value: string): HealthcheckRole => {
    if (!(HEALTHCHECK_ROLES as readonly string[]).includes(value)) throw new InvalidArgumentError(`roles are ${HEALTHCHECK_ROLES.join(', ')}`);
    return value as HealthcheckRole;
  };
  program
    .command('healthcheck')
    .description('container health check: exit 0 when the role is healthy, 1 otherwise (one line)')
    .option('--role <role>', `one of ${HEALTHCHECK_ROLES.join(', ')}`, parseHealthcheckRole, 'api')
    .option('--timeout-ms <ms>', 'per check', parsePositiveInt, 3000)
    .action(async (opts: { role: HealthcheckRole; timeoutMs: number }) => {
      process.exitCode = (await runHealthcheck(config(), { role: opts.role, timeoutMs: opts.timeoutMs })) ? 0 : 1;
    });
}

program
  .command('topology')
  .description('broker topology')
  .command('export')
  .description('print RabbitMQ definitions JSON (vhost, exchanges, quorum queues, bindings) of the configured topology')
  .option('--vhost <vhost>', 'vhost of every definition', DEFAULT_VHOST)
  .option('--out <file>', 'write to this file instead of stdout')
  .action((opts: { vhost: string; out?: string }) => {
    const text = formatDefinitions(topologyDefinitions(topologyOf(config()), opts.vhost));
    if (opts.out) writeFileSync(opts.out, text);
    else process.stdout.write(text);
  });

program
  .command('cluster')
  .description('broker cluster and fog-node membership')
  .command('status')
  .description('print brokers (member, master, healthy, last heartbeat) and fog nodes from Redis; add --json for GET /v1/cluster\'s body')
  .option('--json', 'print JSON')
  .action(async (opts: { json?: boolean }) => {
    const { formatClusterStatus, readCluster } = await import('./cluster-status.js');
    const view = await readCluster(config());
    process.stdout.write(opts.json ? `${JSON.stringify(view, null, 2)}\n` : formatClusterStatus(view));
    process.exitCode = view.redis === 'ok' ? 0 : 2;
  });

if (!starting) {
  const [{ registerProjectionCommands }, { registerLogCommands }, { registerAuditCommands }, { registerClientCommands }] = await Promise.all([
    import('./projection-commands.js'),
    import('./log-commands.js'),
    import('./audit-commands.js'),
    import('./client-commands.js'),
  ]);
  registerProjectionCommands(program, { config });
  registerLogCommands(program, { config });
  registerAuditCommands(program, { config });
  // After the log commands: `task submit`, `task list`, ... join their `task` (which has `show`).
  registerClientCommands(program);
}

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
  // Help and --version end through here with code 0; commander printed its other errors already
  // (an InvalidArgumentError an action throws itself it has not: that one is printed below).
  if (error instanceof CommanderError && !(error instanceof InvalidArgumentError)) process.exit(error.exitCode);
  // One clear line for the user; the stack only with LOG_LEVEL=debug.
  const message = error instanceof FogschedError ? error.message : error instanceof Error ? error.message : String(error);
  process.stderr.write(`fogsched: ${message}\n`);
  if (process.env.LOG_LEVEL === 'debug' && error instanceof Error) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
