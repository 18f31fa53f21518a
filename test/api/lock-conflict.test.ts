import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { errorHandler } from '../../src/api/errors.js';

// A request that loses a lock conflict against a concurrent write (an ingest batch releasing the
// same workflow while a cancel runs, say) wrote nothing: it is 503 with Retry-After, never a 500.
describe('lock conflicts with concurrent writes', () => {
  it.each([
    ['40P01', 'deadlock_detected'],
    ['40001', 'serialization_failure'],
    ['55P03', 'lock_not_available'],
  ])('PostgreSQL %s (%s) is 503 problem+json with Retry-After', async (code) => {
    const app = Fastify({ logger: false });
    app.setErrorHandler(errorHandler);
    app.post('/conflict', async () => {
      throw Object.assign(new Error('deadlock detected'), { code });
    });
    const res = await app.inject({ method: 'POST', url: '/conflict' });
    expect(res.statusCode).toBe(503);
    expect(res.headers['content-type']).toContain('application/problem+json');
    expect(res.headers['retry-after']).toBe('1');
    expect(res.json()).toMatchObject({ status: 503, code: 'SERVICE_UNAVAILABLE' });
    expect(res.body).not.toContain('at ');
    await app.close();
  });
});
