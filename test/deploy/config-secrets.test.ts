import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/infra/config.js';

describe('loadConfig: passwords from secret files (*_FILE)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fogsched-cfg-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('puts DATABASE_PASSWORD_FILE into DATABASE_URL and AMQP_PASSWORD_FILE into every AMQP_URL (trailing newline dropped)', () => {
    writeFileSync(join(dir, 'pg'), 'p@ss:w/rd\n');
    writeFileSync(join(dir, 'mq'), 'rabbit-secret');
    const config = loadConfig({
      DATABASE_URL: 'postgres://fogsched@postgres:5432/fogsched',
      DATABASE_PASSWORD_FILE: join(dir, 'pg'),
      AMQP_URL: 'amqp://fogsched@rabbitmq-1:5672/%2Ffog, amqp://fogsched@rabbitmq-2:5672/%2Ffog',
      AMQP_PASSWORD_FILE: join(dir, 'mq'),
    });
    const db = new URL(config.DATABASE_URL);
    expect(db.username).toBe('fogsched');
    expect(decodeURIComponent(db.password)).toBe('p@ss:w/rd');
    expect(db.host).toBe('postgres:5432');
    expect(config.AMQP_URL.split(',').map((u) => [new URL(u).host, new URL(u).password, new URL(u).pathname])).toEqual([
      ['rabbitmq-1:5672', 'rabbit-secret', '/%2Ffog'],
      ['rabbitmq-2:5672', 'rabbit-secret', '/%2Ffog'],
    ]);
  });

  it('leaves the URLs alone without *_FILE', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://root@127.0.0.1:5432/x' });
    expect(config.DATABASE_URL).toBe('postgres://root@127.0.0.1:5432/x');
    expect(config.AMQP_URL).toBe('amqp://guest:guest@127.0.0.1:5672');
  });

  it('a missing secret file stops with one line naming the variable', () => {
    expect(() => loadConfig({ AMQP_PASSWORD_FILE: join(dir, 'nope') })).toThrow(/AMQP_PASSWORD_FILE=".*nope" cannot be read \(ENOENT\)/);
  });
});
