// @ts-check
import { createHash } from 'node:crypto';
import { defineHandlers } from 'fogsched/worker';
import { generate, MAX_SIDE, resize } from './lib/bitmap.js';
import { encodePng } from './lib/png.js';

/**
 * Task types of this project. A fog node loads this module in its worker threads only
 * (FOG_NODE_HANDLERS=/app/handlers/image-resize/handlers.js in the image the Dockerfile builds).
 *
 * @typedef {{ width: number; height: number; pattern?: 'gradient' | 'checker' }} Source
 * @typedef {{ width: number; height: number; bytes: number; sha256: string; png?: string }} Resized
 * @typedef {{
 *   'image.resize': { in: { source: Source; width: number; height: number; returnPng?: boolean }; out: Resized };
 *   'image.thumbnails': { in: { source: Source; sizes: number[] }; out: { thumbnails: Resized[] } };
 * }} ImageHandlers
 */

/** Up to this size the PNG itself is returned (base64): task outputs are stored in PostgreSQL, keep them small. */
const MAX_RETURNED_PNG_BYTES = 256 * 1024;

const yieldToEvents = () => new Promise((resolve) => setImmediate(resolve));

/** @param {unknown} n @param {string} what */
function side(n, what) {
  if (!Number.isInteger(n) || /** @type {number} */ (n) < 1 || /** @type {number} */ (n) > MAX_SIDE) {
    // A bad request never gets better: fail now, no retry.
    throw Object.assign(new RangeError(`${what} must be an integer in [1, ${MAX_SIDE}], got ${String(n)}`), { code: 'bad_dimensions', retryable: false });
  }
  return /** @type {number} */ (n);
}

/** @param {import('./lib/bitmap.js').Bitmap} bitmap @param {boolean} returnPng @returns {Resized} */
function describe(bitmap, returnPng) {
  const png = encodePng(bitmap);
  return {
    width: bitmap.width,
    height: bitmap.height,
    bytes: png.length,
    sha256: createHash('sha256').update(png).digest('hex'),
    ...(returnPng && png.length <= MAX_RETURNED_PNG_BYTES ? { png: png.toString('base64') } : {}),
  };
}

export default defineHandlers(
  /** @type {import('fogsched/worker').HandlerMap<ImageHandlers>} */ ({
    'image.resize': async (payload, ctx) => {
      const source = generate({ width: side(payload.source?.width, 'source.width'), height: side(payload.source?.height, 'source.height'), pattern: payload.source.pattern });
      const width = side(payload.width, 'width');
      const height = side(payload.height, 'height');
      ctx.log.info({ from: [source.width, source.height], to: [width, height], attempt: ctx.attempt }, 'resizing');
      const out = await resize(source, width, height, async (done, total) => {
        // A worker thread sees an abort (cancel, timeout) only when its event loop turns: yield
        // between rows, then stop if the signal says so.
        await yieldToEvents();
        ctx.signal.throwIfAborted();
        ctx.progress(done / total, `row ${done} of ${total}`);
      });
      return describe(out, payload.returnPng === true);
    },

    'image.thumbnails': async (payload, ctx) => {
      const source = generate({ width: side(payload.source?.width, 'source.width'), height: side(payload.source?.height, 'source.height'), pattern: payload.source.pattern });
      const sizes = Array.isArray(payload.sizes) ? payload.sizes.map((s, i) => side(s, `sizes[${i}]`)) : [];
      const thumbnails = [];
      for (const [i, size] of sizes.entries()) {
        await yieldToEvents();
        ctx.signal.throwIfAborted();
        const scale = size / Math.max(source.width, source.height);
        thumbnails.push(describe(await resize(source, Math.max(1, Math.round(source.width * scale)), Math.max(1, Math.round(source.height * scale))), false));
        ctx.progress((i + 1) / sizes.length, `resized ${i + 1} of ${sizes.length}`);
      }
      return { thumbnails };
    },
  }),
);
