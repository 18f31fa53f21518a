#!/usr/bin/env node
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { runChaos } from './run.js';
import { runHardExitCleanups } from './util.js';

/**
 * `npm run chaos -- [--quick] [--tasks N] [--duration S] [--seed S] [--no-faults] [--recovery S] [--out DIR]`
 *
 * Runs the whole system as separate processes on services of its own (a 3-node RabbitMQ
 * cluster, PostgreSQL, Redis), injects faults on a seeded schedule while a client submits a
 * seeded mix, then checks the whole history. Prints the report; the last line is
 * `chaos: <tasks> tasks, <faults> faults, <violations> violations`. Exit 1 on any violation,
 * 2 when the run itself could not be done.
 */

const positive = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a whole number ≥ 1');
  return n;
};

const program = new Command()
  .name('chaos')
  .description('fault injection over the whole system, then a check of its history')
  .option('--quick', 'about 1,000 tasks and 60 s of faults, shorter fault holds (CI)')
  .option('--tasks <n>', 'tasks to submit (default 10000; 1000 with --quick)', positive)
  .option('--duration <s>', 'seconds of faults (default 300; 60 with --quick)', positive)
  .option('--seed <seed>', 'seed of the task mix and the fault schedule (default: random, printed)')
  .option('--no-faults', 'no nemesis: the same run on a calm system')
  .option('--recovery <s>', 'seconds the system gets after the last fault to end every task and publish the outbox (default 60 with --quick, else 120)', positive)
  .option('--warmup <s>', 'seconds of submits before the first fault', positive, 5)
  .option('--out <dir>', 'folder for the run\'s records (default: a new folder under the temp dir)')
  .action(async (opts: { quick?: boolean; tasks?: number; duration?: number; seed?: string; faults: boolean; recovery?: number; warmup: number; out?: string }) => {
    const quick = opts.quick === true;
    const seed = opts.seed ?? randomBytes(4).toString('hex');
    const outDir = resolve(opts.out ?? join(tmpdir(), `fogsched-chaos-${new Date().toISOString().replace(/[:.]/g, '-')}-${seed}`));
    const abort = new AbortController();
    const onSignal = () => {
      if (abort.signal.aborted) {
        // No time for the orderly stop: SIGKILL everything the run started.
        runHardExitCleanups();
        process.exit(130);
      }
      process.stderr.write('chaos: stopping (again to exit at once)\n');
      abort.abort();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const t0 = Date.now();
    const log = (line: string) => process.stderr.write(`[chaos +${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`);
    const tasks = opts.tasks ?? (quick ? 1000 : 10_000);
    const durationS = opts.duration ?? (quick ? 60 : 300);
    log(`seed ${seed}: ${tasks} tasks, ${opts.faults ? `${durationS} s of faults` : `${durationS} s, no faults`}; records in ${outDir}`);
    try {
      const result = await runChaos({
        tasks,
        durationS,
        seed,
        quick,
        faults: opts.faults,
        recoveryS: opts.recovery ?? (quick ? 60 : 120),
        warmupS: opts.warmup,
        outDir,
        log,
        signal: abort.signal,
      });
      process.stdout.write(result.report);
      log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s; seed ${seed}; records in ${outDir}`);
      process.exitCode = result.violations.length > 0 ? 1 : 0;
    } catch (error) {
      process.stderr.write(`chaos: the run failed: ${(error as Error).stack ?? String(error)}\n`);
      process.exitCode = 2;
    }
  });

await program.parseAsync(process.argv);
