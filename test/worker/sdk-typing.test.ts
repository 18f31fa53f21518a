import { describe, expect, expectTypeOf, it } from 'vitest';
import { defineHandlers, type DefinedHandlers, type HandlerContext, type TaskDependency } from '../../src/worker/index.js';

// The SDK's types are checked by `npm run typecheck` (this file is in tsconfig.json): each
// `@ts-expect-error` below must be an error, or the typecheck fails. The tests assert the
// runtime side of the same definitions.

type Email = { 'email.send': { in: { to: string; subject?: string }; out: { id: string } } };

const typed = defineHandlers<Email>({
  'email.send': async (payload, ctx) => {
    expectTypeOf(payload).toEqualTypeOf<{ to: string; subject?: string }>();
    expectTypeOf(ctx).toEqualTypeOf<HandlerContext>();
    expectTypeOf(ctx.attempt).toBeNumber();
    expectTypeOf(ctx.deadline).toEqualTypeOf<string | null>();
    expectTypeOf(ctx.dependenciesTruncated).toBeBoolean();
    expectTypeOf(ctx.dependencies['some-id']?.state).toEqualTypeOf<TaskDependency['state'] | undefined>();
    return { id: `${payload.to}/${ctx.attempt}` };
  },
});

defineHandlers<Email>({
  // @ts-expect-error the output must be { id: string }
  'email.send': () => ({ id: 42 }),
});

defineHandlers<Email>({
  // @ts-expect-error the payload has no `from`
  'email.send': (payload) => ({ id: payload.from as string }),
});

// @ts-expect-error a handler for every type of the generic
defineHandlers<Email>({});

// Without the generic a handler may annotate its own payload type.
const untyped = defineHandlers({
  'image.resize': (payload: { width: number }) => ({ width: payload.width * 2 }),
  'report:monthly': async (_payload: unknown, ctx) => {
    ctx.progress(0.5);
    // @ts-expect-error progress takes a number first
    ctx.progress('half');
    throw ctx.permanent(new TypeError('no report'));
  },
});

describe('SDK typing', () => {
  it('keeps the payload and output types on what defineHandlers returns', () => {
    expectTypeOf(typed).toEqualTypeOf<DefinedHandlers<Email>>();
    expect(Object.keys(typed.handlers)).toEqual(['email.send']);
    expect(Object.keys(untyped.handlers)).toEqual(['image.resize', 'report:monthly']);
  });
});
