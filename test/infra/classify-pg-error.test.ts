import { describe, expect, it } from 'vitest';
import { ConcurrencyError } from '../../src/domain/index.js';
import { classifyPgError } from '../../src/infra/postgres.js';

/** A PostgreSQL error as node-postgres throws it: an Error with the SQLSTATE in `code`. */
const pgError = (code: string, extra: Record<string, unknown> = {}) => Object.assign(new Error(`error ${code}`), { code, ...extra });

describe('classifyPgError', () => {
  it.each([
    ['40001', 'serialization failure'],
    ['40P01', 'deadlock'],
    ['55P03', 'lock not available (lock_timeout)'],
    ['57014', 'statement timeout or cancel'],
    ['53100', 'disk full'],
    ['53200', 'out of memory'],
    ['53300', 'too many connections'],
    ['25006', 'read-only transaction (a replica after failover)'],
    ['57P01', 'admin shutdown'],
    ['57P03', 'cannot connect now'],
    ['08006', 'connection failure'],
    ['58030', 'I/O error'],
  ])('%s (%s) is transient', (code) => {
    expect(classifyPgError(pgError(code))).toBe('transient');
  });

  it('a lost connection, a racing writer on the same stream and a ConcurrencyError are transient', () => {
    expect(classifyPgError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }))).toBe('transient');
    expect(classifyPgError(new Error('Connection terminated unexpectedly'))).toBe('transient');
    expect(classifyPgError(pgError('23505', { constraint: 'events_stream_version_key' }))).toBe('transient');
    expect(classifyPgError(new ConcurrencyError('s', 1))).toBe('transient');
  });

  it.each([
    ['22P05', 'untranslatable character (\\u0000 in jsonb)'],
    ['22P02', 'invalid text representation'],
    ['22021', 'invalid byte sequence'],
    ['23505', 'unique violation of another constraint'],
    ['23502', 'not null violation'],
    ['42P01', 'undefined table'],
    ['42804', 'datatype mismatch'],
    ['21000', 'ON CONFLICT touching a row twice'],
    ['54000', 'program limit exceeded'],
  ])('%s (%s) is permanent', (code) => {
    expect(classifyPgError(pgError(code, { constraint: 'inbox_pkey' }))).toBe('permanent');
  });

  it('anything without a SQLSTATE, or one of another class, is unknown', () => {
    expect(classifyPgError(new TypeError('x is undefined'))).toBe('unknown');
    expect(classifyPgError('a string')).toBe('unknown');
    expect(classifyPgError(undefined)).toBe('unknown');
    expect(classifyPgError(pgError('XX000'))).toBe('unknown');
    expect(classifyPgError(pgError('EWHATEVER'))).toBe('unknown');
  });
});
