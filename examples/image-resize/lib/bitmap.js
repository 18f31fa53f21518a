// @ts-check
/**
 * RGBA bitmaps in plain JavaScript: a generated source image and an area-averaging (box filter)
 * downscale / bilinear upscale. Pure computation, no native code: CPU-bound work of the kind a
 * fog node runs in a worker thread.
 */

/** @typedef {{ width: number; height: number; data: Uint8ClampedArray }} Bitmap */

export const MAX_SIDE = 16384;

/**
 * A generated test image (a real project would decode its input instead).
 * @param {{ width: number; height: number; pattern?: 'gradient' | 'checker' }} spec
 * @returns {Bitmap}
 */
export function generate({ width, height, pattern = 'gradient' }) {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      if (pattern === 'checker') {
        const on = ((x >> 4) + (y >> 4)) % 2 === 0;
        data[i] = data[i + 1] = data[i + 2] = on ? 230 : 30;
      } else {
        data[i] = (x * 255) / Math.max(1, width - 1);
        data[i + 1] = (y * 255) / Math.max(1, height - 1);
        data[i + 2] = ((x + y) * 127) / Math.max(1, width + height - 2);
      }
      data[i + 3] = 255;
    }
  }
  return { width, height, data };
}

/**
 * Resizes `src` to width × height: each target pixel averages the source area it covers
 * (downscale) or interpolates its neighbours (upscale). `onRow(done, total)` is called every
 * few rows and awaited, so a handler can yield (letting an abort reach its thread), report
 * progress and check its abort signal.
 * @param {Bitmap} src
 * @param {number} width
 * @param {number} height
 * @param {(done: number, total: number) => void | Promise<void>} [onRow]
 * @returns {Promise<Bitmap>}
 */
export async function resize(src, width, height, onRow) {
  const out = new Uint8ClampedArray(width * height * 4);
  const sx = src.width / width;
  const sy = src.height / height;
  const every = Math.max(1, Math.floor(height / 20));
  for (let y = 0; y < height; y++) {
    const y0 = y * sy;
    const y1 = Math.max(y0 + 1e-9, (y + 1) * sy);
    for (let x = 0; x < width; x++) {
      const x0 = x * sx;
      const x1 = Math.max(x0 + 1e-9, (x + 1) * sx);
      const o = (y * width + x) * 4;
      if (sx <= 1 && sy <= 1) bilinear(src, (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, out, o);
      else box(src, x0, x1, y0, y1, out, o);
    }
    if (onRow && (y % every === every - 1 || y === height - 1)) await onRow(y + 1, height);
  }
  return { width, height, data: out };
}

/** @param {Bitmap} src @param {number} x0 @param {number} x1 @param {number} y0 @param {number} y1 @param {Uint8ClampedArray} out @param {number} o */
function box(src, x0, x1, y0, y1, out, o) {
  let r = 0, g = 0, b = 0, a = 0, weight = 0;
  for (let py = Math.floor(y0); py < Math.min(src.height, Math.ceil(y1)); py++) {
    const wy = Math.min(py + 1, y1) - Math.max(py, y0);
    for (let px = Math.floor(x0); px < Math.min(src.width, Math.ceil(x1)); px++) {
      const w = wy * (Math.min(px + 1, x1) - Math.max(px, x0));
      const i = (py * src.width + px) * 4;
      r += src.data[i] * w;
      g += src.data[i + 1] * w;
      b += src.data[i + 2] * w;
      a += src.data[i + 3] * w;
      weight += w;
    }
  }
  out[o] = r / weight;
  out[o + 1] = g / weight;
  out[o + 2] = b / weight;
  out[o + 3] = a / weight;
}

/** @param {Bitmap} src @param {number} fx @param {number} fy @param {Uint8ClampedArray} out @param {number} o */
function bilinear(src, fx, fy, out, o) {
  const x = Math.min(Math.max(fx, 0), src.width - 1);
  const y = Math.min(Math.max(fy, 0), src.height - 1);
  const xa = Math.floor(x), ya = Math.floor(y);
  const xb = Math.min(xa + 1, src.width - 1), yb = Math.min(ya + 1, src.height - 1);
  const tx = x - xa, ty = y - ya;
  for (let c = 0; c < 4; c++) {
    const p = (/** @type {number} */ px, /** @type {number} */ py) => src.data[(py * src.width + px) * 4 + c];
    out[o + c] = (p(xa, ya) * (1 - tx) + p(xb, ya) * tx) * (1 - ty) + (p(xa, yb) * (1 - tx) + p(xb, yb) * tx) * ty;
  }
}
