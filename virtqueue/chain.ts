/**
 * Descriptor chains: the walker that turns a split-ring chain into resolved segments, and the
 * ChainReader / ChainWriter cursors devices use to move bytes.
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
 *
 * Rules enforced by the split walker (virtio v1.2):
 * - 2.7.5: `next` must index the table; a chain has at most as many descriptors as its table
 *   (ttl guard; more means a loop). Same for an indirect table, whose ttl is its entry count.
 * - 2.7.5.2: total length at most 2^32 bytes.
 * - 2.7.5.3.1: INDIRECT only if negotiated, never with NEXT, never inside an indirect table; the
 *   table length is a non-zero multiple of 16 (we also cap it at MAX_INDIRECT_DESCS entries).
 *   2.7.5.3.2: zero or more direct descriptors may precede the single indirect one, and the WRITE
 *   flag of the descriptor pointing to the table is ignored.
 * - 2.7.4.2: device-writable descriptors after all device-readable ones; otherwise the chain is
 *   refused (VQ_WRITE_BEFORE_READ) rather than guessed at.
 * - A zero-length descriptor contributes no segment and its address is not checked.
 *
 * Descriptors are read field by field into locals exactly once (the guest may rewrite them
 * concurrently; it can only hurt its own buffers, and the ttl guarantees termination).
 */
import type { GuestMemory, Span } from './memory.ts';
import { createSpan } from './memory.ts';
import {
  DESC_BYTES,
  MAX_CHAIN_BYTES,
  MAX_INDIRECT_DESCS,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  bswap16,
  bswap32,
} from './defs.ts';
import type { VirtqErrorCode } from './errors.ts';
import { hexAddr } from './errors.ts';

// Module-local copies: under tsx (esbuild CJS output) every imported binding is a getter call,
// which shows up in profiles of the per-descriptor loop. Locals are plain constants.
const F_NEXT = VIRTQ_DESC_F_NEXT;
const F_WRITE = VIRTQ_DESC_F_WRITE;
const F_INDIRECT = VIRTQ_DESC_F_INDIRECT;
const CHAIN_CAP = MAX_CHAIN_BYTES;
const TWO_32 = 2 ** 32;
/** hi halves >= this make a 64-bit address >= 2^53 (see joinAddr). */
const HI_LIMIT = 2 ** 21;
const swap16 = bswap16;
const swap32 = bswap32;

/** A segment as a plain object: only for tests and diagnostics (`Chain.segment()` allocates). */
export interface Segment {
  addr: number;
  byteLen: number;
  write: boolean;
}

/**
 * One descriptor chain, as produced by `SplitQueue.pop()` (and later a packed queue). Reuse one
 * instance: `pop()` resets it. Fields are public for speed; treat them as read-only.
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
 * Appends a guest buffer to a chain, split at region boundaries. Returns null or an error code; the
 * ordering rule (readable before writable) is the caller's, since it depends on descriptor flags.
 * Shared by the split walker and (later) the packed one.
 */
export function appendBuffer(
  chain: Chain,
  mem: GuestMemory,
  addr: number,
  byteLen: number,
  write: boolean,
  span: Span,
): VirtqErrorCode | null {
  if (byteLen === 0) return null;
  if (chain.readByteLen + chain.writeByteLen + byteLen > CHAIN_CAP) return 'VQ_CHAIN_TOO_LONG';
  if (addr < 0) return 'VQ_UNMAPPED';
  let done = 0;
  while (done < byteLen) {
    const a = addr + done;
    if (!mem.translate(a, byteLen - done, write, span) || span.byteLen <= 0) return 'VQ_UNMAPPED';
    chain.pushSegment(a, span.byteLen, span.bytes, span.offset, write);
    done += span.byteLen;
  }
  return null;
}

function le32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** An indirect descriptor table resolved for reading: its bytes and the offset of entry 0 in them. */
export class IndirectTable {
  bytes: Uint8Array = new Uint8Array(0);
  base = 0;
  private readonly span = createSpan();
  /** Tables crossing a region boundary (rare) are gathered here; grown on demand. */
  private scratch = new Uint8Array(0);

  /**
   * Validates the table's length (virtio v1.2 2.7.5.3 / 2.8.7: a non-zero multiple of the descriptor
   * size, at most maxEntries) and maps it. Returns null, or the error code and message for the walker.
   */
  map(mem: GuestMemory, addr: number, byteLen: number, descBytes: number, maxEntries: number, where: string): [VirtqErrorCode, string] | null {
    if (byteLen === 0 || byteLen % descBytes !== 0 || byteLen / descBytes > maxEntries) {
      return ['VQ_BAD_INDIRECT', `${where}: indirect table length ${byteLen} is invalid`];
    }
    if (addr < 0) return ['VQ_UNMAPPED', `${where}: indirect table address >= 2^53`];
    const ts = this.span;
    const unmapped: [VirtqErrorCode, string] = ['VQ_UNMAPPED', `${where}: indirect table ${hexAddr(addr)} +${byteLen} unmapped`];
    if (!mem.translate(addr, byteLen, false, ts)) return unmapped;
    if (ts.byteLen >= byteLen) {
      this.bytes = ts.bytes;
      this.base = ts.offset;
      return null;
    }
    if (this.scratch.length < byteLen) this.scratch = new Uint8Array(Math.max(byteLen, 256));
    const sc = this.scratch;
    let done = 0;
    while (done < byteLen) {
      if (!mem.translate(addr + done, byteLen - done, false, ts) || ts.byteLen <= 0) return unmapped;
      sc.set(ts.bytes.subarray(ts.offset, ts.offset + ts.byteLen), done);
      done += ts.byteLen;
    }
    this.bytes = sc;
    this.base = 0;
    return null;
  }
}

/**
 * Walks split-ring chains for one queue. Holds the descriptor table view and scratch state; on
 * failure `walk()` returns false and leaves `errCode` / `errMessage` (allocation only on error).
 */
export class SplitChainWalker {
  errCode: VirtqErrorCode | null = null;
  errMessage = '';
  protected readonly span = createSpan();
  protected readonly table = new IndirectTable();

  constructor(
    protected mem: GuestMemory,
    /** The descriptor table as u32 words: [addr lo, addr hi, len, flags | next << 16] per entry. */
    protected desc: Uint32Array,
    protected readonly size: number,
    protected readonly indirectAllowed: boolean,
  ) {}

  /** Point at a new memory table / descriptor table view (SET_MEM_TABLE). */
  rebind(mem: GuestMemory, desc: Uint32Array): void {
    this.mem = mem;
    this.desc = desc;
  }

  protected fail(code: VirtqErrorCode, message: string): false {
    this.errCode = code;
    this.errMessage = message;
    return false;
  }

  /** Resolves the chain starting at `head` into `chain`. */
  walk(chain: Chain, head: number): boolean {
    chain.reset();
    chain.head = head;
    chain.mem = this.mem;
    const size = this.size;
    if (head >= size) return this.fail('VQ_BAD_HEAD', `head index ${head} >= queue size ${size}`);
    const d = this.desc;
    const mem = this.mem;
    const span = this.span;
    let i = head;
    let ttl = size;
    let sawWrite = false;
    for (;;) {
      if (ttl-- === 0) return this.fail('VQ_LOOP', `chain from head ${head} is longer than the queue (${size})`);
      chain.descCount++;
      const w = i << 2;
      const lo = d[w]!;
      const hi = d[w + 1]!;
      const len = d[w + 2]!;
      const fn = d[w + 3]!;
      const flags = fn & 0xffff;
      if ((flags & F_INDIRECT) !== 0) {
        if (!this.indirectAllowed) {
          return this.fail('VQ_INDIRECT_NOT_NEGOTIATED', `descriptor ${i}: INDIRECT without VIRTIO_F_INDIRECT_DESC`);
        }
        if ((flags & F_NEXT) !== 0) {
          return this.fail('VQ_BAD_INDIRECT', `descriptor ${i}: INDIRECT together with NEXT`);
        }
        return this.walkIndirect(chain, hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo, len, sawWrite, i);
      }
      const write = (flags & F_WRITE) !== 0;
      if (write) sawWrite = true;
      else if (sawWrite) return this.fail('VQ_WRITE_BEFORE_READ', `descriptor ${i}: readable after writable`);
      const addr = hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
      const err = appendBuffer(chain, mem, addr, len, write, span);
      if (err !== null) return this.fail(err, this.bufferMessage(err, i, lo, hi, len, write, false));
      if ((flags & F_NEXT) === 0) return true;
      const next = fn >>> 16;
      if (next >= size) return this.fail('VQ_BAD_NEXT', `descriptor ${i}: next ${next} >= queue size ${size}`);
      i = next;
    }
  }

  protected walkIndirect(chain: Chain, tableAddr: number, tableLen: number, sawWrite: boolean, at: number): boolean {
    const err = this.table.map(this.mem, tableAddr, tableLen, DESC_BYTES, MAX_INDIRECT_DESCS, `descriptor ${at}`);
    if (err) return this.fail(err[0], err[1]);
    const n = tableLen / DESC_BYTES;
    const b = this.table.bytes;
    const base = this.table.base;
    const mem = this.mem;
    chain.indirect = true;
    const span = this.span;
    let i = 0;
    let ttl = n;
    for (;;) {
      if (ttl-- === 0) return this.fail('VQ_LOOP', `indirect table at ${hexAddr(tableAddr)}: chain longer than ${n}`);
      const o = base + i * DESC_BYTES;
      const lo = le32(b, o);
      const hi = le32(b, o + 4);
      const len = le32(b, o + 8);
      const flags = b[o + 12]! | (b[o + 13]! << 8);
      if ((flags & F_INDIRECT) !== 0) {
        return this.fail('VQ_NESTED_INDIRECT', `indirect table at ${hexAddr(tableAddr)}: entry ${i} is INDIRECT`);
      }
      const write = (flags & F_WRITE) !== 0;
      if (write) sawWrite = true;
      else if (sawWrite) {
        return this.fail('VQ_WRITE_BEFORE_READ', `indirect table at ${hexAddr(tableAddr)}: entry ${i} readable after writable`);
      }
      const addr = hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
      const err = appendBuffer(chain, mem, addr, len, write, span);
      if (err !== null) return this.fail(err, this.bufferMessage(err, i, lo, hi, len, write, true));
      if ((flags & F_NEXT) === 0) return true;
      const next = b[o + 14]! | (b[o + 15]! << 8);
      if (next >= n) return this.fail('VQ_BAD_NEXT', `indirect table at ${hexAddr(tableAddr)}: entry ${i} next ${next} >= ${n}`);
      i = next;
    }
  }

  protected bufferMessage(
    code: VirtqErrorCode,
    i: number,
    lo: number,
    hi: number,
    len: number,
    write: boolean,
    inIndirect: boolean,
  ): string {
    const where = inIndirect ? `indirect entry ${i}` : `descriptor ${i}`;
    const addr = '0x' + ((BigInt(hi) << 32n) | BigInt(lo)).toString(16);
    if (code === 'VQ_CHAIN_TOO_LONG') return `${where}: chain longer than 2^32 bytes`;
    return `${where}: buffer ${addr} +${len} is not mapped${write ? ' writable' : ''}`;
  }
}

/**
 * The walker for a legacy big-endian split ring (SplitQueue `bigEndian`, vhost-user.rst
 * SET_VRING_ENDIAN): the same rules and the same checks as SplitChainWalker, with every descriptor
 * field, in the ring and in indirect tables, read big-endian. A subclass rather than a flag so the
 * little-endian walk keeps its code and its inline caches (no per-field branch).
 *
 * Seen as little-endian u32 words, a big-endian descriptor is [bswap(addr hi), bswap(addr lo),
 * bswap(len), bswap16(flags) | bswap16(next) << 16].
 */
export class SplitChainWalkerBE extends SplitChainWalker {
  override walk(chain: Chain, head: number): boolean {
    chain.reset();
    chain.head = head;
    chain.mem = this.mem;
    const size = this.size;
    if (head >= size) return this.fail('VQ_BAD_HEAD', `head index ${head} >= queue size ${size}`);
    const d = this.desc;
    const mem = this.mem;
    const span = this.span;
    let i = head;
    let ttl = size;
    let sawWrite = false;
    for (;;) {
      if (ttl-- === 0) return this.fail('VQ_LOOP', `chain from head ${head} is longer than the queue (${size})`);
      chain.descCount++;
      const w = i << 2;
      const hi = swap32(d[w]!);
      const lo = swap32(d[w + 1]!);
      const len = swap32(d[w + 2]!);
      const fn = d[w + 3]!;
      const flags = swap16(fn & 0xffff);
      if ((flags & F_INDIRECT) !== 0) {
        if (!this.indirectAllowed) {
          return this.fail('VQ_INDIRECT_NOT_NEGOTIATED', `descriptor ${i}: INDIRECT without VIRTIO_F_INDIRECT_DESC`);
        }
        if ((flags & F_NEXT) !== 0) {
          return this.fail('VQ_BAD_INDIRECT', `descriptor ${i}: INDIRECT together with NEXT`);
        }
        return this.walkIndirect(chain, hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo, len, sawWrite, i);
      }
      const write = (flags & F_WRITE) !== 0;
      if (write) sawWrite = true;
      else if (sawWrite) return this.fail('VQ_WRITE_BEFORE_READ', `descriptor ${i}: readable after writable`);
      const addr = hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
      const err = appendBuffer(chain, mem, addr, len, write, span);
      if (err !== null) return this.fail(err, this.bufferMessage(err, i, lo, hi, len, write, false));
      if ((flags & F_NEXT) === 0) return true;
      const next = swap16(fn >>> 16);
      if (next >= size) return this.fail('VQ_BAD_NEXT', `descriptor ${i}: next ${next} >= queue size ${size}`);
      i = next;
    }
  }

  protected override walkIndirect(chain: Chain, tableAddr: number, tableLen: number, sawWrite: boolean, at: number): boolean {
    const err = this.table.map(this.mem, tableAddr, tableLen, DESC_BYTES, MAX_INDIRECT_DESCS, `descriptor ${at}`);
    if (err) return this.fail(err[0], err[1]);
    const n = tableLen / DESC_BYTES;
    const b = this.table.bytes;
    const base = this.table.base;
    const mem = this.mem;
    chain.indirect = true;
    const span = this.span;
    let i = 0;
    let ttl = n;
    for (;;) {
      if (ttl-- === 0) return this.fail('VQ_LOOP', `indirect table at ${hexAddr(tableAddr)}: chain longer than ${n}`);
      const o = base + i * DESC_BYTES;
      const hi = be32(b, o);
      const lo = be32(b, o + 4);
      const len = be32(b, o + 8);
      const flags = (b[o + 12]! << 8) | b[o + 13]!;
      if ((flags & F_INDIRECT) !== 0) {
        return this.fail('VQ_NESTED_INDIRECT', `indirect table at ${hexAddr(tableAddr)}: entry ${i} is INDIRECT`);
      }
      const write = (flags & F_WRITE) !== 0;
      if (write) sawWrite = true;
      else if (sawWrite) {
        return this.fail('VQ_WRITE_BEFORE_READ', `indirect table at ${hexAddr(tableAddr)}: entry ${i} readable after writable`);
      }
      const addr = hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
      const err = appendBuffer(chain, mem, addr, len, write, span);
      if (err !== null) return this.fail(err, this.bufferMessage(err, i, lo, hi, len, write, true));
      if ((flags & F_NEXT) === 0) return true;
      const next = (b[o + 14]! << 8) | b[o + 15]!;
      if (next >= n) return this.fail('VQ_BAD_NEXT', `indirect table at ${hexAddr(tableAddr)}: entry ${i} next ${next} >= ${n}`);
      i = next;
    }
  }
}

// -------------------------------------------------------------------------------------------------

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
 * Cursor over a chain's device-readable bytes. `reset(chain)` then `read` / `skip` / `nextSpan`.
 */
export class ChainReader {
  // Not private: ChainWriter.copyFrom moves both cursors (module-internal; treat as read-only).
  /** @internal */ chain: Chain | null = null;
  /** @internal */ seg = 0;
  /** @internal */ segPos = 0;
  /** @internal */ pos = 0;
  /** @internal */ total = 0;

  /** Starts reading `chain` from its first readable byte. `mem` is accepted for symmetry and unused. */
  reset(chain: Chain, _mem?: GuestMemory): this {
    this.chain = chain;
    this.seg = 0;
    this.segPos = 0;
    this.pos = 0;
    this.total = chain.readByteLen;
    return this;
  }

  /** Readable bytes left. */
  get remaining(): number {
    return this.total - this.pos;
  }
  /** Bytes consumed so far. */
  get position(): number {
    return this.pos;
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

  /**
   * The contiguous readable piece at the cursor, without consuming it (0 when nothing is left):
   * for parsing in place (e.g. a header), then `skip(n)`.
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

  /** Skips up to n readable bytes; returns the count skipped. */
  skip(n: number): number {
    const c = this.chain;
    if (c === null) return 0;
    let want = Math.min(n, this.total - this.pos);
    const skipped = want;
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
    this.pos += skipped;
    return skipped;
  }

  /**
   * Zero-copy: the next contiguous readable piece (at most `maxLen` bytes) into `out`, consuming it.
   * False when nothing is left.
   */
  nextSpan(maxLen: number, out: Span): boolean {
    const c = this.chain;
    if (c === null || this.pos >= this.total || maxLen <= 0) return false;
    const room = c.segLen[this.seg]! - this.segPos;
    const n = room < maxLen ? room : maxLen;
    out.bytes = c.segBytes[this.seg]!;
    out.offset = c.segOffset[this.seg]! + this.segPos;
    out.byteLen = n;
    this.skip(n);
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
export class ChainWriter {
  private chain: Chain | null = null;
  private mem: GuestMemory | null = null;
  private seg = 0;
  private segPos = 0;
  private pos = 0;
  private total = 0;
  private high = 0;

  /** Starts at the first writable byte of `chain`. `mem` (default: the chain's) supplies `onWrite`. */
  reset(chain: Chain, mem?: GuestMemory): this {
    this.chain = chain;
    this.mem = mem ?? chain.mem;
    this.seg = chain.readSegCount;
    this.segPos = 0;
    this.pos = 0;
    this.high = 0;
    this.total = chain.writeByteLen;
    return this;
  }

  /** Writable bytes left from the current position. */
  get remaining(): number {
    return this.total - this.pos;
  }
  get position(): number {
    return this.pos;
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

  /** Moves forward n bytes without writing (see `written`); returns the count skipped. */
  skip(n: number): number {
    const k = Math.min(n, this.total - this.pos);
    let want = k;
    while (want > 0) {
      const room = this.chain!.segLen[this.seg]! - this.segPos;
      const step = room < want ? room : want;
      this.advance(step);
      want -= step;
    }
    return k;
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
    const c = this.chain;
    if (c === null || this.pos >= this.total || maxLen <= 0) return false;
    const room = c.segLen[this.seg]! - this.segPos;
    const n = room < maxLen ? room : maxLen;
    out.bytes = c.segBytes[this.seg]!;
    out.offset = c.segOffset[this.seg]! + this.segPos;
    out.byteLen = n;
    const mem = this.mem;
    const hook = mem === null ? undefined : mem.onWrite;
    if (hook !== undefined) hook.call(mem, c.segAddr[this.seg]! + this.segPos, n);
    this.advance(n);
    if (this.pos > this.high) this.high = this.pos;
    return true;
  }

  /**
   * The contiguous writable piece at the cursor, without consuming it: `out` gets its view, offset
   * and length (0 when nothing is left). For writing in place (e.g. a header encoded straight into
   * guest memory); then `commit(n)` moves on and reports the bytes, after they were written.
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

  /** After writing n bytes in place at `current()` (n <= its length): reports them to onWrite and advances. */
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

  /** Advances within the current segment (k <= room). */
  private advance(k: number): void {
    this.segPos += k;
    this.pos += k;
    if (this.segPos === this.chain!.segLen[this.seg]) {
      this.seg++;
      this.segPos = 0;
    }
  }
}
