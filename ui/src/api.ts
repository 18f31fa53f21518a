/**
 * The dashboard's only way to the server: the public /v1 API with the credential the user entered
 * once (kept in sessionStorage, so it lives as long as the tab and never in a URL).
 */

import type { components } from '../../src/client/openapi.js';

const STORAGE_KEY = 'fogsched.credential';

export type Role = 'operator' | 'auditor' | 'submitter';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function credential(): string {
  return sessionStorage.getItem(STORAGE_KEY) ?? '';
}

export function setCredential(value: string | null): void {
  if (value === null) sessionStorage.removeItem(STORAGE_KEY);
  else sessionStorage.setItem(STORAGE_KEY, value);
}

/** Headers carrying the credential (none on an open API). */
export function authHeaders(): Record<string, string> {
  const value = credential();
  return value ? { authorization: `Bearer ${value}` } : {};
}

const unauthorizedListeners = new Set<() => void>();
/** Called when the server answers 401: the credential expired or was revoked. */
export function onUnauthorized(listener: () => void): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

/** Calls the API; a problem+json answer becomes an ApiError carrying its detail. */
export async function api<T>(path: string, options: { method?: string; body?: unknown } = {}): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json', ...authHeaders() };
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, { method: options.method ?? 'GET', headers, ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}) });
  } catch {
    throw new ApiError(0, 'NETWORK', 'the server does not answer');
  }
  if (!res.ok) {
    let code = 'HTTP_' + String(res.status);
    let message = res.statusText || `HTTP ${res.status}`;
    try {
      const problem = (await res.json()) as { code?: string; detail?: string; title?: string };
      code = problem.code ?? code;
      message = problem.detail ?? problem.title ?? message;
    } catch {
      // not JSON: keep the status text
    }
    // Only a credential that was sent can have stopped working; none sent is the sign-in page's business.
    if (res.status === 401 && headers.authorization) for (const listener of unauthorizedListeners) listener();
    throw new ApiError(res.status, code, message);
  }
  return (await res.json()) as T;
}

/** A query string from the set fields of `params` (empty ones left out). */
export function query(params: Record<string, string | number | boolean | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * What the credential may do, found by asking: /v1/cluster answers operators only, /v1/dlq
 * auditors and operators. A 401 on the first call means the credential is not valid.
 */
export async function probeRole(): Promise<Role> {
  await api('/v1/tasks?limit=1');
  try {
    await api('/v1/cluster');
    return 'operator';
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  try {
    await api('/v1/dlq?limit=1');
    return 'auditor';
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  return 'submitter';
}

// ---------------------------------------------------------------- shapes the API answers with

// The API's own types, generated from its OpenAPI document for the typed client (a test keeps
// them equal to the document), so the dashboard cannot drift from what the API answers.
type Schemas = components['schemas'];
export type Task = Schemas['Task'];
export type HistoryEntry = Schemas['HistoryEntry'];
export type Cluster = Schemas['Cluster'];
export type TaskGraph = Schemas['TaskGraph'];
export type TaskGraphNode = Schemas['TaskGraphNode'];
export type Schedule = Schemas['Schedule'];
export type TaskError = NonNullable<Schemas['Task']['lastError']>;
export type Stats = Schemas['Stats'];
export type AuditQuery = Schemas['AuditQueryList']['items'][number];
export type AuditResult = Schemas['AuditResult'];

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export const TASK_STATES = ['waiting', 'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'] as const;
export const PRIORITIES = ['high', 'normal', 'low'] as const;
export const FAILURE_REASONS = ['non-retryable', 'max-attempts', 'delivery-limit', 'rejected', 'expired', 'timeout'] as const;
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
