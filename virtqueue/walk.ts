/**
 * Resolving descriptors into a Chain (chain.ts): appendBuffer (a buffer split at region boundaries),
 * the indirect table walker both ring formats share (IndirectTable), and the split-ring chain
 * walkers (the packed list walk is PackedQueue's own, packed.ts).
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
import type { Chain } from './chain.ts';
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

/**
 * Appends a guest buffer to a chain, split at region boundaries. Returns null or an error code; the
 * ordering rule (readable before writable) is the caller's, since it depends on descriptor flags.
 * Shared by the split and packed walkers (ring descriptors and indirect tables).
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

// How IndirectTable.walk reads a table's entries (the descriptor layouts of 2.7.5 and 2.8).
/** Split ring, little-endian: flags at +12, next at +14; entries linked by NEXT (2.7.5.3.2). */
export const TABLE_SPLIT = 0;
/** Split ring of a legacy big-endian guest (SET_VRING_ENDIAN): the same, every field big-endian. */
export const TABLE_SPLIT_BE = 1;
/** Packed ring: id at +12, flags at +14; entries in order, NEXT and id "reserved and ignored" (2.8.7). */
export const TABLE_PACKED = 2;
export type TableLayout = typeof TABLE_SPLIT | typeof TABLE_SPLIT_BE | typeof TABLE_PACKED;

/**
 * An indirect descriptor table (split 2.7.5.3, packed 2.8.7): maps it and walks it into a chain, for
 * both ring formats, whose rules for a table are the same: a valid length, no INDIRECT inside
 * (VQ_NESTED_INDIRECT: one level only), device-writable entries after all readable ones (2.7.4.2),
 * buffers mapped. Only the entry layout and the order differ (TABLE_*): split entries follow NEXT
 * (bounded by the entry count: more means a loop), packed ones are taken in order. One per walker.
 */
export class IndirectTable {
  /** The mapped table: its bytes and the offset of entry 0 in them. */
  bytes: Uint8Array = new Uint8Array(0);
  base = 0;
  /** Why the last walk() failed. */
  errCode: VirtqErrorCode | null = null;
  errMessage = '';
  private readonly span = createSpan();
  /** Tables crossing a region boundary (rare) are gathered here; grown on demand. */
  private scratch = new Uint8Array(0);

  /**
   * Validates the table's length (virtio v1.2 2.7.5.3 / 2.8.7: a non-zero multiple of the descriptor
   * size, at most MAX_INDIRECT_DESCS entries) and maps it into `bytes` / `base`. False with errCode /
   * errMessage on error (messages name the ring descriptor or position `at`, built only then).
   */
  map(mem: GuestMemory, addr: number, byteLen: number, at: number, layout: TableLayout): boolean {
    if (byteLen === 0 || byteLen % DESC_BYTES !== 0 || byteLen / DESC_BYTES > MAX_INDIRECT_DESCS) {
      return this.fail('VQ_BAD_INDIRECT', `${whereOf(at, layout)}: indirect table length ${byteLen} is invalid`);
    }
    if (addr < 0) return this.fail('VQ_UNMAPPED', `${whereOf(at, layout)}: indirect table address >= 2^53`);
    const ts = this.span;
    if (!mem.translate(addr, byteLen, false, ts)) return this.unmapped(addr, byteLen, at, layout);
    if (ts.byteLen >= byteLen) {
      this.bytes = ts.bytes;
      this.base = ts.offset;
      return true;
    }
    if (this.scratch.length < byteLen) this.scratch = new Uint8Array(Math.max(byteLen, 256));
    const sc = this.scratch;
    let done = 0;
    while (done < byteLen) {
      if (!mem.translate(addr + done, byteLen - done, false, ts) || ts.byteLen <= 0) return this.unmapped(addr, byteLen, at, layout);
      sc.set(ts.bytes.subarray(ts.offset, ts.offset + ts.byteLen), done);
      done += ts.byteLen;
    }
    this.bytes = sc;
    this.base = 0;
    return true;
  }

  private unmapped(addr: number, byteLen: number, at: number, layout: TableLayout): false {
    return this.fail('VQ_UNMAPPED', `${whereOf(at, layout)}: indirect table ${hexAddr(addr)} +${byteLen} unmapped`);
  }

  /**
   * Maps the table [tableAddr, + tableLen) named by ring descriptor (split) or position (packed) `at`
   * and appends its buffers to `chain`. `sawWrite`: a writable buffer came before the table (split
   * only: 2.7.5.3.2 lets direct descriptors precede it). False with errCode / errMessage on error.
   */
  walk(chain: Chain, mem: GuestMemory, tableAddr: number, tableLen: number, sawWrite: boolean, at: number, layout: TableLayout): boolean {
    if (!this.map(mem, tableAddr, tableLen, at, layout)) return false;
    const packed = layout === TABLE_PACKED;
    const be = layout === TABLE_SPLIT_BE;
    const fo = packed ? 14 : 12; // flags offset of a little-endian entry
    const n = tableLen / DESC_BYTES;
    const b = this.bytes;
    const base = this.base;
    const span = this.span;
    chain.indirect = true;
    let i = 0;
    let ttl = n;
    for (;;) {
      // Packed tables end after entry n - 1 (below), before this can fire.
      if (ttl-- === 0) return this.fail('VQ_LOOP', `indirect table at ${hexAddr(tableAddr)}: chain longer than ${n}`);
      const o = base + i * DESC_BYTES;
      let lo: number;
      let hi: number;
      let len: number;
      let flags: number;
      if (be) {
        hi = be32(b, o);
        lo = be32(b, o + 4);
        len = be32(b, o + 8);
        flags = (b[o + 12]! << 8) | b[o + 13]!;
      } else {
        lo = le32(b, o);
        hi = le32(b, o + 4);
        len = le32(b, o + 8);
        flags = b[o + fo]! | (b[o + fo + 1]! << 8);
      }
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
      if (err !== null) {
        return this.fail(
          err,
          packed
            ? bufferMessage(err, `indirect table at ${hexAddr(tableAddr)} entry ${i}`, 'list', lo, hi, len, write)
            : bufferMessage(err, `indirect entry ${i}`, 'chain', lo, hi, len, write),
        );
      }
      if (packed) {
        // 2.8.7: every entry, in order (NEXT is ignored in a packed table).
        if (++i === n) return true;
        continue;
      }
      if ((flags & F_NEXT) === 0) return true;
      const next = be ? (b[o + 14]! << 8) | b[o + 15]! : b[o + 14]! | (b[o + 15]! << 8);
      if (next >= n) return this.fail('VQ_BAD_NEXT', `indirect table at ${hexAddr(tableAddr)}: entry ${i} next ${next} >= ${n}`);
      i = next;
    }
  }

  private fail(code: VirtqErrorCode, message: string): false {
    this.errCode = code;
    this.errMessage = message;
    return false;
  }
}

/** The descriptor that named a table, in error messages: a split ring index, a packed position. */
function whereOf(at: number, layout: TableLayout): string {
  return layout === TABLE_PACKED ? `position ${at}` : `descriptor ${at}`;
}

/**
 * The message of a buffer appendBuffer refused (both ring formats): `where` names the descriptor,
 * `unit` is the format's word for a chain ('chain' split, 'list' packed).
 */
export function bufferMessage(
  code: VirtqErrorCode,
  where: string,
  unit: string,
  lo: number,
  hi: number,
  len: number,
  write: boolean,
): string {
  const addr = '0x' + ((BigInt(hi) << 32n) | BigInt(lo)).toString(16);
  if (code === 'VQ_CHAIN_TOO_LONG') return `${where}: ${unit} longer than 2^32 bytes`;
  return `${where}: buffer ${addr} +${len} is not mapped${write ? ' writable' : ''}`;
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
      if (err !== null) return this.fail(err, bufferMessage(err, `descriptor ${i}`, 'chain', lo, hi, len, write));
      if ((flags & F_NEXT) === 0) return true;
      const next = fn >>> 16;
      if (next >= size) return this.fail('VQ_BAD_NEXT', `descriptor ${i}: next ${next} >= queue size ${size}`);
      i = next;
    }
  }

  /** Layout of this walker's indirect tables (the big-endian walker reads them big-endian). */
  protected readonly tableLayout: TableLayout = TABLE_SPLIT;

  protected walkIndirect(chain: Chain, tableAddr: number, tableLen: number, sawWrite: boolean, at: number): boolean {
    const t = this.table;
    return t.walk(chain, this.mem, tableAddr, tableLen, sawWrite, at, this.tableLayout) || this.fail(t.errCode!, t.errMessage);
  }
}

/**
 * The walker for a legacy big-endian split ring (SplitQueue `bigEndian`, vhost-user.rst
 * SET_VRING_ENDIAN): the same rules and the same checks as SplitChainWalker, with every descriptor
 * field, in the ring and in indirect tables, read big-endian. A subclass rather than a flag so the
 * little-endian ring walk keeps its code and its inline caches (no per-field branch); its indirect
 * tables go through the shared IndirectTable.walk (TABLE_SPLIT_BE: one branch per entry).
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
      if (err !== null) return this.fail(err, bufferMessage(err, `descriptor ${i}`, 'chain', lo, hi, len, write));
      if ((flags & F_NEXT) === 0) return true;
      const next = swap16(fn >>> 16);
      if (next >= size) return this.fail('VQ_BAD_NEXT', `descriptor ${i}: next ${next} >= queue size ${size}`);
      i = next;
    }
  }

  protected override readonly tableLayout: TableLayout = TABLE_SPLIT_BE;
}
