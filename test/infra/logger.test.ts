import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, withLogFields } from '../../src/infra/logger.js';

/** A logger writing its lines into an array, parsed. */
function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger('info', {}, stream), lines };
}

describe('log fields of a task (withLogFields)', () => {
  it('every line written inside carries trace_id and task_id, through awaits and child loggers; lines outside do not', async () => {
    const { logger, lines } = capture();
    const child = logger.child({ role: 'fog-node' });
    const fields = { trace_id: '4bf92f3577b34da6a3ce929d0e0e4736', task_id: '01a21e31-a4be-7207-9e82-378ba88c53f0' };
    await withLogFields(fields, async () => {
      child.info('before an await');
      await new Promise((resolve) => setTimeout(resolve, 1));
      child.warn({ attempt: 2 }, 'after an await');
    });
    logger.info('outside');
    expect(lines.map((l) => [l.msg, l.trace_id, l.task_id])).toEqual([
      ['before an await', fields.trace_id, fields.task_id],
      ['after an await', fields.trace_id, fields.task_id],
      ['outside', undefined, undefined],
    ]);
    expect(lines[1]?.attempt).toBe(2);
  });

  it("a line's own fields win, and the context's fields are never changed by a line", () => {
    const { logger, lines } = capture();
    const fields = Object.freeze({ trace_id: 'a'.repeat(32), task_id: 't1' });
    withLogFields(fields, () => {
      logger.info({ task_id: 't2', extra: 1 }, 'own task id');
      logger.info('context only');
    });
    expect(lines.map((l) => [l.task_id, l.extra])).toEqual([
      ['t2', 1],
      ['t1', undefined],
    ]);
    expect(fields).toEqual({ trace_id: 'a'.repeat(32), task_id: 't1' });
  });

  it('redacts credentials and cookies in request headers', () => {
    const { logger, lines } = capture();
    logger.info({ req: { headers: { authorization: 'Bearer eyJhbGciOiJIUzI1NiJ9.e30.x', 'x-api-key': 'k', cookie: 'session=s' } } }, 'request');
    expect(lines[0]?.req).toEqual({ headers: { authorization: '[redacted]', 'x-api-key': '[redacted]', cookie: '[redacted]' } });
  });
});
