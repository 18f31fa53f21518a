/**
 * fogsched's task model: pure functions, no I/O.
 *
 * Glossary
 * - task: one unit of work a client submits; its id is also its event stream id.
 * - attempt: one try at running a task, 1-based; a retry or a requeue starts the next.
 * - tier: the class of fog node a task needs, chosen from its resources (light, medium, heavy).
 * - priority: high, normal or low; each (tier, priority) pair has its own queue.
 * - command: what someone asks for (SubmitTask); `decide` turns it into events.
 * - event: what happened (TaskSubmitted); `evolve` folds events into the task's state.
 * - terminal: succeeded, failed or cancelled; nothing but a requeue leaves a terminal state.
 * - return: an attempt goes back to its queue without counting as one (its node stopped while
 *   running it, or the broker dead-lettered it before it ever started); same attempt, new message.
 */
export * from './errors.js';
export * from './task.js';
export * from './policy.js';
export * from './messages.js';
export * from './schedule.js';
export * from './event-versions.js';
