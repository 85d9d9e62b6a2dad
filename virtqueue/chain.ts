/**
 * Descriptor chains as devices see them: the resolved `Chain`, and the ChainReader / ChainWriter
 * cursors (with the copy helpers under them) devices use to move bytes. The walkers that resolve
 * descriptors into a Chain are in walk.ts.
 *
 * Segment representation (the design choice): segments are RESOLVED at pop time and stored
 * struct-of-arrays in a caller-owned, reused `Chain` — for segment i: `segAddr[i]` (gpa, used for
 * dirty logging and diagnostics), `segLen[i]`, `segBytes[i]` (the region's whole view) and
 * `segOffset[i]` (offset in that view). A descriptor whose buffer crosses a memory-region boundary
 * becomes several segments (one per region), so readers and writers copy with
 * `Uint8Array.prototype.set` and never translate again. Readable segments come first:
 * `[0, readSegCount)` are device-readable, `[readSegCount, segCount)` device-writable. Nothing is
 * allocated per descriptor once the arrays have grown to the largest chain seen.
 *
 * Consequence: a Chain holds views into the memory table that was current when it was popped. The
 * session replaces the table only between event-loop turns and rebuilds queues afterwards, so a chain
 * must be completed (pushUsed) in the turn that popped it; after REM_MEM_REG / SET_MEM_TABLE the
 * native layer detaches unmapped buffers, so a stale chain fails loudly (zero-length views) instead
 * of touching unmapped memory.
 */
import type { GuestMemory, Span } from './memory.ts';

/** A segment as a plain object: only for tests and diagnostics (`Chain.segment()` allocates). */
export interface Segment {
  addr: number;
  byteLen: number;
  write: boolean;
}

/**
 * One descriptor chain, as produced by `pop()` (SplitQueue, PackedQueue). Reuse one instance:
 * `pop()` resets it. Fields are public for speed; treat them as read-only.
 */
export class Chain {
  /** Id to return in the used element (split: head descriptor index; packed: buffer id). */
  head = 0;
  /** Descriptors consumed in the ring itself (an indirect table counts as one). */
  descCount = 0;
  /** True when the chain went through an indirect table. */
  indirect = false;
  /** Total bytes in readable / writable segments. */
  readByteLen = 0;
  writeByteLen = 0;
  segCount = 0;
  /** Segments [0, readSegCount) are device-readable, the rest device-writable. */
  readSegCount = 0;
  readonly segAddr: number[] = [];
  readonly segLen: number[] = [];
  readonly segOffset: number[] = [];
  readonly segBytes: Uint8Array[] = [];
  /** Memory the chain was resolved against (readers/writers default to it; onWrite comes from it). */
  mem: GuestMemory | null = null;

  reset(): void {
    this.head = 0;
    this.descCount = 0;
    this.indirect = false;
    this.readByteLen = 0;
    this.writeByteLen = 0;
    this.segCount = 0;
    this.readSegCount = 0;
  }

  get byteLen(): number {
    return this.readByteLen + this.writeByteLen;
  }

  /** Appends one resolved segment (walkers only). Readable segments must all come first. */
  pushSegment(addr: number, byteLen: number, bytes: Uint8Array, offset: number, write: boolean): void {
    const i = this.segCount;
    if (i === this.segAddr.length) {
      this.segAddr.push(addr);
      this.segLen.push(byteLen);
      this.segBytes.push(bytes);
      this.segOffset.push(offset);
    } else {
      this.segAddr[i] = addr;
      this.segLen[i] = byteLen;
      this.segBytes[i] = bytes;
      this.segOffset[i] = offset;
    }
    this.segCount = i + 1;
    if (write) this.writeByteLen += byteLen;
    else {
      this.readSegCount = i + 1;
      this.readByteLen += byteLen;
    }
  }

  /** Segment i as an object (allocates; tests and debugging). */
  segment(i: number): Segment {
    if (i < 0 || i >= this.segCount) throw new RangeError(`segment ${i} out of range (${this.segCount})`);
    return { addr: this.segAddr[i]!, byteLen: this.segLen[i]!, write: i >= this.readSegCount };
  }

  segments(): Segment[] {
    const out: Segment[] = [];
    for (let i = 0; i < this.segCount; i++) out.push(this.segment(i));
    return out;
  }
}

/**
 * Copies between guest buffers (and host buffers) without allocating for the sizes that dominate
 * packet switching (spec-notes/performance.md, 2026-11-23 "single copy"):
 * - up to WORD_COPY_MAX bytes whose source and destination have the same alignment mod 4 (the usual
 *   case: frames start at the same offset in DPDK / Linux buffers): 32-bit words through Int32Array
 *   views of the whole ArrayBuffers (cached below), head and tail bytes by a byte loop. A byte loop
 *   costs ~2.5 ns per byte here, words a quarter of that;
 * - otherwise up to SMALL_COPY bytes: a byte loop;
 * - above: `set()` on a subarray (one view allocated; memcpy speed wins from ~160 bytes on).
 * Bounds are the callers' (segment lengths); a typed array never reaches outside its buffer anyway.
 */
const SMALL_COPY = 64;
const WORD_COPY_MAX = 160;

// A small cache of word views, keyed by the region views the chains hold (a switch touches 2-4).
let wk0: Uint8Array | null = null;
let wk1: Uint8Array | null = null;
let wk2: Uint8Array | null = null;
let wk3: Uint8Array | null = null;
let wv0: Int32Array = new Int32Array(0);
let wv1: Int32Array = wv0;
let wv2: Int32Array = wv0;
let wv3: Int32Array = wv0;
let wNext = 0;

/** The Int32Array over the whole ArrayBuffer of `b` (word i = bytes [4i, 4i + 4) of the buffer). */
export function wordsOf(b: Uint8Array): Int32Array {
  if (b === wk0) return wv0;
  if (b === wk1) return wv1;
  if (b === wk2) return wv2;
  if (b === wk3) return wv3;
  const buf = b.buffer;
  const w = new Int32Array(buf, 0, buf.byteLength >>> 2);
  switch (wNext) {
    case 0:
      wk0 = b;
      wv0 = w;
      break;
    case 1:
      wk1 = b;
      wv1 = w;
      break;
    case 2:
      wk2 = b;
      wv2 = w;
      break;
    default:
      wk3 = b;
      wv3 = w;
  }
  wNext = (wNext + 1) & 3;
  return w;
}

/** dst[o, o + n) = src[so, so + n); the ranges are in bounds (callers check). */
export function copyBytes(dst: Uint8Array, o: number, src: Uint8Array, so: number, n: number): void {
  if (n <= WORD_COPY_MAX && n >= 16) copyBytesW(dst, wordsOf(dst), o, src, wordsOf(src), so, n);
  else copyBytesW(dst, null, o, src, null, so, n);
}

/**
 * copyBytes with the word views of both buffers supplied by the caller (`wordsOf`, or kept with a
 * buffer it copies into often: the device's fast path), or null to take the byte loop / set() path.
 * Words go eight per loop turn: a plain per-word loop costs twice as much (bounds check and loop
 * test per element; 64 bytes: ≈ 25 ns per word loop, ≈ 14 ns unrolled by 8, measured on Node 20).
 * `dBase` / `sBase`: the views' byteOffsets, for callers that keep them: Node 20's optimized code
 * reads `byteOffset` through a generic property load (≈ 5 ns each; performance.md "Session 7").
 */
export function copyBytesW(
  dst: Uint8Array,
  dw: Int32Array | null,
  o: number,
  src: Uint8Array,
  sw: Int32Array | null,
  so: number,
  n: number,
  dBase = dst.byteOffset,
  sBase = src.byteOffset,
): void {
  if (n <= WORD_COPY_MAX) {
    const da = dBase + o;
    const sa = sBase + so;
    if (n >= 16 && dw !== null && sw !== null && ((da ^ sa) & 3) === 0) {
      let k = 0;
      while (((da + k) & 3) !== 0) {
        dst[o + k] = src[so + k]!;
        k++;
      }
      let di = (da + k) >>> 2;
      let si = (sa + k) >>> 2;
      const words = (n - k) >>> 2;
      const end8 = di + (words & ~7);
      while (di < end8) {
        dw[di] = sw[si]!;
        dw[di + 1] = sw[si + 1]!;
        dw[di + 2] = sw[si + 2]!;
        dw[di + 3] = sw[si + 3]!;
        dw[di + 4] = sw[si + 4]!;
        dw[di + 5] = sw[si + 5]!;
        dw[di + 6] = sw[si + 6]!;
        dw[di + 7] = sw[si + 7]!;
        di += 8;
        si += 8;
      }
      const end = di + (words & 7);
      while (di < end) dw[di++] = sw[si++]!;
      k += words << 2;
      while (k < n) {
        dst[o + k] = src[so + k]!;
        k++;
      }
      return;
    }
    if (n <= SMALL_COPY) {
      for (let k = 0; k < n; k++) dst[o + k] = src[so + k]!;
      return;
    }
  }
  dst.set(src.subarray(so, so + n), o);
}

/**
 * What ChainReader and ChainWriter share: a cursor over one side of a chain's segments (the readable
 * ones [0, readSegCount), or the writable ones after them): byte `pos` of `total`, at `segPos` in
 * segment `seg`. The byte-moving loops stay in each class: they copy in opposite directions and only
 * the writer reports to the dirty log.
 */
export abstract class ChainCursor {
  // Not private: ChainWriter.copyFrom moves both cursors (module-internal; treat as read-only).
  /** @internal */ chain: Chain | null = null;
  /** @internal */ seg = 0;
  /** @internal */ segPos = 0;
  /** @internal */ pos = 0;
  /** @internal */ total = 0;

  /** Bytes left from the cursor. */
  get remaining(): number {
    return this.total - this.pos;
  }
  /** Bytes moved past so far (read, written or skipped). */
  get position(): number {
    return this.pos;
  }

  /** Points at byte 0 of segment `seg` of `chain`, `total` bytes ahead. */
  protected start(chain: Chain, seg: number, total: number): void {
    this.chain = chain;
    this.seg = seg;
    this.segPos = 0;
    this.pos = 0;
    this.total = total;
  }

  /**
   * The contiguous piece at the cursor, without consuming it: `out` gets its view, offset and length
   * (0 when nothing is left). For parsing or writing in place (e.g. a header); then skip / commit.
   */
  current(out: Span): number {
    const c = this.chain;
    if (c === null || this.pos >= this.total) {
      out.byteLen = 0;
      return 0;
    }
    out.bytes = c.segBytes[this.seg]!;
    out.offset = c.segOffset[this.seg]! + this.segPos;
    out.byteLen = c.segLen[this.seg]! - this.segPos;
    return out.byteLen;
  }

  /** Moves forward up to n bytes without touching them; returns the count skipped (n <= 0: none). */
  skip(n: number): number {
    const c = this.chain;
    if (c === null) return 0;
    const k = Math.min(n, this.total - this.pos);
    let want = k;
    while (want > 0) {
      const room = c.segLen[this.seg]! - this.segPos;
      if (want < room) {
        this.segPos += want;
        break;
      }
      want -= room;
      this.seg++;
      this.segPos = 0;
    }
    if (k > 0) this.pos += k;
    return k;
  }

  /**
   * nextSpan's first half: the next contiguous piece (at most `maxLen` bytes) into `out`, not consumed
   * yet; its length, 0 when nothing is left.
   */
  protected piece(maxLen: number, out: Span): number {
    const c = this.chain;
    if (c === null || this.pos >= this.total || maxLen <= 0) return 0;
    const room = c.segLen[this.seg]! - this.segPos;
    const n = room < maxLen ? room : maxLen;
    out.bytes = c.segBytes[this.seg]!;
    out.offset = c.segOffset[this.seg]! + this.segPos;
    out.byteLen = n;
    return n;
  }

  /** Advances within the current segment (k <= its room). */
  protected advance(k: number): void {
    this.segPos += k;
    this.pos += k;
    if (this.segPos === this.chain!.segLen[this.seg]) {
      this.seg++;
      this.segPos = 0;
    }
  }
}

/**
 * Cursor over a chain's device-readable bytes. `reset(chain)` then `read` / `skip` / `nextSpan`.
 */
export class ChainReader extends ChainCursor {
  /** Starts reading `chain` from its first readable byte. `mem` is accepted for symmetry and unused. */
  reset(chain: Chain, _mem?: GuestMemory): this {
    this.start(chain, 0, chain.readByteLen);
    return this;
  }

  /** Copies up to `byteLen` bytes into `dst` at `dstOffset`; returns the count copied. */
  read(dst: Uint8Array, dstOffset = 0, byteLen: number = dst.length - dstOffset): number {
    const c = this.chain;
    if (c === null) return 0;
    let want = Math.min(byteLen, dst.length - dstOffset, this.total - this.pos);
    let out = dstOffset;
    let seg = this.seg;
    let segPos = this.segPos;
    while (want > 0) {
      const room = c.segLen[seg]! - segPos;
      const n = room < want ? room : want;
      const src = c.segBytes[seg]!;
      const o = c.segOffset[seg]! + segPos;
      copyBytes(dst, out, src, o, n);
      out += n;
      want -= n;
      segPos += n;
      if (segPos === c.segLen[seg]) {
        seg++;
        segPos = 0;
      }
    }
    const copied = out - dstOffset;
    this.seg = seg;
    this.segPos = segPos;
    this.pos += copied;
    return copied;
  }

  /** Like read(), but the cursor stays where it was (e.g. to hash a frame's first bytes). */
  peek(dst: Uint8Array, dstOffset = 0, byteLen: number = dst.length - dstOffset): number {
    const seg = this.seg;
    const segPos = this.segPos;
    const pos = this.pos;
    const n = this.read(dst, dstOffset, byteLen);
    this.seg = seg;
    this.segPos = segPos;
    this.pos = pos;
    return n;
  }

  /**
   * Zero-copy: the next contiguous readable piece (at most `maxLen` bytes) into `out`, consuming it.
   * False when nothing is left.
   */
  nextSpan(maxLen: number, out: Span): boolean {
    const n = this.piece(maxLen, out);
    if (n === 0) return false;
    this.advance(n);
    return true;
  }
}

/**
 * Cursor over a chain's device-writable bytes. Every byte range it writes (or hands out with
 * `nextSpan`) is reported to the memory's `onWrite` hook (dirty logging).
 *
 * `written` is the high-water mark of written bytes from the start of the writable area: it is
 * the value to pass to `pushUsed` (virtio v1.2 2.7.8.2: len counts bytes written from the first
 * device-writable buffer). Bytes jumped over with `skip` and never written stay out of it unless a
 * later write lies beyond them (the caller must then fill the gap, e.g. a header written last).
 */
export class ChainWriter extends ChainCursor {
  private mem: GuestMemory | null = null;
  private high = 0;

  /** Starts at the first writable byte of `chain`. `mem` (default: the chain's) supplies `onWrite`. */
  reset(chain: Chain, mem?: GuestMemory): this {
    this.start(chain, chain.readSegCount, chain.writeByteLen);
    this.mem = mem ?? chain.mem;
    this.high = 0;
    return this;
  }

  /** Bytes written (high-water mark): the used length to report. */
  get written(): number {
    return this.high;
  }

  /** Copies up to `byteLen` bytes of `src` from `srcOffset`; returns the count written. */
  write(src: Uint8Array, srcOffset = 0, byteLen: number = src.length - srcOffset): number {
    const c = this.chain;
    if (c === null) return 0;
    let want = Math.min(byteLen, src.length - srcOffset, this.total - this.pos);
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    let from = srcOffset;
    let seg = this.seg;
    let segPos = this.segPos;
    while (want > 0) {
      const room = c.segLen[seg]! - segPos;
      const n = room < want ? room : want;
      const dst = c.segBytes[seg]!;
      const o = c.segOffset[seg]! + segPos;
      copyBytes(dst, o, src, from, n);
      if (hook !== undefined) hook.call(mem, c.segAddr[seg]! + segPos, n);
      from += n;
      want -= n;
      segPos += n;
      if (segPos === c.segLen[seg]) {
        seg++;
        segPos = 0;
      }
    }
    const copied = from - srcOffset;
    this.seg = seg;
    this.segPos = segPos;
    this.pos += copied;
    if (this.pos > this.high) this.high = this.pos;
    return copied;
  }

  /**
   * Copies up to `byteLen` bytes from `src`'s readable bytes (another chain, possibly another guest's
   * memory) straight into this chain: guest memory to guest memory, one copy, no intermediate buffer.
   * Both cursors advance; each destination piece is reported to onWrite after its bytes are written
   * (the dirty-log rule, decisions.md D19). Bounded by both chains' remaining bytes; returns the count.
   */
  copyFrom(src: ChainReader, byteLen: number): number {
    const c = this.chain;
    const s = src.chain;
    if (c === null || s === null) return 0;
    let want = byteLen;
    const dLeft = this.total - this.pos;
    const sLeft = src.total - src.pos;
    if (want > dLeft) want = dLeft;
    if (want > sLeft) want = sLeft;
    if (!(want > 0)) return 0;
    const done = want;
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    let dSeg = this.seg;
    let dPos = this.segPos;
    let sSeg = src.seg;
    let sPos = src.segPos;
    while (want > 0) {
      const dRoom = c.segLen[dSeg]! - dPos;
      const sRoom = s.segLen[sSeg]! - sPos;
      let n = dRoom < sRoom ? dRoom : sRoom;
      if (want < n) n = want;
      const dst = c.segBytes[dSeg]!;
      const o = c.segOffset[dSeg]! + dPos;
      const from = s.segBytes[sSeg]!;
      const so = s.segOffset[sSeg]! + sPos;
      copyBytes(dst, o, from, so, n);
      if (hook !== undefined) hook.call(mem, c.segAddr[dSeg]! + dPos, n);
      want -= n;
      dPos += n;
      sPos += n;
      if (dPos === c.segLen[dSeg]) {
        dSeg++;
        dPos = 0;
      }
      if (sPos === s.segLen[sSeg]) {
        sSeg++;
        sPos = 0;
      }
    }
    this.seg = dSeg;
    this.segPos = dPos;
    this.pos += done;
    if (this.pos > this.high) this.high = this.pos;
    src.seg = sSeg;
    src.segPos = sPos;
    src.pos += done;
    return done;
  }

  /** Fills up to n bytes with `value` (default 0); returns the count written. */
  fill(n: number, value = 0): number {
    const c = this.chain;
    if (c === null) return 0;
    let want = Math.min(n, this.total - this.pos);
    const done = want;
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    while (want > 0) {
      const room = c.segLen[this.seg]! - this.segPos;
      const k = room < want ? room : want;
      const o = c.segOffset[this.seg]! + this.segPos;
      c.segBytes[this.seg]!.fill(value, o, o + k);
      if (hook !== undefined) hook.call(mem, c.segAddr[this.seg]! + this.segPos, k);
      this.advance(k);
      want -= k;
    }
    if (this.pos > this.high) this.high = this.pos;
    return done;
  }

  /** Repositions the cursor at writable byte `position` (0 .. writeByteLen). */
  seek(position: number): void {
    const c = this.chain;
    if (c === null) return;
    if (!(position >= 0 && position <= this.total)) throw new RangeError(`seek ${position} outside 0..${this.total}`);
    this.seg = c.readSegCount;
    this.segPos = 0;
    this.pos = 0;
    this.skip(position);
  }

  /**
   * Zero-copy: hands out the next contiguous writable piece (at most `maxLen` bytes) and counts it
   * as written (it is reported to onWrite now, so fill it before the chain is pushed).
   */
  nextSpan(maxLen: number, out: Span): boolean {
    const n = this.piece(maxLen, out);
    if (n === 0) return false;
    const c = this.chain!;
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    if (hook !== undefined) hook.call(mem, c.segAddr[this.seg]! + this.segPos, n);
    this.advance(n);
    if (this.pos > this.high) this.high = this.pos;
    return true;
  }

  /**
   * After writing n bytes in place at `current()` (n <= its length; e.g. a header encoded straight
   * into guest memory): reports them to onWrite and advances.
   */
  commit(n: number): void {
    const c = this.chain;
    if (c === null || !(n > 0)) return;
    const room = c.segLen[this.seg]! - this.segPos;
    if (n > room) throw new RangeError(`commit(${n}): only ${room} contiguous bytes at the cursor`);
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    if (hook !== undefined) hook.call(mem, c.segAddr[this.seg]! + this.segPos, n);
    this.advance(n);
    if (this.pos > this.high) this.high = this.pos;
  }
}
