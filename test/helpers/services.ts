import pg from 'pg';
import net from 'node:net';

/** The service URLs tests use: the environment, or the machine's local services. */
export function serviceUrls() {
  return {
    postgres: process.env.TEST_POSTGRES_URL ?? 'postgres://root@127.0.0.1:5432/postgres',
    amqp: process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
    redis: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  };
}

export function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

export function canConnect(url: string, defaultPort: number, timeoutMs = 1500): Promise<boolean> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port || defaultPort) });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serviceUrls().postgres });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
