/**
 * Guest memory as the virtqueue engine sees it: the ONLY way the engine touches guest memory.
 *
 * Addresses are guest-physical addresses (gpa) held in JS numbers. A u64 from the guest (descriptor
 * addr) is read as two u32 halves and refused when >= 2^53 (`joinAddr`), so no bigint is ever on the
 * hot path. `translate()` follows libvhost-user's `vu_gpa_to_va(&plen)` / DPDK's
 * `vhost_iova_to_vva(&len)` contract: it resolves an address to a view and says how many bytes are
 * contiguous from there, which may be fewer than asked; the caller (chain walker) splits across regions.
 *
 * Views are the region's whole `Uint8Array` plus an offset, filled into a caller-owned `Span`, so a
 * translation allocates nothing. Node 20 caps one typed array at 2^32 bytes: a larger region must be
 * handed to `RegionMemory` as several adjacent windows (each its own region).
 *
 * Dirty logging (vhost-user.rst "Migration", LOG_ALL) plugs into `onWrite`: the engine calls it for
 * every guest write it makes (used elements, used.idx, avail_event, device-written buffer bytes).
 * When it is undefined the cost is one property load per write batch.
 */
import { VirtqError, hexAddr } from './errors.ts';

/** A translated range: `bytes[offset .. offset + byteLen)` is guest memory, contiguous in one region. */
export interface Span {
  /** The whole region's view (not a subarray: no allocation per translation). */
  bytes: Uint8Array;
  /** Byte offset of the translated address in `bytes`. */
  offset: number;
  /** Contiguous bytes available from `offset`; may be shorter than asked (region end). */
  byteLen: number;
}

const EMPTY = new Uint8Array(0);

/** A fresh span to be filled by `translate()`; allocate once and reuse. */
export function createSpan(): Span {
  return { bytes: EMPTY, offset: 0, byteLen: 0 };
}

/** Guest addresses [lo, hi) lying linearly in one view: address g is `bytes[g - base]`. */
export interface MemWindow {
  bytes: Uint8Array;
  lo: number;
  hi: number;
  base: number;
}

export function createWindow(): MemWindow {
  return { bytes: EMPTY, lo: 0, hi: 0, base: 0 };
}

export interface GuestMemory {
  /**
   * Resolves `[addr, addr + byteLen)` as far as it is contiguous in one region, into `out`.
   * Returns false (leaving `out` unspecified) when `addr` is not mapped, or when `write` is true and
   * the region is read-only. `out.byteLen` is `min(byteLen, bytes left in the region)`.
   */
  translate(addr: number, byteLen: number, write: boolean, out: Span): boolean;
  /**
   * Optional: the whole linear window around `addr` (its region), so a caller translating many
   * nearby addresses (a burst of buffers) checks bounds instead of calling translate() for each.
   * Same answers as translate() for every address inside it, until the table changes. Memories
   * without a linear view (IOVAs: iotlb.ts) leave it out.
   */
  window?(addr: number, write: boolean, out: MemWindow): boolean;
  /** Dirty-write hook: called with every guest range the engine writes. Undefined = no logging. */
  onWrite?: ((gpa: number, byteLen: number) => void) | undefined;
}

const TWO_32 = 2 ** 32;
/** hi halves >= this make the 64-bit value >= 2^53. */
const HI_LIMIT = 2 ** 21;

/** Joins a little-endian u64 read as two u32 halves; -1 when the value is >= 2^53 (not representable). */
export function joinAddr(lo: number, hi: number): number {
  return hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
}

function unmapped(addr: number, byteLen: number, write: boolean): VirtqError {
  return new VirtqError(
    'VQ_UNMAPPED',
    `guest range ${hexAddr(addr)} +${byteLen} is not mapped${write ? ' writable' : ''}`,
  );
}

const scratchSpan = createSpan();

/** Copies guest memory `[addr, addr + dst.length)` into `dst`, across regions. Throws VQ_UNMAPPED. */
export function readBytes(mem: GuestMemory, addr: number, dst: Uint8Array): void {
  const s = scratchSpan;
  let done = 0;
  const total = dst.length;
  while (done < total) {
    if (!mem.translate(addr + done, total - done, false, s) || s.byteLen <= 0) throw unmapped(addr, total, false);
    dst.set(s.bytes.subarray(s.offset, s.offset + s.byteLen), done);
    done += s.byteLen;
  }
}

/**
 * Copies `src` into guest memory at `addr`, across regions. Throws VQ_UNMAPPED (nothing is partially
 * rolled back: ranges before the hole are written). `dirty` (default true) reports the write to
 * `mem.onWrite`; the driver half (split-driver.ts, packed-driver.ts) passes false: driver writes are not device writes.
 */
export function writeBytes(mem: GuestMemory, addr: number, src: Uint8Array, dirty = true): void {
  const s = scratchSpan;
  let done = 0;
  const total = src.length;
  while (done < total) {
    if (!mem.translate(addr + done, total - done, true, s) || s.byteLen <= 0) throw unmapped(addr, total, true);
    s.bytes.set(src.subarray(done, done + s.byteLen), s.offset);
    done += s.byteLen;
  }
  if (dirty && total > 0) {
    const hook = mem.onWrite;
    if (hook !== undefined) hook.call(mem, addr, total);
  }
}

const scalar = new Uint8Array(8);
const scalarView = new DataView(scalar.buffer);

function loadScalar(mem: GuestMemory, addr: number, n: number): void {
  readBytes(mem, addr, scalar.subarray(0, n));
}

export function readU8(mem: GuestMemory, addr: number): number {
  loadScalar(mem, addr, 1);
  return scalar[0]!;
}
export function readU16(mem: GuestMemory, addr: number): number {
  loadScalar(mem, addr, 2);
  return scalarView.getUint16(0, true);
}
export function readU32(mem: GuestMemory, addr: number): number {
  loadScalar(mem, addr, 4);
  return scalarView.getUint32(0, true);
}
/** Full 64-bit value (not an address): bigint, exact. */
export function readU64(mem: GuestMemory, addr: number): bigint {
  loadScalar(mem, addr, 8);
  return scalarView.getBigUint64(0, true);
}
/** A 64-bit guest address as a number; VQ_UNMAPPED if it is >= 2^53 (it cannot be mapped anyway). */
export function readAddr64(mem: GuestMemory, addr: number): number {
  loadScalar(mem, addr, 8);
  const v = joinAddr(scalarView.getUint32(0, true), scalarView.getUint32(4, true));
  if (v < 0) throw new VirtqError('VQ_UNMAPPED', `64-bit address at ${hexAddr(addr)} is >= 2^53`);
  return v;
}

export function writeU8(mem: GuestMemory, addr: number, v: number, dirty = true): void {
  scalar[0] = v;
  writeBytes(mem, addr, scalar.subarray(0, 1), dirty);
}
export function writeU16(mem: GuestMemory, addr: number, v: number, dirty = true): void {
  scalarView.setUint16(0, v, true);
  writeBytes(mem, addr, scalar.subarray(0, 2), dirty);
}
export function writeU32(mem: GuestMemory, addr: number, v: number, dirty = true): void {
  scalarView.setUint32(0, v >>> 0, true);
  writeBytes(mem, addr, scalar.subarray(0, 4), dirty);
}
export function writeU64(mem: GuestMemory, addr: number, v: number | bigint, dirty = true): void {
  scalarView.setBigUint64(0, BigInt(v), true);
  writeBytes(mem, addr, scalar.subarray(0, 8), dirty);
}

/**
 * Resolves a ring structure that must lie in ONE region (we index it directly, no per-access
 * translation). Throws VQ_UNMAPPED when its first byte is unmapped (or read-only for `write`),
 * VQ_RING_LAYOUT when it runs past its region.
 */
export function ringView(mem: GuestMemory, addr: number, byteLen: number, write: boolean): Span {
  const s = createSpan();
  if (!mem.translate(addr, byteLen, write, s)) throw unmapped(addr, byteLen, write);
  if (s.byteLen < byteLen) {
    throw new VirtqError(
      'VQ_RING_LAYOUT',
      `ring at ${hexAddr(addr)} +${byteLen} is not contiguous in one memory region (${s.byteLen} bytes are)`,
    );
  }
  return s;
}

function hostAligned(s: Span, align: number, addr: number): number {
  const abs = s.bytes.byteOffset + s.offset;
  if (abs % align !== 0) {
    throw new VirtqError('VQ_RING_LAYOUT', `ring at ${hexAddr(addr)} is not ${align}-byte aligned in the host mapping`);
  }
  return abs;
}

/** A Uint16Array over a ring (`floor(byteLen / 2)` elements); host view must be 2-byte aligned. */
export function ringU16(mem: GuestMemory, addr: number, byteLen: number, write: boolean): Uint16Array {
  const s = ringView(mem, addr, byteLen, write);
  return new Uint16Array(s.bytes.buffer, hostAligned(s, 2, addr), byteLen >>> 1);
}

/** A Uint32Array over a ring (`floor(byteLen / 4)` elements); host view must be 4-byte aligned. */
export function ringU32(mem: GuestMemory, addr: number, byteLen: number, write: boolean): Uint32Array {
  const s = ringView(mem, addr, byteLen, write);
  return new Uint32Array(s.bytes.buffer, hostAligned(s, 4, addr), byteLen >>> 2);
}

/** A DataView over a ring (little-endian accessors; no alignment requirement). */
export function ringDataView(mem: GuestMemory, addr: number, byteLen: number, write: boolean): DataView {
  const s = ringView(mem, addr, byteLen, write);
  return new DataView(s.bytes.buffer, s.bytes.byteOffset + s.offset, byteLen);
}

// -------------------------------------------------------------------------------------------------

/** One mapped region of guest memory. */
export interface MemoryRegion {
  /** Guest-physical start address. */
  gpa: number;
  /** The frontend's user virtual address of the region (vhost-user "userspace_addr"). */
  uva: number;
  byteLen: number;
  /** This process's mapping of the region; at least `byteLen` bytes. */
  bytes: Uint8Array;
  /** Default true. A read-only region refuses `translate(..., write = true)`. */
  writable?: boolean;
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function checkRegion(r: MemoryRegion): void {
  const ok =
    Number.isSafeInteger(r.gpa) &&
    Number.isSafeInteger(r.uva) &&
    Number.isSafeInteger(r.byteLen) &&
    r.gpa >= 0 &&
    r.uva >= 0 &&
    r.byteLen > 0 &&
    r.gpa + r.byteLen <= MAX_SAFE &&
    r.uva + r.byteLen <= MAX_SAFE &&
    r.bytes instanceof Uint8Array &&
    r.bytes.length >= r.byteLen;
  if (!ok) {
    throw new VirtqError(
      'VQ_BAD_REGION',
      `bad memory region gpa ${hexAddr(r.gpa)} +${r.byteLen} (view ${r.bytes?.length ?? 'missing'} bytes)`,
    );
  }
}

/** Internal record; one shape for all regions (monomorphic accesses in translate). */
class Slot {
  constructor(
    readonly gpa: number,
    readonly end: number,
    readonly uva: number,
    readonly byteLen: number,
    readonly bytes: Uint8Array,
    readonly writable: boolean,
    readonly region: MemoryRegion,
  ) {}
}

/** RegionMemory's regions sorted by uva; `maxEnd[i]` is the highest uva end among order[0..i]. */
interface UvaIndex {
  order: Slot[];
  starts: number[];
  maxEnd: number[];
  /** Some uva ranges overlap (one mapping aliased at two gpas): the last-hit shortcut is off. */
  aliased: boolean;
  last: number;
}

/** Index in `ix.order` of the lowest-gpa region containing uva, or -1. */
function findUva(ix: UvaIndex, uva: number): number {
  const starts = ix.starts;
  let lo = 0;
  let hi = starts.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (starts[mid]! <= uva) lo = mid + 1;
    else hi = mid - 1;
  }
  // Walk back only while an earlier region could still reach uva (one step when nothing is aliased).
  let best = -1;
  for (let j = hi; j >= 0; j--) {
    const s = ix.order[j]!;
    if (uva - s.uva < s.byteLen && (best < 0 || s.gpa < ix.order[best]!.gpa)) best = j;
    if (j === 0 || ix.maxEnd[j - 1]! <= uva) break;
  }
  return best;
}

/**
 * Guest memory made of regions (the vhost-user memory table). Regions are kept sorted by gpa and
 * found by binary search, with a one-entry cache of the last hit (consecutive descriptors usually
 * land in the same region). Overlaps in guest-physical space are refused (VQ_REGION_OVERLAP).
 */
export class RegionMemory implements GuestMemory {
  onWrite?: ((gpa: number, byteLen: number) => void) | undefined;
  private slots: Slot[] = [];
  private starts: number[] = [];
  private last = 0;
  /** uva-sorted view of `slots` for translateUva (built lazily, dropped when regions change). */
  private uvaIndex: UvaIndex | null = null;

  constructor(regions: Iterable<MemoryRegion> = []) {
    for (const r of regions) this.addRegion(r);
  }

  get regionCount(): number {
    return this.slots.length;
  }

  /** The regions, sorted by gpa. */
  get regions(): readonly MemoryRegion[] {
    return this.slots.map((s) => s.region);
  }

  addRegion(r: MemoryRegion): void {
    checkRegion(r);
    const end = r.gpa + r.byteLen;
    let i = 0;
    while (i < this.slots.length && this.slots[i]!.gpa < r.gpa) i++;
    const prev = this.slots[i - 1];
    const next = this.slots[i];
    if ((prev !== undefined && prev.end > r.gpa) || (next !== undefined && next.gpa < end)) {
      const other = prev !== undefined && prev.end > r.gpa ? prev : next!;
      throw new VirtqError(
        'VQ_REGION_OVERLAP',
        `memory region ${hexAddr(r.gpa)} +${r.byteLen} overlaps region ${hexAddr(other.gpa)} +${other.byteLen}`,
      );
    }
    const slot = new Slot(r.gpa, end, r.uva, r.byteLen, r.bytes, r.writable !== false, r);
    this.slots.splice(i, 0, slot);
    this.starts.splice(i, 0, r.gpa);
    this.last = 0;
    this.uvaIndex = null;
  }

  /** Removes the region that starts at `gpa`; returns it, or null if there is none. */
  removeRegion(gpa: number): MemoryRegion | null {
    const i = this.starts.indexOf(gpa);
    if (i < 0) return null;
    const [s] = this.slots.splice(i, 1);
    this.starts.splice(i, 1);
    this.last = 0;
    this.uvaIndex = null;
    return s!.region;
  }

  /** Index of the slot containing addr, or -1. */
  private find(addr: number): number {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length - 1;
    // Last start <= addr.
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! <= addr) lo = mid + 1;
      else hi = mid - 1;
    }
    if (hi < 0) return -1;
    return addr < this.slots[hi]!.end ? hi : -1;
  }

  /** The region containing `gpa`, or null. */
  findRegion(gpa: number): MemoryRegion | null {
    const i = this.find(gpa);
    return i < 0 ? null : this.slots[i]!.region;
  }

  /** The region slot holding `addr` (the last one found first), or undefined. */
  private slotOf(addr: number): Slot | undefined {
    const s = this.slots[this.last];
    if (s !== undefined && addr >= s.gpa && addr < s.end) return s;
    const i = this.find(addr);
    if (i < 0) return undefined;
    this.last = i;
    return this.slots[i];
  }

  window(addr: number, write: boolean, out: MemWindow): boolean {
    const s = this.slotOf(addr);
    if (s === undefined || (write && !s.writable)) return false;
    out.bytes = s.bytes;
    out.lo = s.gpa;
    out.hi = s.end;
    out.base = s.gpa;
    return true;
  }

  translate(addr: number, byteLen: number, write: boolean, out: Span): boolean {
    const s = this.slotOf(addr);
    if (s === undefined || (write && !s.writable)) return false;
    const off = addr - s.gpa;
    const room = s.byteLen - off;
    out.bytes = s.bytes;
    out.offset = off;
    out.byteLen = byteLen < room ? byteLen : room;
    return true;
  }

  /**
   * Frontend user address -> gpa (SET_VRING_ADDR carries the frontend's user addresses; with QEMU they
   * are translated through the regions' userspace_addr, vhost-user.rst "Memory regions description").
   * Linear scan: called on ring setup only. With aliased uvas the lowest-gpa region wins.
   */
  uvaToGpa(uva: number): number | null {
    for (const s of this.slots) if (uva >= s.uva && uva - s.uva < s.byteLen) return s.gpa + (uva - s.uva);
    return null;
  }

  /**
   * Like `translate()`, keyed by the frontend's user address instead of the gpa (IOTLB entries map
   * IOVAs to user addresses: vhost-user.rst "Memory access", "User addresses map to the vhost memory
   * region containing that user address"). Fills `out` as far as the range is contiguous in one region
   * and returns the gpa of `uva` (the dirty log is indexed by gpa, vhost-user.rst "Migration"), or -1
   * when `uva` is in no region or, for `write`, only in a read-only one. Binary search over a
   * uva-sorted index plus a last-hit cache; aliased uvas resolve like `uvaToGpa` (lowest gpa wins).
   */
  translateUva(uva: number, byteLen: number, write: boolean, out: Span): number {
    const ix = this.uvaIndex ?? this.buildUvaIndex();
    const order = ix.order;
    let s = order[ix.last];
    if (s === undefined || ix.aliased || !(uva >= s.uva && uva - s.uva < s.byteLen)) {
      const i = findUva(ix, uva);
      if (i < 0) return -1;
      ix.last = i;
      s = order[i]!;
    }
    if (write && !s.writable) return -1;
    const off = uva - s.uva;
    const room = s.byteLen - off;
    out.bytes = s.bytes;
    out.offset = off;
    out.byteLen = byteLen < room ? byteLen : room;
    return s.gpa + off;
  }

  private buildUvaIndex(): UvaIndex {
    const order = this.slots.slice().sort((a, b) => a.uva - b.uva || a.gpa - b.gpa);
    const starts: number[] = [];
    const maxEnd: number[] = [];
    let aliased = false;
    let m = 0;
    for (const s of order) {
      if (s.uva < m) aliased = true;
      starts.push(s.uva);
      m = Math.max(m, s.uva + s.byteLen);
      maxEnd.push(m);
    }
    this.uvaIndex = { order, starts, maxEnd, aliased, last: 0 };
    return this.uvaIndex;
  }

  /** gpa of byte `offset` of a view into one of the regions (same ArrayBuffer), or null. */
  gpaOf(bytes: Uint8Array, offset: number): number | null {
    const abs = bytes.byteOffset + offset;
    for (const s of this.slots) {
      if (s.bytes.buffer !== bytes.buffer) continue;
      const rel = abs - s.bytes.byteOffset;
      if (rel >= 0 && rel < s.byteLen) return s.gpa + rel;
    }
    return null;
  }
}

/** One ArrayBuffer mapped at `base` (tests, fuzzing, benchmarks). */
export class FlatMemory implements GuestMemory {
  onWrite?: ((gpa: number, byteLen: number) => void) | undefined;
  readonly bytes: Uint8Array;
  readonly base: number;
  readonly byteLen: number;

  constructor(size: number | ArrayBuffer | Uint8Array, base = 0) {
    if (!Number.isSafeInteger(base) || base < 0) throw new VirtqError('VQ_BAD_REGION', `bad base ${base}`);
    this.bytes =
      typeof size === 'number' ? new Uint8Array(size) : size instanceof Uint8Array ? size : new Uint8Array(size);
    this.base = base;
    this.byteLen = this.bytes.length;
  }

  translate(addr: number, byteLen: number, _write: boolean, out: Span): boolean {
    const off = addr - this.base;
    if (!(off >= 0 && off < this.byteLen)) return false;
    const room = this.byteLen - off;
    out.bytes = this.bytes;
    out.offset = off;
    out.byteLen = byteLen < room ? byteLen : room;
    return true;
  }

  window(addr: number, _write: boolean, out: MemWindow): boolean {
    const off = addr - this.base;
    if (!(off >= 0 && off < this.byteLen)) return false;
    out.bytes = this.bytes;
    out.lo = this.base;
    out.hi = this.base + this.byteLen;
    out.base = this.base;
    return true;
  }

  gpaOf(bytes: Uint8Array, offset: number): number | null {
    if (bytes.buffer !== this.bytes.buffer) return null;
    const rel = bytes.byteOffset + offset - this.bytes.byteOffset;
    return rel >= 0 && rel < this.byteLen ? this.base + rel : null;
  }
}
