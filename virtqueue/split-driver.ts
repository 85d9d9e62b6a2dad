/**
 * The DRIVER half of a split virtqueue (virtio v1.2 2.7: the guest's side of the ring), over any
 * GuestMemory: the counterpart of our device half (split.ts). It does the driver's duties of 2.7: lays
 * out the descriptor table, available and used rings (2.7.5 / 2.7.6 / 2.7.8, their alignment), makes
 * buffers available (descriptors, then the avail ring entry, then avail.idx: 2.7.13), takes used
 * elements back and frees their descriptors (2.7.14), and plays the driver's half of notification
 * suppression (2.7.7 / 2.7.10, VIRTIO_F_EVENT_IDX's used_event and avail_event).
 *
 * Two users:
 * - our VFIO virtio-net PCI driver (backend/net/ports/vfio/virtio-net.ts), which drives a real device's
 *   rings with it over a GuestMemory view of its DMA pool (addresses are IOVAs). It uses only the
 *   real-driver fast path: `layout`, the constructor (heapByteLen 0), `addBuffer`, `publish`,
 *   `kick` / `kickable`, `hasUsed`, `popUsed` / `poppedLen`, `setNoInterrupt`; none of them allocates;
 * - the tests, as the guest driver against our device half (SplitQueue, NetDevice, the loopback and
 *   integration guests). They also use what is marked "Test-only" below: chains of several buffers
 *   from a heap read back with the bytes the device wrote (`addChain` / `readUsed`), raw writes for
 *   fault injection (loops, bad next, unmapped addresses, nested indirect tables...), index jumps.
 *
 * Ring writes go through the GuestMemory helpers with dirty = false: driver writes are not device
 * writes (nothing for the dirty log).
 *
 * `bigEndian` (tests): the driver of a legacy device in a big-endian guest (vhost-user.rst
 * SET_VRING_ENDIAN): every ring field it writes or reads (descriptors, indirect tables, avail and used
 * rings) is big-endian in memory. Buffer contents are untouched. `addBuffer` writes the address halves
 * in little-endian order: the fast path serves modern (VERSION_1, little-endian) rings only.
 */
import type { GuestMemory } from './memory.ts';
import { readBytes, readU16, readU32, writeBytes, writeU16, writeU32 } from './memory.ts';
import {
  DESC_BYTES,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  bswap16,
  bswap32,
  descTableBytes,
  needEvent,
  usedRingBytes,
} from './defs.ts';
import type { SplitQueueConfig } from './split.ts';

/** Test-only (addChain): one buffer of a chain. */
export interface DriverBuffer {
  byteLen: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write: boolean;
  /** Initial contents (readable buffers: what the device should read). */
  data?: Uint8Array;
  /** Place the buffer here instead of allocating it from the heap (region-crossing tests). */
  addr?: number;
}

/** Test-only: addChain's options. */
export interface AddChainOptions {
  /** Put the buffers in an indirect table referenced by one ring descriptor. */
  indirect?: boolean;
  /** Publish avail.idx right away (default true). */
  publish?: boolean;
}

/** Test-only: a descriptor as raw fields (fault injection). `addr` may be a bigint (values >= 2^53). */
export interface RawDesc {
  addr: number | bigint;
  len: number;
  flags: number;
  next: number;
}

/** Test-only: a used element as readUsed returns it. */
export interface UsedEntry {
  id: number;
  len: number;
  /** The first `len` bytes of the chain's writable buffers (undefined for an unknown id). */
  data?: Uint8Array;
}

export interface SplitDriverOptions {
  size: number;
  /** Ring placement; defaults laid out from `base` (see SplitDriver.layout). */
  descAddr?: number;
  availAddr?: number;
  usedAddr?: number;
  /** Where rings start when addresses are not given (default 0). */
  base?: number;
  /**
   * Buffer / indirect table heap (addChain, test-only); default: right after the rings, `heapByteLen`
   * bytes (default 64 KiB; the VFIO driver passes 0).
   */
  heapAddr?: number;
  heapByteLen?: number;
  eventIdx?: boolean;
  /** Test-only: legacy big-endian guest, ring fields are big-endian (default false, little-endian). */
  bigEndian?: boolean;
}

interface InFlight {
  descs: number[];
  allocs: [number, number][];
  writable: { addr: number; byteLen: number }[];
}

export function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * First-fit allocator over the driver's buffer heap (16-byte granularity), freed ranges coalesced.
 * Test-only in practice: the fast path takes caller-owned buffers (the VFIO driver passes heapByteLen 0).
 */
export class DriverHeap {
  /** Free ranges [addr, byteLen], sorted by address. */
  private readonly free: [number, number][];
  constructor(addr: number, byteLen: number) {
    this.free = [[addr, byteLen]];
  }

  /** Allocates `byteLen` bytes; throws when full. */
  alloc(byteLen: number): number {
    const n = align(Math.max(byteLen, 1), 16);
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]!;
      if (f[1] >= n) {
        const addr = f[0];
        f[0] += n;
        f[1] -= n;
        if (f[1] === 0) this.free.splice(i, 1);
        return addr;
      }
    }
    throw new Error(`driver heap exhausted (${byteLen} bytes)`);
  }

  release(addr: number, byteLen: number): void {
    const n = align(Math.max(byteLen, 1), 16);
    let i = 0;
    while (i < this.free.length && this.free[i]![0] < addr) i++;
    this.free.splice(i, 0, [addr, n]);
    // Coalesce adjacent ranges (the list is short).
    for (let k = 0; k < this.free.length - 1; ) {
      const a = this.free[k]!;
      const b = this.free[k + 1]!;
      if (a[0] + a[1] === b[0]) {
        a[1] += b[1];
        this.free.splice(k + 1, 1);
      } else k++;
    }
  }
}

export class SplitDriver {
  readonly size: number;
  readonly descAddr: number;
  readonly availAddr: number;
  readonly usedAddr: number;
  readonly heapAddr: number;
  readonly heapByteLen: number;
  readonly eventIdx: boolean;
  readonly bigEndian: boolean;

  private availIdxValue = 0;
  private kickedIdx = 0;
  private lastUsed = 0;
  private freeDescs: number[] = [];
  private inflight = new Map<number, InFlight>();
  /** Heads of chains added by addBuffer() (1) and not yet used. */
  private readonly single: Uint8Array;
  /** len of the element popUsed() returned last. */
  poppedLen = 0;
  /** Buffers and indirect tables come from here. */
  private readonly heap: DriverHeap;

  /** Ring addresses for `size` starting at `base` (desc 16-, avail 2-, used 4-aligned; used on a 4 KiB page as legacy did). */
  static layout(size: number, base = 0): { descAddr: number; availAddr: number; usedAddr: number; end: number } {
    const descAddr = align(base, 16);
    const availAddr = descAddr + descTableBytes(size);
    const usedAddr = align(availAddr + availRingBytes(size), 4096);
    return { descAddr, availAddr, usedAddr, end: usedAddr + usedRingBytes(size) };
  }

  constructor(
    readonly mem: GuestMemory,
    opts: SplitDriverOptions,
  ) {
    this.size = opts.size;
    const l = SplitDriver.layout(opts.size, opts.base ?? 0);
    this.descAddr = opts.descAddr ?? l.descAddr;
    this.availAddr = opts.availAddr ?? l.availAddr;
    this.usedAddr = opts.usedAddr ?? l.usedAddr;
    this.heapAddr = opts.heapAddr ?? align(Math.max(l.end, this.usedAddr + usedRingBytes(opts.size)), 4096);
    this.heapByteLen = opts.heapByteLen ?? 65536;
    this.eventIdx = opts.eventIdx ?? false;
    this.bigEndian = opts.bigEndian ?? false;
    this.heap = new DriverHeap(this.heapAddr, this.heapByteLen);
    this.single = new Uint8Array(opts.size);
    for (let i = opts.size - 1; i >= 0; i--) this.freeDescs.push(i);
    // Rings start zeroed (2.7.10.1: the driver initializes used.flags to 0).
    writeBytes(mem, this.descAddr, new Uint8Array(descTableBytes(opts.size)), false);
    writeBytes(mem, this.availAddr, new Uint8Array(availRingBytes(opts.size)), false);
    writeBytes(mem, this.usedAddr, new Uint8Array(usedRingBytes(opts.size)), false);
  }

  /** Test-only: the SplitQueue configuration matching this driver's rings (our device half on them). */
  queueConfig(extra: Partial<SplitQueueConfig> = {}): SplitQueueConfig {
    return {
      size: this.size,
      descAddr: this.descAddr,
      availAddr: this.availAddr,
      usedAddr: this.usedAddr,
      eventIdx: this.eventIdx,
      indirect: true,
      ...(this.bigEndian ? { bigEndian: true } : {}),
      ...extra,
    };
  }

  // ---- heap (test-only) --------------------------------------------------------------------------

  /** Test-only: allocates `byteLen` bytes (16-byte granularity) from the heap; throws when full. */
  alloc(byteLen: number): number {
    return this.heap.alloc(byteLen);
  }

  /** Test-only: gives a heap range back. */
  release(addr: number, byteLen: number): void {
    this.heap.release(addr, byteLen);
  }

  /** Descriptors not in flight (both paths). */
  get freeDescCount(): number {
    return this.freeDescs.length;
  }
  /** Test-only: chains added by addChain() and not yet used. */
  get inFlightCount(): number {
    return this.inflight.size;
  }

  // ---- adding chains ---------------------------------------------------------------------------

  /** Test-only: builds a chain of `bufs` (readable ones first, as 2.7.4.2 requires), makes it available, returns its head. */
  addChain(bufs: readonly DriverBuffer[], opts: AddChainOptions = {}): number {
    if (bufs.length === 0) throw new Error('addChain: empty chain');
    const indirect = opts.indirect === true;
    const need = indirect ? 1 : bufs.length;
    if (this.freeDescs.length < need) throw new Error(`addChain: ${need} descriptors needed, ${this.freeDescs.length} free`);
    const fl: InFlight = { descs: [], allocs: [], writable: [] };
    const placed: RawDesc[] = [];
    for (const b of bufs) {
      let addr = b.addr;
      if (addr === undefined) {
        addr = this.alloc(b.byteLen);
        fl.allocs.push([addr, b.byteLen]);
      }
      if (b.data !== undefined) writeBytes(this.mem, addr, b.data.subarray(0, b.byteLen), false);
      if (b.write) fl.writable.push({ addr, byteLen: b.byteLen });
      placed.push({ addr, len: b.byteLen, flags: b.write ? VIRTQ_DESC_F_WRITE : 0, next: 0 });
    }
    for (let i = 0; i < placed.length - 1; i++) placed[i]!.flags |= VIRTQ_DESC_F_NEXT;
    let head: number;
    if (indirect) {
      for (let i = 0; i < placed.length; i++) placed[i]!.next = i + 1;
      const tableLen = placed.length * DESC_BYTES;
      const table = this.alloc(tableLen);
      fl.allocs.push([table, tableLen]);
      this.writeTable(table, placed);
      head = this.freeDescs.pop()!;
      fl.descs.push(head);
      this.writeDesc(head, { addr: table, len: tableLen, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    } else {
      const idx = placed.map(() => this.freeDescs.pop()!);
      placed.forEach((d, i) => {
        d.next = idx[i + 1] ?? 0;
        this.writeDesc(idx[i]!, d);
      });
      fl.descs.push(...idx);
      head = idx[0]!;
    }
    this.inflight.set(head, fl);
    this.pushHead(head, opts.publish ?? true);
    return head;
  }

  /**
   * Fast path (and addChain): writes avail.idx, making every chain pushed since visible (2.7.13: the
   * driver's release store; our writes are program-ordered in one thread).
   */
  publish(): void {
    this.w16(this.availAddr + 2, this.availIdxValue);
  }

  // Ring fields in the driver's byte order (bigEndian), driver writes (not dirty-logged).
  private w16(addr: number, v: number): void {
    writeU16(this.mem, addr, this.bigEndian ? bswap16(v & 0xffff) : v, false);
  }
  private w32(addr: number, v: number): void {
    writeU32(this.mem, addr, this.bigEndian ? bswap32(v >>> 0) : v, false);
  }
  private r16(addr: number): number {
    const v = readU16(this.mem, addr);
    return this.bigEndian ? bswap16(v) : v;
  }
  private r32(addr: number): number {
    const v = readU32(this.mem, addr);
    return this.bigEndian ? bswap32(v) : v;
  }

  /** Test-only: next avail index the driver will write (published or not). */
  get availIdx(): number {
    return this.availIdxValue;
  }

  // ---- notifications (driver side of 2.7.7 / 2.7.10) -------------------------------------------

  /** Fast path: whether the device asked to be kicked for what was published since the last kick(). */
  get kickable(): boolean {
    if (this.eventIdx) return needEvent(this.availEvent, this.availIdxValue, this.kickedIdx);
    return this.availIdxValue !== this.kickedIdx && (this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Fast path: returns `kickable` and records the current avail.idx as kicked. */
  kick(): boolean {
    const k = this.kickable;
    this.kickedIdx = this.availIdxValue;
    return k;
  }

  /** Test-only: used_event (EVENT_IDX): "interrupt me when used.idx reaches v + 1". */
  setUsedEvent(v: number): void {
    this.w16(this.availAddr + 4 + 2 * this.size, v & 0xffff);
  }
  /** Fast path: avail.flags VIRTQ_AVAIL_F_NO_INTERRUPT (the polling VFIO driver sets it). */
  setNoInterrupt(on: boolean): void {
    this.w16(this.availAddr, on ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0);
  }
  /** Test-only: the device's used.flags, avail_event and used.idx as they are in memory. */
  get usedFlags(): number {
    return this.r16(this.usedAddr);
  }
  get availEvent(): number {
    return this.r16(this.usedAddr + 4 + 8 * this.size);
  }
  get usedIdx(): number {
    return this.r16(this.usedAddr + 2);
  }

  // ---- used ring -------------------------------------------------------------------------------

  /**
   * Test-only: used elements published since the last call, with the bytes written (allocates);
   * frees their descriptors.
   */
  readUsed(): UsedEntry[] {
    const idx = this.usedIdx;
    const out: UsedEntry[] = [];
    while (this.lastUsed !== idx) {
      const slot = this.lastUsed % this.size;
      const e = this.usedAddr + 4 + 8 * slot;
      const id = this.r32(e);
      const len = this.r32(e + 4);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      const fl = this.inflight.get(id);
      if (fl === undefined) {
        out.push({ id, len });
        continue;
      }
      const total = fl.writable.reduce((s, w) => s + w.byteLen, 0);
      const data = new Uint8Array(Math.min(len, total));
      let off = 0;
      for (const w of fl.writable) {
        if (off >= data.length) break;
        const n = Math.min(w.byteLen, data.length - off);
        readBytes(this.mem, w.addr, data.subarray(off, off + n));
        off += n;
      }
      out.push({ id, len, data });
      this.inflight.delete(id);
      for (const d of fl.descs) this.freeDescs.push(d);
      for (const [a, n] of fl.allocs) this.release(a, n);
    }
    return out;
  }

  // ---- real-driver fast path (backend/net/ports/vfio/virtio-net.ts) ----------------------------------
  // One caller-owned buffer per chain, no heap, nothing allocated per call: what a poll-mode driver of a
  // real device needs (with publish, kick and setNoInterrupt above). Chains added here and by
  // addChain() may be mixed (tests do); popUsed() frees both.

  /**
   * Makes the buffer [addr, addr + byteLen) available as a one-descriptor chain (device-writable when
   * `write`). Returns its head (the used element's id), or -1 when no descriptor is free. With
   * publish = false, avail.idx waits for publish() (one store per burst).
   */
  addBuffer(addr: number, byteLen: number, write: boolean, publish = true): number {
    const head = this.freeDescs.pop();
    if (head === undefined) return -1;
    const at = this.descAddr + DESC_BYTES * head;
    this.w32(at, addr >>> 0);
    this.w32(at + 4, Math.floor(addr / 2 ** 32));
    this.w32(at + 8, byteLen);
    this.w16(at + 12, write ? VIRTQ_DESC_F_WRITE : 0);
    this.w16(at + 14, 0);
    this.single[head] = 1;
    this.pushHead(head, publish);
    return head;
  }

  /** True when the device has published used elements popUsed() has not taken yet. */
  get hasUsed(): boolean {
    return this.usedIdx !== this.lastUsed;
  }

  /**
   * Takes the next used element without copying its data: returns its id (and sets `poppedLen` to its
   * len), or -1 when there is none. The chain's descriptors (and heap allocations, for addChain chains)
   * are freed.
   */
  popUsed(): number {
    if (this.r16(this.usedAddr + 2) === this.lastUsed) return -1;
    const e = this.usedAddr + 4 + 8 * (this.lastUsed % this.size);
    const id = this.r32(e);
    this.poppedLen = this.r32(e + 4);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    if (id < this.size && this.single[id] === 1) {
      this.single[id] = 0;
      this.freeDescs.push(id);
      return id;
    }
    const fl = this.inflight.get(id);
    if (fl !== undefined) {
      this.inflight.delete(id);
      for (const d of fl.descs) this.freeDescs.push(d);
      for (const [a, n] of fl.allocs) this.release(a, n);
    }
    return id;
  }

  // ---- fault injection and index jumps (test-only, except pushHead) -------------------------------

  /** Test-only: raw write of ring descriptor `i`. */
  writeDesc(i: number, d: RawDesc): void {
    this.writeRaw(this.descAddr + DESC_BYTES * i, d);
  }

  /** Test-only: writes a descriptor table (indirect) at `addr`. */
  writeTable(addr: number, descs: readonly RawDesc[]): void {
    descs.forEach((d, i) => this.writeRaw(addr + DESC_BYTES * i, d));
  }

  /** Test-only: allocates and writes an indirect table; returns its address (not freed by readUsed). */
  addTable(descs: readonly RawDesc[]): number {
    const addr = this.alloc(descs.length * DESC_BYTES);
    this.writeTable(addr, descs);
    return addr;
  }

  private writeRaw(at: number, d: RawDesc): void {
    const a = BigInt(d.addr);
    const lo = Number(a & 0xffffffffn);
    const hi = Number((a >> 32n) & 0xffffffffn);
    // le64 / be64 addr: the low half first in little-endian, the high half first in big-endian.
    this.w32(at, this.bigEndian ? hi : lo);
    this.w32(at + 4, this.bigEndian ? lo : hi);
    this.w32(at + 8, d.len);
    this.w16(at + 12, d.flags);
    this.w16(at + 14, d.next);
  }

  /**
   * Puts `head` in the next avail slot (no descriptor bookkeeping) and optionally publishes: the last
   * step of addBuffer and addChain; tests call it directly with hand-built chains.
   */
  pushHead(head: number, publish = true): void {
    this.w16(this.availAddr + 4 + 2 * (this.availIdxValue % this.size), head);
    this.availIdxValue = (this.availIdxValue + 1) & 0xffff;
    if (publish) this.publish();
  }

  /** Test-only: sets avail.idx to any value (avail-jump tests, starting near the wrap). */
  setAvailIdx(v: number): void {
    this.availIdxValue = v & 0xffff;
    this.publish();
  }

  /** Test-only: starts the driver's indices at `v` (both avail and expected used), as after a long run. */
  startAt(v: number): void {
    this.availIdxValue = v & 0xffff;
    this.kickedIdx = this.availIdxValue;
    this.lastUsed = this.availIdxValue;
    this.publish();
    this.w16(this.usedAddr + 2, this.availIdxValue);
  }

  /** Test-only: takes a free descriptor index out of the pool (for hand-built chains). */
  takeDesc(): number {
    const d = this.freeDescs.pop();
    if (d === undefined) throw new Error('no free descriptor');
    return d;
  }
}
