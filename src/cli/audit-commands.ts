import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULT_VERIFY_BATCH_SIZE, verifyHashChains, type VerifyProgress, type VerifyResult } from '../audit/hash-chain.js';
import type { Config } from '../infra/config.js';
import { redactUrl } from '../infra/logger.js';
import { createPostgres } from '../infra/postgres.js';

/** Exit codes of `fogsched audit verify`. */
export const AUDIT_EXIT = { intact: 0, broken: 1, failed: 2 } as const;

/**
 * `fogsched audit verify [--stream <id>] [--batch-size <n>]`: walks the events' hash chains.
 * Exits 0 when every chain holds, 1 at the first broken link, 2 when it could not check
 * (PostgreSQL unreachable, database not migrated).
 */
export function registerAuditCommands(program: Command, deps: { config: () => Config }): void {
  const audit = program.command('audit').description('tamper evidence of the event log');
  audit
    .command('verify')
    .description('recompute every stream\'s hash chain and report the first broken link (exit 0 intact, 1 broken, 2 could not check)')
    .option('--stream <id>', 'check only this stream')
    .option('--batch-size <n>', 'events per query', parseBatchSize, DEFAULT_VERIFY_BATCH_SIZE)
    .action(async (opts: { stream?: string; batchSize: number }) => {
      const config = deps.config();
      const pg = createPostgres({
        url: config.DATABASE_URL,
        poolMax: 1,
        connectTimeoutMs: config.PG_CONNECT_TIMEOUT_MS,
        statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS,
        applicationName: 'fogsched-audit',
      });
      const progress = process.stderr.isTTY ? progressLine(process.stderr) : undefined;
      try {
        const result = await verifyHashChains(pg.db, { streamId: opts.stream, batchSize: opts.batchSize, onProgress: progress?.update });
        progress?.clear();
        process.stdout.write(formatAuditReport(result, { streamId: opts.stream }));
        process.exitCode = result.broken ? AUDIT_EXIT.broken : AUDIT_EXIT.intact;
      } catch (error) {
        progress?.clear();
        process.stderr.write(`fogsched: audit verify could not check ${redactUrl(config.DATABASE_URL)}: ${describeFailure(error)}\n`);
        process.exitCode = AUDIT_EXIT.failed;
      } finally {
        await pg.close();
      }
    });
}

/** The report `fogsched audit verify` prints: one line when intact, two at a broken link. */
export function formatAuditReport(result: VerifyResult, scope: { streamId?: string } = {}): string {
  const events = `${result.checked} ${result.checked === 1 ? 'event' : 'events'}`;
  const streams = `${result.streams} ${result.streams === 1 ? 'stream' : 'streams'}`;
  const b = result.broken;
  if (b === null) {
    const none = scope.streamId !== undefined && result.checked === 0 ? ` (stream ${scope.streamId} has no events)` : '';
    return `ok: ${events} in ${streams}, every chain intact${none}\n`;
  }
  return (
    `BROKEN: stream ${b.streamId} version ${b.streamVersion} (position ${b.position}, event ${b.eventId}): ${b.reason}\n` +
    `  ${b.kind}; expected hash ${b.expected || '-'}, stored ${b.actual || '-'}; ${events} in ${streams} checked\n`
  );
}

function describeFailure(error: unknown): string {
  const code = (error as { code?: string }).code;
  // 42703 undefined column (hash), 42883 undefined function (event_hash), 42P01 no events table.
  if (code === '42703' || code === '42883' || code === '42P01') return 'the database has no hash chains yet; run `fogsched migrate` first';
  return error instanceof Error ? error.message : String(error);
}

function progressLine(out: NodeJS.WriteStream): { update: (p: VerifyProgress) => void; clear: () => void } {
  let shownAt = 0;
  return {
    update(p) {
      const now = Date.now();
      if (now - shownAt < 250) return;
      shownAt = now;
      out.write(`\r\x1b[Kchecked ${p.checked} events in ${p.streams} streams (at ${p.streamId})`);
    },
    clear() {
      if (shownAt > 0) out.write('\r\x1b[K');
    },
  };
}

function parseBatchSize(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 100_000) throw new InvalidArgumentError('must be a whole number from 1 to 100000');
  return n;
}
