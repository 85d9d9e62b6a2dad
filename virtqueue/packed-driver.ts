/**
 * The DRIVER half of a packed virtqueue (virtio v1.2 2.8: the guest's side of the ring), over any
 * GuestMemory: the counterpart of our device half (packed.ts) and the packed twin of SplitDriver. It
 * does the driver's duties of 2.8: lays out the descriptor ring and the two event suppression areas
 * (2.8.10 / 2.8.13, zero-initialized), makes lists available the way 2.8.21.1 says (all descriptors
 * written, the first one's flags last, under the Driver Ring Wrap Counter), takes used elements back
 * (2.8.22: skipping by each id's descriptor count, 2.8.6; IN_ORDER batches, 2.8.23), and plays the
 * driver's half of event suppression (2.8.10 / 2.8.21.2).
 *
 * Two users:
 * - our VFIO virtio-net PCI driver (backend/net/ports/vfio/virtio-net.ts), which drives a real device's
 *   ring with it over a GuestMemory view of its DMA pool (addresses are IOVAs). It uses only the
 *   real-driver fast path: `layout`, the constructor (heapByteLen 0), `addBuffer`, `publish`,
 *   `kick` / `kickable`, `hasUsed`, `popUsed` / `poppedLen`, `enableInterrupts` / `disableInterrupts`;
 *   none of them allocates;
 * - the tests, as the guest driver against our device half (PackedQueue, NetDevice, the loopback and
 *   integration guests). They also use what is marked "Test-only" below: lists of several buffers
 *   from a heap read back with the bytes the device wrote (`addChain` / `readUsed`), raw writes for
 *   fault injection, position jumps.
 *
 * Ring writes go through the GuestMemory helpers with dirty = false: driver writes are not device
 * writes (nothing for the dirty log).
 */
import type { GuestMemory } from './memory.ts';
import { readBytes, readU16, readU32, writeBytes, writeU16, writeU32 } from './memory.ts';
import {
  DESC_BYTES,
  EVENT_SUPPRESS_BYTES,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  packedRingBytes,
} from './defs.ts';
import { DriverHeap, align, type DriverBuffer, type UsedEntry } from './split-driver.ts';
import type { PackedQueueConfig } from './packed.ts';

/** Test-only: addChain's options. */
export interface PackedAddOptions {
  /** Put the buffers in an indirect table referenced by one ring descriptor. */
  indirect?: boolean;
  /** Make the list available right away (default true); otherwise its first flags wait for publish(). */
  publish?: boolean;
  /** Use this buffer id instead of the next free one (duplicate-id tests; not tracked if in use). */
  id?: number;
}

/** Test-only: a packed descriptor as raw fields (fault injection). `addr` may be a bigint (values >= 2^53). */
export interface RawPackedDesc {
  addr: number | bigint;
  len: number;
  id: number;
  flags: number;
}

/** Test-only: a used element as readUsed returns it. */
export interface PackedUsedEntry extends UsedEntry {
  /** Flags of the used descriptor (WRITE says whether len is meaningful, 2.8.3). */
  flags: number;
  /** Ring position the element was read at. */
  pos: number;
  /**
   * IN_ORDER (inOrder option): the list had no element of its own; the device wrote one for a later
   * list and skipped this one (virtio v1.2 2.8.23). len is 0.
   */
  skipped?: boolean;
}

export interface PackedDriverOptions {
  size: number;
  descAddr?: number;
  driverEventAddr?: number;
  deviceEventAddr?: number;
  /** Where the ring starts when addresses are not given (default 0). */
  base?: number;
  /** Buffer / indirect table heap (addChain, test-only): as SplitDriverOptions (the VFIO driver passes 0). */
  heapAddr?: number;
  heapByteLen?: number;
  eventIdx?: boolean;
  /**
   * IN_ORDER was negotiated: readUsed() accepts an element whose id is a later list's, meaning every
   * list made available before it is used too (2.8.23: one used descriptor for a batch).
   */
  inOrder?: boolean;
}

interface InFlight {
  count: number;
  allocs: [number, number][];
  writable: { addr: number; byteLen: number }[];
}

export class PackedDriver {
  readonly size: number;
  readonly descAddr: number;
  readonly driverEventAddr: number;
  readonly deviceEventAddr: number;
  readonly heapAddr: number;
  readonly heapByteLen: number;
  readonly eventIdx: boolean;

  /** Driver positions as in PackedQueue: pos + (wrap ? 0 : size), in [0, 2·size). */
  private availL = 0;
  private usedL = 0;
  private kickedL = 0;
  /** Descriptors made available since the last kick(): positions alone are ambiguous past 2·size. */
  private sinceKick = 0;
  private freeCount: number;
  private freeIds: number[] = [];
  private inflight = new Map<number, InFlight>();
  /** inOrder: ids of addChain() lists in the order they were made available, not yet used. */
  private readonly order: number[] = [];
  private readonly inOrder: boolean;
  /** Ids of lists added by addBuffer() (1) and not yet used. */
  private readonly single: Uint8Array;
  /** len of the element popUsed() returned last. */
  poppedLen = 0;
  private readonly heap: DriverHeap;
  /** First-descriptor flags not yet written (publish: false): [position, flags]. */
  private readonly unpublished: [number, number][] = [];

  /** Ring addresses for `size` starting at `base` (descriptors 16-aligned, then the two event areas). */
  static layout(size: number, base = 0): { descAddr: number; driverEventAddr: number; deviceEventAddr: number; end: number } {
    const descAddr = align(base, 16);
    const driverEventAddr = descAddr + packedRingBytes(size);
    const deviceEventAddr = driverEventAddr + EVENT_SUPPRESS_BYTES;
    return { descAddr, driverEventAddr, deviceEventAddr, end: deviceEventAddr + EVENT_SUPPRESS_BYTES };
  }

  constructor(
    readonly mem: GuestMemory,
    opts: PackedDriverOptions,
  ) {
    this.size = opts.size;
    const l = PackedDriver.layout(opts.size, opts.base ?? 0);
    this.descAddr = opts.descAddr ?? l.descAddr;
    this.driverEventAddr = opts.driverEventAddr ?? l.driverEventAddr;
    this.deviceEventAddr = opts.deviceEventAddr ?? l.deviceEventAddr;
    const end = Math.max(l.end, this.descAddr + packedRingBytes(opts.size), this.deviceEventAddr + 4, this.driverEventAddr + 4);
    this.heapAddr = opts.heapAddr ?? align(end, 4096);
    this.heapByteLen = opts.heapByteLen ?? 65536;
    this.eventIdx = opts.eventIdx ?? false;
    this.inOrder = opts.inOrder ?? false;
    this.heap = new DriverHeap(this.heapAddr, this.heapByteLen);
    this.freeCount = opts.size;
    this.single = new Uint8Array(opts.size);
    for (let i = opts.size - 1; i >= 0; i--) this.freeIds.push(i);
    // 2.8.13: "The descriptor ring is zero-initialized"; both event areas start at ENABLE.
    writeBytes(mem, this.descAddr, new Uint8Array(packedRingBytes(opts.size)), false);
    writeBytes(mem, this.driverEventAddr, new Uint8Array(EVENT_SUPPRESS_BYTES), false);
    writeBytes(mem, this.deviceEventAddr, new Uint8Array(EVENT_SUPPRESS_BYTES), false);
  }

  /** Test-only: the PackedQueue configuration matching this driver's ring (our device half on it). */
  queueConfig(extra: Partial<PackedQueueConfig> = {}): PackedQueueConfig {
    return {
      size: this.size,
      descAddr: this.descAddr,
      driverEventAddr: this.driverEventAddr,
      deviceEventAddr: this.deviceEventAddr,
      eventIdx: this.eventIdx,
      indirect: true,
      inOrder: this.inOrder,
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

  /** Ring descriptors the driver may still fill (not in flight; both paths). */
  get freeDescCount(): number {
    return this.freeCount;
  }
  /** Test-only: lists added by addChain() and not yet used. */
  get inFlightCount(): number {
    return this.inflight.size;
  }
  /** Test-only: next position the driver fills and its Driver Ring Wrap Counter. */
  get availPos(): number {
    return this.availL % this.size;
  }
  get availWrap(): boolean {
    return this.availL < this.size;
  }
  /** Test-only: next position the driver reads used elements at and the wrap counter it expects there. */
  get usedPos(): number {
    return this.usedL % this.size;
  }
  get usedWrap(): boolean {
    return this.usedL < this.size;
  }

  // ---- adding lists ------------------------------------------------------------------------------

  /** Flags marking a descriptor available under wrap counter `wrap` (2.8.1: AVAIL = wrap, USED = !wrap). */
  static availFlags(wrap: boolean): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Test-only: builds a list of `bufs` (readable first), makes it available (unless publish: false), returns its id. */
  addChain(bufs: readonly DriverBuffer[], opts: PackedAddOptions = {}): number {
    if (bufs.length === 0) throw new Error('addChain: empty chain');
    const indirect = opts.indirect === true;
    const need = indirect ? 1 : bufs.length;
    if (this.freeCount < need) throw new Error(`addChain: ${need} descriptors needed, ${this.freeCount} free`);
    if (opts.id === undefined && this.freeIds.length === 0) throw new Error('addChain: no free buffer id');
    const fl: InFlight = { count: need, allocs: [], writable: [] };
    const placed: RawPackedDesc[] = [];
    try {
      for (const b of bufs) {
        let addr = b.addr;
        if (addr === undefined) {
          addr = this.alloc(b.byteLen);
          fl.allocs.push([addr, b.byteLen]);
        }
        if (b.data !== undefined) writeBytes(this.mem, addr, b.data.subarray(0, b.byteLen), false);
        if (b.write) fl.writable.push({ addr, byteLen: b.byteLen });
        placed.push({ addr, len: b.byteLen, id: 0, flags: b.write ? VIRTQ_DESC_F_WRITE : 0 });
      }
      if (indirect) {
        const tableLen = placed.length * DESC_BYTES;
        const table = this.alloc(tableLen);
        fl.allocs.push([table, tableLen]);
        this.writeTable(table, placed);
        placed.length = 0;
        placed.push({ addr: table, len: tableLen, id: 0, flags: VIRTQ_DESC_F_INDIRECT });
      }
    } catch (e) {
      for (const [a, n] of fl.allocs) this.release(a, n);
      throw e;
    }
    let id: number;
    if (opts.id === undefined) id = this.freeIds.pop()!;
    else {
      id = opts.id;
      const k = this.freeIds.indexOf(id);
      if (k >= 0) this.freeIds.splice(k, 1);
    }
    for (let i = 0; i < placed.length - 1; i++) placed[i]!.flags |= VIRTQ_DESC_F_NEXT;
    placed[placed.length - 1]!.id = id; // 2.8.6: the id goes in the last descriptor
    this.makeAvailable(placed, opts.publish ?? true);
    this.freeCount -= need;
    if (!this.inflight.has(id)) this.inflight.set(id, fl);
    if (this.inOrder) this.order.push(id);
    return id;
  }

  /**
   * Test-only: writes `descs` at the next positions with the current wrap counters' AVAIL/USED bits (flags given
   * without them), the first one's flags last (2.8.21.1), and advances. No bookkeeping: for hand-built
   * (faulty) lists. Returns the first position.
   */
  pushRaw(descs: readonly RawPackedDesc[], publish = true): number {
    const first = this.availPos;
    this.makeAvailable(descs, publish);
    return first;
  }

  private makeAvailable(descs: readonly RawPackedDesc[], publish: boolean): void {
    const S = this.size;
    let firstFlags = 0;
    let firstPos = 0;
    descs.forEach((d, i) => {
      const pos = this.availL % S;
      const flags = (d.flags & ~(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) | PackedDriver.availFlags(this.availL < S);
      this.writeDesc(pos, { ...d, flags: i === 0 ? 0 : flags }, i === 0);
      if (i === 0) {
        firstFlags = flags;
        firstPos = pos;
      }
      this.availL = (this.availL + 1) % (2 * S);
      this.sinceKick++;
    });
    this.unpublished.push([firstPos, firstFlags]);
    if (publish) this.publish();
  }

  /**
   * Writes the first flags of every list added with publish: false, last-added first (one batch). The
   * fast path calls it too (as SplitDriver.publish), with nothing to do: addBuffer lists are available
   * as soon as they are written.
   */
  publish(): void {
    const u = this.unpublished;
    for (let i = u.length - 1; i >= 0; i--) writeU16(this.mem, this.descAddr + DESC_BYTES * u[i]![0] + 14, u[i]![1], false);
    u.length = 0; // emptied in place: the fast path calls this per burst
  }

  // ---- notifications (driver side of 2.8.10 / 2.8.21.2) ----------------------------------------

  /** Test-only: the device event suppression area as it is in memory. */
  get deviceEventFlags(): number {
    return readU16(this.mem, this.deviceEventAddr + 2);
  }
  get deviceEventOffWrap(): number {
    return readU16(this.mem, this.deviceEventAddr);
  }

  /** Fast path: whether the device asked to be notified for what was made available since the last kick(). */
  get kickable(): boolean {
    if (this.sinceKick === 0) return false;
    const flags = this.deviceEventFlags & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.eventIdx) return true;
    // 2.8.10 DESC: kick iff the named descriptor (position + wrap counter) is among those made
    // available since the last kick, i.e. in [kickedL, availL) mod 2·size.
    const S = this.size;
    if (this.sinceKick >= 2 * S) return true;
    const ow = this.deviceEventOffWrap;
    const e = ((ow & 0x7fff) + ((ow & 0x8000) !== 0 ? 0 : S)) % (2 * S);
    return (e - this.kickedL + 2 * S) % (2 * S) < this.sinceKick;
  }

  /** Fast path: returns `kickable` and records the current position as kicked. */
  kick(): boolean {
    const k = this.kickable;
    this.kickedL = this.availL;
    this.sinceKick = 0;
    return k;
  }

  /** Driver event suppression flags (ENABLE / DISABLE / DESC) and, for DESC, the used position to be told about. */
  setDriverEvent(flags: number, pos = 0, wrap = true): void {
    writeU16(this.mem, this.driverEventAddr, (pos & 0x7fff) | (wrap ? 0x8000 : 0), false);
    writeU16(this.mem, this.driverEventAddr + 2, flags, false);
  }
  /** Fast path: no used-buffer notifications (the polling VFIO driver) / notifications again. */
  disableInterrupts(): void {
    this.setDriverEvent(RING_EVENT_FLAGS_DISABLE);
  }
  enableInterrupts(): void {
    this.setDriverEvent(RING_EVENT_FLAGS_ENABLE);
  }
  /** Test-only: EVENT_IDX, "interrupt me when the used element at (pos, wrap) is written" (RING_EVENT_FLAGS_DESC). */
  setUsedEvent(pos: number, wrap: boolean): void {
    this.setDriverEvent(RING_EVENT_FLAGS_DESC, pos, wrap);
  }

  // ---- used elements ---------------------------------------------------------------------------

  /** Test-only: used elements the device published since the last call, with the bytes written (allocates); frees them. */
  readUsed(): PackedUsedEntry[] {
    const S = this.size;
    const out: PackedUsedEntry[] = [];
    for (let guard = 0; guard <= S; guard++) {
      const pos = this.usedL % S;
      const w = this.usedL < S;
      const at = this.descAddr + DESC_BYTES * pos;
      const flags = readU16(this.mem, at + 14);
      const used = (flags & VIRTQ_DESC_F_USED) !== 0;
      const avail = (flags & VIRTQ_DESC_F_AVAIL) !== 0;
      if (used !== w || avail !== w) break;
      const len = readU32(this.mem, at + 8);
      const id = readU16(this.mem, at + 12);
      if (this.inOrder) {
        // The lists before this id in ring order were used with it and have no element (2.8.23).
        const k = this.order.indexOf(id);
        for (const sid of this.order.splice(0, k < 0 ? 0 : k + 1)) {
          if (sid === id) break;
          const sf = this.inflight.get(sid)!;
          out.push({ id: sid, len: 0, data: new Uint8Array(0), flags, pos: this.usedL % S, skipped: true });
          this.passUsed(sf.count);
          this.retire(sid, sf);
        }
      }
      const fl = this.inflight.get(id);
      // An unknown id (corruption tests) is skipped as one descriptor.
      this.passUsed(fl?.count ?? 1);
      if (fl === undefined) {
        out.push({ id, len, flags, pos });
        continue;
      }
      const total = fl.writable.reduce((s, x) => s + x.byteLen, 0);
      const data = new Uint8Array(Math.min(len, total));
      let off = 0;
      for (const x of fl.writable) {
        if (off >= data.length) break;
        const n = Math.min(x.byteLen, data.length - off);
        readBytes(this.mem, x.addr, data.subarray(off, off + n));
        off += n;
      }
      out.push({ id, len, data, flags, pos });
      this.retire(id, fl);
    }
    return out;
  }

  /** readUsed: the used position moves past a list of `count` descriptors, which are free again. */
  private passUsed(count: number): void {
    const S = this.size;
    this.usedL = (this.usedL + count) % (2 * S);
    this.freeCount = Math.min(S, this.freeCount + count);
  }

  /** readUsed: list `id` is done: its id and heap allocations are free again. */
  private retire(id: number, fl: InFlight): void {
    this.inflight.delete(id);
    this.freeIds.push(id);
    for (const [a, n] of fl.allocs) this.release(a, n);
  }

  // ---- real-driver fast path (backend/net/ports/vfio/virtio-net.ts) ----------------------------------
  // One caller-owned buffer per list, no heap, nothing allocated per call (with publish, kick and
  // enable/disableInterrupts above). Lists added here and by addChain() may be mixed (tests do);
  // popUsed() frees both.

  /**
   * Makes the buffer [addr, addr + byteLen) available as a one-descriptor list (device-writable when
   * `write`). Returns its buffer id, or -1 when no descriptor or id is free. The flags word (which makes
   * it available, 2.8.21.1) is written last, at once: a one-descriptor list is complete by itself.
   */
  addBuffer(addr: number, byteLen: number, write: boolean): number {
    if (this.freeCount === 0 || this.freeIds.length === 0) return -1;
    const id = this.freeIds.pop()!;
    const S = this.size;
    const at = this.descAddr + DESC_BYTES * (this.availL % S);
    writeU32(this.mem, at, addr >>> 0, false);
    writeU32(this.mem, at + 4, Math.floor(addr / 2 ** 32), false);
    writeU32(this.mem, at + 8, byteLen, false);
    writeU16(this.mem, at + 12, id, false);
    writeU16(this.mem, at + 14, (write ? VIRTQ_DESC_F_WRITE : 0) | PackedDriver.availFlags(this.availL < S), false);
    this.availL = (this.availL + 1) % (2 * S);
    this.sinceKick++;
    this.freeCount--;
    this.single[id] = 1;
    return id;
  }

  /** True when the descriptor at the driver's used position has been marked used by the device. */
  get hasUsed(): boolean {
    const flags = readU16(this.mem, this.descAddr + DESC_BYTES * (this.usedL % this.size) + 14);
    const w = this.usedL < this.size;
    return ((flags & VIRTQ_DESC_F_USED) !== 0) === w && ((flags & VIRTQ_DESC_F_AVAIL) !== 0) === w;
  }

  /**
   * Takes the next used element without copying its data: returns its buffer id (and sets `poppedLen`),
   * or -1 when there is none. Its descriptors and id (and heap allocations, for addChain lists) are freed.
   */
  popUsed(): number {
    if (!this.hasUsed) return -1;
    const S = this.size;
    const at = this.descAddr + DESC_BYTES * (this.usedL % S);
    this.poppedLen = readU32(this.mem, at + 8);
    const id = readU16(this.mem, at + 12);
    let count = 1;
    if (id < S && this.single[id] === 1) {
      this.single[id] = 0;
      this.freeIds.push(id);
    } else {
      const fl = this.inflight.get(id);
      if (fl !== undefined) {
        count = fl.count;
        this.inflight.delete(id);
        this.freeIds.push(id);
        for (const [a, n] of fl.allocs) this.release(a, n);
      }
    }
    this.usedL = (this.usedL + count) % (2 * S);
    this.freeCount = Math.min(S, this.freeCount + count);
    return id;
  }

  // ---- fault injection and position jumps (test-only) ---------------------------------------------

  /** Test-only (and addChain): raw write of ring descriptor `pos`; with `skipFlags` the flags word is left alone. */
  writeDesc(pos: number, d: RawPackedDesc, skipFlags = false): void {
    const at = this.descAddr + DESC_BYTES * pos;
    const a = BigInt(d.addr);
    writeU32(this.mem, at, Number(a & 0xffffffffn), false);
    writeU32(this.mem, at + 4, Number((a >> 32n) & 0xffffffffn), false);
    writeU32(this.mem, at + 8, d.len, false);
    writeU16(this.mem, at + 12, d.id, false);
    if (!skipFlags) writeU16(this.mem, at + 14, d.flags, false);
  }

  /** Test-only: raw read of ring descriptor `pos`. */
  readDesc(pos: number): RawPackedDesc {
    const at = this.descAddr + DESC_BYTES * pos;
    const lo = readU32(this.mem, at);
    const hi = readU32(this.mem, at + 4);
    return {
      addr: hi * 2 ** 32 + lo,
      len: readU32(this.mem, at + 8),
      id: readU16(this.mem, at + 12),
      flags: readU16(this.mem, at + 14),
    };
  }

  /** Test-only (and addChain): writes a descriptor table (indirect) at `addr`. */
  writeTable(addr: number, descs: readonly RawPackedDesc[]): void {
    descs.forEach((d, i) => {
      const at = addr + DESC_BYTES * i;
      const a = BigInt(d.addr);
      writeU32(this.mem, at, Number(a & 0xffffffffn), false);
      writeU32(this.mem, at + 4, Number((a >> 32n) & 0xffffffffn), false);
      writeU32(this.mem, at + 8, d.len, false);
      writeU16(this.mem, at + 12, d.id, false);
      writeU16(this.mem, at + 14, d.flags, false);
    });
  }

  /** Test-only: allocates and writes an indirect table; returns its address (never freed). */
  addTable(descs: readonly RawPackedDesc[]): number {
    const addr = this.alloc(Math.max(descs.length, 1) * DESC_BYTES);
    this.writeTable(addr, descs);
    return addr;
  }

  /**
   * Test-only: starts the driver at position `pos` with wrap counter `wrap` (both avail and used, nothing in
   * flight), as after a long run: the ring is filled with descriptors used in the current lap
   * (before pos) and in the previous lap (from pos on), so neither side mistakes them for new.
   */
  startAt(pos: number, wrap: boolean): void {
    const S = this.size;
    for (let i = 0; i < S; i++) {
      const w = i < pos ? wrap : !wrap;
      this.writeDesc(i, { addr: 0, len: 0, id: 0, flags: w ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0 });
    }
    this.availL = pos + (wrap ? 0 : S);
    this.usedL = this.availL;
    this.kickedL = this.availL;
    this.sinceKick = 0;
  }
}
