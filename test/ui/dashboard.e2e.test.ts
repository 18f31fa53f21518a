import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import axe from 'axe-core';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../helpers/database.js';
import { dropE2eEnvs, e2eEnv, postJson, spawnFogsched, waitReady, type Spawned } from '../helpers/processes.js';

/**
 * The dashboard (/ui) in Debian's Chromium, driven by playwright-core, against the whole system
 * started as processes on the real services (own database, queue prefix and Redis prefix).
 * Each page is checked with axe-core (no serious or critical violation) and by keyboard (Tab
 * reaches every control), and saved as a screenshot under docs/img for the README.
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const noChromium = !existsSync(CHROMIUM);
if (noChromium) console.warn(`skipping the dashboard browser tests: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH); .ci/run installs it`);

const IMG = fileURLToPath(new URL('../../docs/img/', import.meta.url));
const OPERATOR_KEY = 'ui-operator-key-0123456789abcdef';
const AUDITOR_KEY = 'ui-auditor-key-0123456789abcdef';
const LONG = 60_000;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- test code reads arbitrary JSON
type Json = any;

describe.skipIf(noChromium)('the dashboard in a real browser', () => {
  let t: Awaited<ReturnType<typeof e2eEnv>>;
  let browser: Browser;
  let page: Page;
  let edgeB: Spawned;
  const auth = { authorization: `Bearer ${OPERATOR_KEY}` };
  const submit = async (body: unknown): Promise<Json> => {
    const res = await postJson(`${t.base}/v1/tasks`, body, auth);
    expect(res.status).toBe(202);
    return res.body;
  };
  const getTask = async (id: string): Promise<Json> => (await fetch(`${t.base}/v1/tasks/${id}`, { headers: auth })).json();

  beforeAll(async () => {
    t = await e2eEnv('ui');
    // Short coordinator and heartbeat periods: a stopped fog node is reaped within seconds.
    const env = {
      ...t.env,
      API_KEYS: `${OPERATOR_KEY},default:auditor:${AUDITOR_KEY}`,
      COORDINATOR_INTERVAL_MS: '500',
      COORDINATOR_LEASE_MS: '1500',
      FOG_HEARTBEAT_INTERVAL_MS: '300',
      FOG_HEARTBEAT_TTL_MS: '1500',
    };
    const core = spawnFogsched(['start', '--roles', 'api,relay,ingest,scheduler,coordinator'], env);
    await waitReady(t.port, core, LONG);
    spawnFogsched(['start', '--roles', 'fog-node'], { ...env, FOG_NODE_ID: 'edge-a', FOG_NODE_SLOTS: '8' });
    edgeB = spawnFogsched(['start', '--roles', 'fog-node'], { ...env, FOG_NODE_ID: 'edge-b', FOG_NODE_SLOTS: '4' });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    mkdirSync(IMG, { recursive: true });
    await signIn(OPERATOR_KEY);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await dropE2eEnvs();
  });

  async function signIn(key: string): Promise<void> {
    await page.goto(`${t.base}/ui/`);
    await page.getByLabel('API key or token').fill(key);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('navigation', { name: 'Pages' }).waitFor();
  }

  async function go(hash: string, heading: string | RegExp): Promise<void> {
    await page.evaluate((h) => (location.hash = h), hash);
    await page.getByRole('heading', { level: 1, name: heading }).waitFor();
  }

  /** axe-core on the page as it is: no serious or critical violation (labels, names, contrast, ARIA, ...). */
  async function checkAccessibility(name: string): Promise<void> {
    // Evaluated over the DevTools protocol, which the page's Content-Security-Policy (script-src 'self') does not govern.
    if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(axe.source);
    const result: Json = await page.evaluate(() =>
      (window as unknown as { axe: typeof axe }).axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } }),
    );
    const bad = result.violations.filter((v: Json) => v.impact === 'serious' || v.impact === 'critical').map((v: Json) => `${v.id}: ${v.help} (${v.nodes.map((n: Json) => n.target.join(' ')).join(', ')})`);
    expect(bad, `axe on ${name}`).toEqual([]);
    // The rules that say every control has a name did run on this page.
    const ran = new Set([...result.passes, ...result.inapplicable, ...result.violations].map((r: Json) => r.id as string));
    for (const rule of ['label', 'button-name', 'select-name', 'link-name']) expect(ran.has(rule), `${rule} ran`).toBe(true);
  }

  /** Tab from the top reaches every visible, enabled control of the page, in order, and nothing traps it. */
  async function checkKeyboard(name: string): Promise<void> {
    const total = await page.evaluate(() => {
      const controls = [...document.querySelectorAll<HTMLElement>('a[href], button, input, select, textarea, [tabindex]:not([tabindex="-1"])')].filter(
        (el) => !(el as HTMLButtonElement).disabled && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden',
      );
      controls.forEach((el, i) => el.setAttribute('data-kb', String(i)));
      (document.activeElement as HTMLElement | null)?.blur();
      return controls.length;
    });
    expect(total, `controls on ${name}`).toBeGreaterThan(0);
    const reached = new Set<string>();
    // A date-time input takes a Tab per field (day, month, year, hour, ...): allow several per control.
    for (let i = 0; i < total * 8 + 20 && reached.size < total; i++) {
      await page.keyboard.press('Tab');
      const mark = await page.evaluate(() => document.activeElement?.getAttribute('data-kb') ?? null);
      if (mark !== null) reached.add(mark);
    }
    const missed = await page.evaluate(
      (seen) =>
        [...document.querySelectorAll<HTMLElement>('[data-kb]')]
          .filter((el) => el.isConnected && !(el as HTMLButtonElement).disabled && !seen.includes(el.getAttribute('data-kb') ?? ''))
          .map((el) => el.outerHTML.slice(0, 120)),
      [...reached],
    );
    expect(missed.join('\n'), `controls Tab does not reach on ${name}`).toBe('');
  }

  async function checkPage(name: string): Promise<void> {
    await checkAccessibility(name);
    await checkKeyboard(name);
    await page.evaluate(() => {
      (document.activeElement as HTMLElement | null)?.blur();
      window.scrollTo(0, 0);
    });
    await page.screenshot({ path: `${IMG}dashboard-${name}.png` });
  }

  const row = (id: string): Locator => page.locator(`tr[data-task-id="${id}"]`);

  it('asks for a credential, refuses a wrong one and keeps a good one for the session', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API key or token').fill('not-a-valid-key-at-all');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.getByRole('alert').textContent()).toContain('not valid');
    await checkAccessibility('sign-in');
    await checkKeyboard('sign-in');
    await signIn(OPERATOR_KEY);
    expect(await page.evaluate(() => sessionStorage.getItem('fogsched.credential'))).toBe(OPERATOR_KEY);
    // A reload keeps the session: no second sign-in.
    await page.reload();
    await page.getByRole('navigation', { name: 'Pages' }).waitFor();
  });

  it('shows tasks submitted through the API as they appear and change state, without a reload', async () => {
    await go('#/tasks', 'Tasks');
    const quick = await submit({ type: 'noop', payload: { hello: 'fog' } });
    const slow = await submit({ type: 'sleep', payload: { ms: 8000 } });
    await row(quick.id).waitFor({ timeout: LONG });
    await row(slow.id).waitFor({ timeout: LONG });
    await expect.poll(() => row(slow.id).locator('.badge').textContent(), { timeout: LONG }).toBe('running');
    await expect.poll(() => row(slow.id).locator('.badge').textContent(), { timeout: LONG }).toBe('succeeded');
    await expect.poll(() => row(quick.id).locator('.badge').textContent(), { timeout: LONG }).toBe('succeeded');
    // Changes come over the SSE feed (the page polls as well, so it works without one).
    await expect.poll(() => page.getByRole('status', { name: /live feed/ }).textContent(), { timeout: LONG }).toContain('live');
    expect(await row(quick.id).getByRole('link').textContent()).toMatch(new RegExp(`^${quick.id.slice(0, 8)}`));
    // Filters go to the API: only sleep tasks.
    await page.getByLabel('Type').fill('sleep');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(() => row(quick.id).count(), { timeout: LONG }).toBe(0);
    await row(slow.id).waitFor();
    await page.getByLabel('Type').fill('');
    // The submitted-time window: from a minute ahead, nothing; from a minute ago, both.
    const local = (ms: number) => new Date(ms - new Date().getTimezoneOffset() * 60_000).toISOString().slice(0, 19);
    await page.getByLabel('Submitted from').fill(local(Date.now() + 60_000));
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.getByText('No task matches.').waitFor({ timeout: LONG });
    await page.getByLabel('Submitted from').fill(local(new Date(quick.submittedAt).getTime() - 60_000));
    await page.getByRole('button', { name: 'Apply' }).click();
    await row(quick.id).waitFor({ timeout: LONG });
    await row(slow.id).waitFor({ timeout: LONG });
    await page.getByLabel('Submitted from').fill('');
    await page.getByRole('button', { name: 'Apply' }).click();
    await row(quick.id).waitFor({ timeout: LONG });
    await checkPage('tasks');
  });

  it('opens a task timeline with every event, its node and the time between steps', async () => {
    const task = await submit({ type: 'echo', payload: { value: 42 } });
    await eventually(async () => (await getTask(task.id)).state === 'succeeded', { timeoutMs: LONG });
    await go('#/tasks', 'Tasks');
    await row(task.id).getByRole('link').click();
    await page.getByRole('heading', { level: 2, name: 'Timeline' }).waitFor();
    expect(page.url()).toContain(`#/tasks/${task.id}`);
    const events = page.locator('table.timeline tbody tr');
    await expect.poll(() => events.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-event'))), { timeout: LONG }).toEqual(['TaskSubmitted', 'TaskStarted', 'TaskSucceeded']);
    expect(await page.locator('tr[data-event="TaskStarted"]').textContent()).toMatch(/edge-[ab]/);
    expect(await page.locator('tr[data-event="TaskSucceeded"] td').nth(2).textContent()).toMatch(/^\+/);
    expect(await page.getByLabel('Output (JSON)').textContent()).toBe('42');
    await checkPage('task');
  });

  it("shows a task's dependencies and dependants with their states and links (issue 20)", async () => {
    const res = await postJson(
      `${t.base}/v1/workflows`,
      {
        name: 'ui-graph',
        steps: [
          { step: 'fetch', type: 'sleep', payload: { ms: 120_000 } },
          { step: 'merge', type: 'noop', dependsOn: ['fetch'] },
          { step: 'report', type: 'noop', dependsOn: ['merge'] },
        ],
      },
      auth,
    );
    expect(res.status).toBe(202);
    const { fetch, merge, report } = (res.body).steps;
    await go(`#/tasks/${merge.id}`, /Task/);
    await page.getByRole('heading', { level: 2, name: 'Dependencies' }).waitFor({ timeout: LONG });
    expect(await page.locator('.facts .badge').textContent()).toBe('waiting');
    const up = page.getByRole('list', { name: 'Tasks this task depends on' });
    await expect.poll(() => up.getByRole('listitem').textContent(), { timeout: LONG }).toMatch(/^running\s*ui-graph\/fetch/);
    const down = page.getByRole('list', { name: 'Tasks that depend on this task' });
    expect(await down.getByRole('listitem').textContent()).toMatch(/^waiting\s*ui-graph\/report/);
    await checkAccessibility('task-graph');
    await checkKeyboard('task-graph');
    await up.getByRole('link', { name: 'ui-graph/fetch' }).click();
    await expect.poll(() => page.url()).toContain(`#/tasks/${fetch.id}`);
    // Cancelling the root cancels its waiting descendants.
    await postJson(`${t.base}/v1/tasks/${fetch.id}/cancel`, {}, auth);
    await eventually(async () => (await getTask(report.id)).state === 'cancelled', { timeoutMs: LONG });
  });

  it('cancels a running task from its page after a confirmation', async () => {
    const task = await submit({ type: 'sleep', payload: { ms: 120_000 } });
    await go(`#/tasks/${task.id}`, /Task/);
    await expect.poll(() => page.locator('.facts .badge').textContent(), { timeout: LONG }).toBe('running');
    await page.getByRole('button', { name: 'Cancel task' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel this task?' });
    await dialog.getByRole('button', { name: 'Cancel 1 task' }).click();
    await expect.poll(() => page.locator('.facts .badge').textContent(), { timeout: LONG }).toBe('cancelled');
    expect((await getTask(task.id)).state).toBe('cancelled');
    await page.locator('tr[data-event="TaskCancelled"]').waitFor({ timeout: LONG });
  });

  it('cancels selected tasks in bulk, saying how many first', async () => {
    const later = new Date(Date.now() + 3_600_000).toISOString();
    const a = await submit({ type: 'noop', notBefore: later });
    const b = await submit({ type: 'noop', notBefore: later });
    await go('#/tasks', 'Tasks');
    await row(a.id).waitFor({ timeout: LONG });
    await row(b.id).waitFor({ timeout: LONG });
    await row(a.id).getByRole('checkbox').check();
    await row(b.id).getByRole('checkbox').check();
    await page.getByRole('button', { name: 'Cancel selected (2)' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel 2 tasks?' });
    await dialog.getByRole('button', { name: 'Cancel 2 tasks' }).click();
    await expect.poll(() => page.getByRole('group', { name: 'Bulk actions' }).textContent()).toContain('2 cancelled');
    expect((await getTask(a.id)).state).toBe('cancelled');
    expect((await getTask(b.id)).state).toBe('cancelled');
  });

  it('requeues failed tasks from the DLQ by filter, after a dry-run count', async () => {
    const task = await submit({ type: 'fail', payload: { message: 'boom', retryable: false } });
    await eventually(async () => (await getTask(task.id)).state === 'failed', { timeoutMs: LONG });
    await go('#/dlq', 'Dead letters');
    await row(task.id).waitFor({ timeout: LONG });
    expect(await row(task.id).textContent()).toContain('boom');
    await page.getByLabel('Type').fill('fail');
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.getByRole('button', { name: 'Count matching (dry run)' }).click();
    await expect.poll(() => page.getByRole('group', { name: 'Requeue by filter' }).textContent()).toContain('1 failed task matches');
    await checkPage('dlq');
    await page.getByRole('button', { name: 'Requeue 1 task' }).click();
    await page.getByRole('dialog', { name: 'Requeue 1 failed task?' }).getByRole('button', { name: 'Requeue 1 task' }).click();
    await expect.poll(() => page.getByRole('group', { name: 'Requeue by filter' }).textContent()).toContain('1 of 1 requeued');
    const history: Json = await (await fetch(`${t.base}/v1/tasks/${task.id}/history`, { headers: auth })).json();
    expect(history.events.map((e: Json) => e.type)).toContain('TaskRequeued');
  });

  it('shows brokers, fog nodes with CPU and memory sparklines and schedules; a stopped fog node leaves the page', async () => {
    const schedule = await postJson(`${t.base}/v1/schedules`, { name: 'nightly-report', cron: '0 3 * * *', timezone: 'UTC', template: { type: 'noop' } }, auth);
    expect(schedule.status).toBe(201);
    await go('#/cluster', 'Cluster');
    await page.locator('tr[data-node-id="edge-a"]').waitFor({ timeout: LONG });
    await page.locator('tr[data-node-id="edge-b"]').waitFor({ timeout: LONG });
    await expect.poll(() => page.getByRole('table').first().textContent(), { timeout: LONG }).toMatch(/healthy/);
    // Sparklines are drawn from successive polls: wait for a few samples.
    await expect
      .poll(() => page.locator('tr[data-node-id="edge-a"] svg.spark polyline').first().getAttribute('points'), { timeout: LONG })
      .toMatch(/^\S+ \S+ \S+/);
    await page.getByRole('button', { name: 'Pause schedule nightly-report' }).click();
    await page.getByRole('button', { name: 'Resume schedule nightly-report' }).waitFor({ timeout: LONG });
    await checkPage('cluster');

    await edgeB.kill('SIGTERM');
    await expect.poll(() => page.locator('tr[data-node-id="edge-b"]').count(), { timeout: LONG }).toBe(0);
    expect(await page.locator('tr[data-node-id="edge-a"]').count()).toBe(1);
  });

  it('draws throughput, latency per tier, queue depth and outbox lag on the overview, live', async () => {
    await go('#/', 'Overview');
    await page.locator('figure.chart svg').waitFor({ timeout: LONG });
    expect(await page.locator('figure.chart figcaption').textContent()).toMatch(/submitted [1-9]/);
    await expect.poll(() => page.getByRole('region', { name: 'Queue wait and run time per tier' }).textContent(), { timeout: LONG }).toContain('light');
    const before = await page.locator('ul.events li').count();
    await submit({ type: 'noop' });
    await expect.poll(() => page.locator('ul.events li').count(), { timeout: LONG }).toBeGreaterThan(before);
    await checkPage('overview');
  });

  it('gives an auditor the read-only pages: no bulk actions, no cancel or requeue', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await signIn(AUDITOR_KEY);
    expect(await page.getByRole('banner').textContent()).toContain('auditor');
    await go('#/tasks', 'Tasks');
    await page.locator('tbody tr').first().waitFor({ timeout: LONG });
    expect(await page.getByRole('group', { name: 'Bulk actions' }).count()).toBe(0);
    expect(await page.getByRole('checkbox').count()).toBe(0);
    await page.locator('tbody tr a').first().click();
    await page.getByRole('heading', { level: 2, name: 'Timeline' }).waitFor();
    expect(await page.getByRole('button', { name: /Cancel task|Requeue task/ }).count()).toBe(0);
    await go('#/dlq', 'Dead letters');
    expect(await page.getByRole('button', { name: /Count matching|Requeue/ }).count()).toBe(0);
  });

  it('lets an auditor run the documented audit questions, read-only', async () => {
    expect(await page.getByRole('banner').textContent()).toContain('auditor');
    await go('#/audit', 'Audit');
    const question = page.getByLabel('Question', { exact: true });
    await question.waitFor({ timeout: LONG });
    const options = await question.locator('option').evaluateAll((os) => os.map((o) => (o as HTMLOptionElement).value));
    expect(options.length).toBeGreaterThan(5);
    // The first question that needs no parameter.
    for (const name of options) {
      await question.selectOption(name);
      if ((await page.locator('form.filters input[required]').count()) === 0) break;
    }
    await page.getByRole('button', { name: 'Run' }).click();
    await page.getByRole('region', { name: 'Query result' }).waitFor({ timeout: LONG });
    await checkPage('audit');
  });
});
