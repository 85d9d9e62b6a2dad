/**
 * Packed virtqueue, device side (virtio v1.2 2.8). Same contract as SplitQueue (the `Virtqueue`
 * interface): indices + ring views over a GuestMemory, no allocation per chain, guest errors mark the
 * queue `broken` (sticky, first error wins) and are never thrown.
 *
 * Positions. Every ring position is kept as one number in [0, 2·size): `pos + (wrap ? 0 : size)`.
 * Wrap counters start at 1 (2.8.1), so position 0 of the first lap is 0, and the counter flips exactly
 * when the number crosses a multiple of size. Distances and the event-index test (2.8.10) then
 * become plain modular arithmetic mod 2·size, for any size 1..32768 (2.8: no power of two needed).
 *
 * Available detection (2.8.1): the descriptor at the device's position is available iff its AVAIL
 * bit equals the device's avail wrap counter and its USED bit does not. Only the first descriptor of
 * a list is tested (the driver makes it available last, 2.8.6 / 2.8.21.1); the flags of the others
 * are not checked (as DPDK and QEMU do).
 *
 * Lists (2.8.6): descriptors linked by NEXT in ring order, crossing the ring end; the buffer id is
 * taken from the last one. At most `size` descriptors (the ttl guard: more is a loop, VQ_LOOP), and
 * never more than the ring has free: descriptors between the published used position and the end of
 * the list must fit in `size` (otherwise the driver reused slots it does not own: VQ_AVAIL_JUMP).
 *
 * Indirect (2.8.7): a descriptor with INDIRECT must be alone (no NEXT, not after NEXT-linked ones:
 * 2.8.19 "MUST NOT write direct descriptors with DESC_F_INDIRECT set in a scatter-gather list linked
 * by VIRTQ_DESC_F_NEXT"), VQ_BAD_INDIRECT otherwise. Its table (len a non-zero multiple of 16, at most
 * MAX_INDIRECT_DESCS entries) is walked SEQUENTIALLY over all its entries: in a table only WRITE is
 * valid and NEXT / id are "reserved and ignored by the device". INDIRECT inside a table is refused
 * (VQ_NESTED_INDIRECT): only one level exists, and a driver setting it expects something we cannot do.
 *
 * Buffer ids: a used element must name an id the device popped; the queue remembers how many ring
 * descriptors each in-flight id took (2.8.6: both sides skip that many), so `pushUsed(id, len)` needs
 * no count. An id popped while the same id is in flight is a driver error (VQ_BAD_ID).
 *
 * Used elements (2.8.3, 2.8.4, 2.8.6): written in completion order at the device's used position,
 * {id, len, flags = AVAIL|USED both equal to the used wrap counter at that position, WRITE iff
 * len > 0}; the position then advances by the list's descriptor count (out-of-order completion is
 * fine: the driver skips by the id's count). Ordering, like DPDK's shadow flush: `pushUsed` writes id
 * and len of every element and the flags of all but the FIRST pending element with plain stores
 * (the driver polls only its next used position, the first one, 2.8.2); `flushUsed` then stores the
 * first element's flags with `Atomics.store` (release), so the whole batch becomes visible at once,
 * each element's id/len before its flags (2.8.9: the first descriptor of a multi-buffer request is
 * marked used after the rest). Slots written are ones the device has already read (they trail the
 * avail position), and the driver does not look at them before their flags flip.
 *
 * Event suppression (2.8.10, 2.8.14): the device READS the driver area {off_wrap, flags} after
 * publishing (store-load, both seq-cst Atomics): DISABLE = no notification; ENABLE = notify; DESC
 * (only with EVENT_IDX) = notify iff the used position named by off_wrap lies in the range this flush
 * covered. Reserved values (DESC without EVENT_IDX, 3) notify: an extra interrupt is harmless, a lost
 * one hangs the guest. The device WRITES the device area: disableNotification stores DISABLE;
 * enableNotification stores ENABLE, or with EVENT_IDX off_wrap := the first position not yet seen and
 * then flags := DESC, and re-checks that descriptor afterwards (the race of 2.8.21.2 / 2.8.22 note).
 *
 * Inflight tracking (vhost-user.rst "Inflight I/O tracking", inflight.ts PackedInflight): with a region
 * attached, pop copies the list's descriptors into the region and marks it in flight, pushUsed frees
 * its entries and advances the region's used_idx, flushUsed publishes and then commits the batch,
 * unpop frees what it gives back. Attaching a region that holds work from before a restart
 * resubmits it: the saved descriptors (the ring slots may have been overwritten by used elements
 * since) go through the same list walker, oldest first, before the ring is read again; the used
 * position is the region's (after the spec's roll-back / commit) and the next position to read is
 * that plus the descriptors still in flight. Without a region each operation pays one null check.
 *
 * Dirty log: descriptor writes (used elements) are logged at their own address; the device event
 * suppression area, the packed ring's "used" area of SET_VRING_ADDR, at `usedLogAddr` + offset when
 * given (log_guest_addr with VHOST_VRING_F_LOG), at its own address otherwise.
 *
 * Length: over 1000 lines because it is one class, the whole device side of the format (pop and its
 * one-descriptor / burst fast paths, used publication, event suppression, inflight resubmission),
 * whose paths share private per-position state and are kept inline for speed; what both formats
 * share is elsewhere (queue-core.ts, walk.ts).
 */
import type { GuestMemory } from './memory.ts';
import { createSpan, createWindow, ringU16, ringU32, type MemWindow } from './memory.ts';
import { Chain } from './chain.ts';
import { IndirectTable, TABLE_PACKED, appendBuffer, bufferMessage } from './walk.ts';
import {
  DESC_BYTES,
  EVENT_SUPPRESS_ALIGN,
  EVENT_SUPPRESS_BYTES,
  MAX_PACKED_QUEUE_SIZE,
  PLAIN_LOAD_ACQUIRES,
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
import type { VirtqErrorCode } from './errors.ts';
import { VirtqError, hexAddr } from './errors.ts';
import type { InflightAttachResult, InflightRegion, PackedRecovery } from './inflight.ts';
import { PackedInflight } from './inflight.ts';
import { BURST_MAX, type DirectBuffer, type DirectBurst, type Virtqueue, type VirtqueueStats } from './queue.ts';
import { QueueCore } from './queue-core.ts';


// Module-local copies of imported bindings used per operation (tsx's CJS output turns imports
// into getter calls).
const F_NEXT = VIRTQ_DESC_F_NEXT;
const F_WRITE = VIRTQ_DESC_F_WRITE;
const F_INDIRECT = VIRTQ_DESC_F_INDIRECT;
const F_AVAIL = VIRTQ_DESC_F_AVAIL;
const F_USED = VIRTQ_DESC_F_USED;
const F_AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
const EV_ENABLE = RING_EVENT_FLAGS_ENABLE;
const EV_DISABLE = RING_EVENT_FLAGS_DISABLE;
const EV_DESC = RING_EVENT_FLAGS_DESC;
const DESC_SZ = DESC_BYTES;
const appendBuf = appendBuffer;
const PLAIN_ACQ = PLAIN_LOAD_ACQUIRES;
const TWO_32 = 2 ** 32;
/** hi halves >= this make a 64-bit address >= 2^53 (see joinAddr). */
const HI_LIMIT = 2 ** 21;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([0x0102]).buffer)[0] === 0x02;

/** The device's ring state as vhost-user carries it (SET_VRING_BASE / GET_VRING_BASE). */
export interface PackedBase {
  /** Next descriptor position the device will read, 0..size-1. */
  lastAvailIdx: number;
  /** Driver (available) ring wrap counter the device expects at that position. */
  availWrap: boolean;
  /** Position where the device writes its next used element, 0..size-1. */
  usedIdx: number;
  /** Device (used) ring wrap counter. */
  usedWrap: boolean;
}

/**
 * Decodes a packed SET_VRING_BASE `num` (vhost-user.rst "Vring descriptor indices for packed
 * virtqueues"): bits 0-14 last avail idx, bit 15 avail wrap counter, bits 16-30 used idx, bit 31
 * used wrap counter.
 *
 * A zero used half means "used = avail" (same position and wrap). QEMU sends both halves (0x80008000
 * for a fresh ring), but DPDK's virtio-user frontend sends 0x8000 and DPDK's vhost library reports
 * and expects only the avail half, setting used := avail itself. A genuine used state of position 0
 * with wrap counter 0 next to a different avail position would need descriptors in flight across a
 * ring stop, which a vhost-user back-end does not keep (GET_VRING_BASE stops the ring after its
 * chains completed); with avail also at (0, 0) both readings agree.
 */
export function packedBaseFromVhost(num: number): PackedBase {
  const n = num >>> 0;
  const lastAvailIdx = n & 0x7fff;
  const availWrap = (n & 0x8000) !== 0;
  const hi = n >>> 16;
  if (hi === 0) return { lastAvailIdx, availWrap, usedIdx: lastAvailIdx, usedWrap: availWrap };
  return { lastAvailIdx, availWrap, usedIdx: hi & 0x7fff, usedWrap: (hi & 0x8000) !== 0 };
}

/** Encodes the state for GET_VRING_BASE (always both halves, QEMU's layout); an unsigned 32-bit number. */
export function packedBaseToVhost(b: PackedBase): number {
  return (
    ((b.lastAvailIdx & 0x7fff) |
      (b.availWrap ? 0x8000 : 0) |
      ((b.usedIdx & 0x7fff) << 16) |
      (b.usedWrap ? 0x80000000 : 0)) >>>
    0
  );
}

export interface PackedQueueConfig {
  /** Queue size 1..32768, any integer (SET_VRING_NUM; 2.8 does not require a power of two). */
  size: number;
  /** Guest-physical addresses (SET_VRING_ADDR's desc / avail / used fields carry these three). */
  descAddr: number;
  /** Driver Event Suppression (the Driver Area): read by the device. */
  driverEventAddr: number;
  /** Device Event Suppression (the Device Area): written by the device. */
  deviceEventAddr: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated (enables RING_EVENT_FLAGS_DESC both ways). */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
  /**
   * VIRTIO_F_IN_ORDER negotiated. The queue writes one used element per chain, except that
   * pushUsedBurst writes a burst of zero-length completions (TX) as one element with the last id
   * when nothing else is in flight (virtio v1.2 2.8.23; D38).
   */
  inOrder?: boolean;
  /** Next position to read (default 0) and its wrap counter (default true, 2.8.1). */
  lastAvailIdx?: number;
  availWrapCounter?: boolean;
  /** Next used position (default: lastAvailIdx) and its wrap counter (default: availWrapCounter). */
  usedIdx?: number;
  usedWrapCounter?: boolean;
  /** The raw SET_VRING_BASE value; when given it replaces the four fields above (packedBaseFromVhost). */
  vhostBase?: number;
  /**
   * Guest address at which writes to the device event suppression area are reported to the dirty
   * log (SET_VRING_ADDR log_guest_addr with VHOST_VRING_F_LOG); default: deviceEventAddr. Used
   * elements are always logged at their descriptor's own address.
   */
  usedLogAddr?: number;
  /** For log lines. */
  label?: string;
}

export class PackedQueue extends QueueCore implements Virtqueue {
  readonly size: number;
  readonly descGpa: number;
  readonly driverEventGpa: number;
  readonly deviceEventGpa: number;
  /** Where device event area writes are logged (usedLogAddr, or deviceEventGpa). */
  readonly usedLogGpa: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly inOrder: boolean;
  readonly label: string;
  /** Sticky guest error; null while the queue is healthy. */
  readonly stats: VirtqueueStats = { popped: 0, poppedDirect: 0, pushed: 0, flushes: 0, notifies: 0, suppressed: 0 };

  /** The ring as u32 words: [addr lo, addr hi, len, id | flags << 16] per descriptor. */
  private desc!: Uint32Array;
  /** The same ring as u16: id at 8·pos + 6, flags at 8·pos + 7. */
  private descU16!: Uint16Array;
  /** Driver area [off_wrap, flags] (read) and device area (written). */
  private drvEvt!: Uint16Array;
  private devEvt!: Uint16Array;
  /** 2·size: positions live in [0, twoSize). */
  private readonly twoSize: number;

  /** Next position to read (linear, see header). */
  private availL: number;
  /** Descriptors given back by unpop: the furthest position seen is availL + ahead. */
  private ahead = 0;
  /** Published used position / next used position (published + pending). */
  private usedL: number;
  private shadowUsedL: number;
  /** Pending (pushed, unpublished) elements; the first one's flags are stored at flush. */
  private pending = 0;
  /**
   * A notification decided by a flush a push made on its own (`size` elements pending: a hostile
   * driver marking descriptors available again while we drain), owed to the next flushUsed's answer.
   */
  private notifyOwed = false;
  private firstFlagsAt = 0;
  private firstFlags = 0;
  /** Ring positions of the pending elements (dirty logging after publication). */
  private readonly pendPos: Uint16Array;
  /** Chains popped and not pushed nor given back. */
  private outstanding = 0;

  /** Per buffer id: descriptors it took in the ring (0 = not in flight) and its history slot. */
  private idCount: Uint16Array;
  private idSlot: Uint16Array;
  /** Pop history (a ring of `size`): id and descriptor count per pop, count 0 once pushed. */
  private readonly histId: Uint16Array;
  private readonly histCount: Uint16Array;
  private histTop = 0;
  private histLen = 0;

  /** What we last wrote to the device area (-1: not written by us), to skip redundant stores. */
  private devFlags = -1;
  private devOffWrap = -1;
  private notifyOn = true;

  // Walker scratch (allocation only on error).
  private errCode: VirtqErrorCode | null = null;
  private errMessage = '';
  private readonly span = createSpan();
  /** popBurst: the region window of the current run. */
  private readonly win = createWindow();
  private readonly table = new IndirectTable();

  // Inflight tracking (null / empty without a region).
  private inflightRegion: PackedInflight | null = null;
  /** What recover() returned; resubmitPos lists and resubmitOff descriptors of it handed out. */
  private recovery: PackedRecovery | null = null;
  private resubmitPos = 0;
  private resubmitOff = 0;
  /** Per buffer id in flight: its head entry in the region. */
  private idEntry: Uint16Array = new Uint16Array(0);
  /** Head entries pushed since the last flush. */
  private pendEntry: Uint16Array = new Uint16Array(0);
  /** Per history slot: 1 when that pop was a resubmission. */
  private histResub: Uint8Array = new Uint8Array(0);

  /** Validates the layout and maps the rings; throws VirtqError (VQ_BAD_SIZE, VQ_RING_LAYOUT, VQ_UNMAPPED) or RangeError (indices). */
  constructor(cfg: PackedQueueConfig, mem: GuestMemory) {
    super(mem);
    if (!LITTLE_ENDIAN) throw new Error('virtqueue engine needs a little-endian host');
    const { size } = cfg;
    if (!(Number.isInteger(size) && size >= 1 && size <= MAX_PACKED_QUEUE_SIZE)) {
      throw new VirtqError('VQ_BAD_SIZE', `packed queue size ${size} is not in 1..${MAX_PACKED_QUEUE_SIZE}`);
    }
    const addrs: [number, number, string][] = [
      [cfg.descAddr, DESC_SZ, 'descriptor ring'],
      [cfg.driverEventAddr, EVENT_SUPPRESS_ALIGN, 'driver event suppression area'],
      [cfg.deviceEventAddr, EVENT_SUPPRESS_ALIGN, 'device event suppression area'],
    ];
    for (const [a, align, what] of addrs) {
      if (!Number.isSafeInteger(a) || a < 0) throw new VirtqError('VQ_UNMAPPED', `${what} address ${a} is invalid`);
      if (a % align !== 0) {
        throw new VirtqError('VQ_RING_LAYOUT', `${what} at ${hexAddr(a)} is not ${align}-byte aligned (virtio v1.2 2.8.10.1)`);
      }
    }
    let availIdx = cfg.lastAvailIdx ?? 0;
    let availWrap = cfg.availWrapCounter ?? true;
    let usedIdx = cfg.usedIdx ?? availIdx;
    let usedWrap = cfg.usedWrapCounter ?? availWrap;
    if (cfg.vhostBase !== undefined) {
      const b = packedBaseFromVhost(cfg.vhostBase);
      availIdx = b.lastAvailIdx;
      availWrap = b.availWrap;
      usedIdx = b.usedIdx;
      usedWrap = b.usedWrap;
    }
    for (const [v, what] of [
      [availIdx, 'lastAvailIdx'],
      [usedIdx, 'usedIdx'],
    ] as const) {
      if (!(Number.isInteger(v) && v >= 0 && v < size)) throw new RangeError(`${what} ${v} is not a position in a ring of ${size}`);
    }
    this.size = size;
    this.twoSize = 2 * size;
    this.availL = availIdx + (availWrap ? 0 : size);
    this.usedL = usedIdx + (usedWrap ? 0 : size);
    this.shadowUsedL = this.usedL;
    const gap = this.availL - this.usedL + (this.availL < this.usedL ? this.twoSize : 0);
    if (gap > size) {
      throw new RangeError(
        `used position ${usedIdx}/${+usedWrap} is not within one ring behind avail position ${availIdx}/${+availWrap}`,
      );
    }
    this.descGpa = cfg.descAddr;
    this.driverEventGpa = cfg.driverEventAddr;
    this.deviceEventGpa = cfg.deviceEventAddr;
    const logAt = cfg.usedLogAddr ?? cfg.deviceEventAddr;
    if (!Number.isSafeInteger(logAt) || logAt < 0) {
      throw new VirtqError('VQ_RING_LAYOUT', `used log address ${logAt} is invalid`);
    }
    this.usedLogGpa = logAt;
    this.eventIdx = cfg.eventIdx;
    this.indirect = cfg.indirect;
    this.inOrder = cfg.inOrder === true;
    this.label = cfg.label ?? `pvq@${hexAddr(cfg.descAddr)}`;
    this.pendPos = new Uint16Array(size);
    this.histId = new Uint16Array(size);
    this.histCount = new Uint16Array(size);
    // Linux and DPDK drivers use ids < size; any other id grows the tables to the full 16-bit range.
    this.idCount = new Uint16Array(size);
    this.idSlot = new Uint16Array(size);
    this.mapRings(mem);
  }

  protected mapRings(mem: GuestMemory): void {
    const bytes = packedRingBytes(this.size);
    const desc = ringU32(mem, this.descGpa, bytes, true);
    const descU16 = ringU16(mem, this.descGpa, bytes, true);
    const drvEvt = ringU16(mem, this.driverEventGpa, EVENT_SUPPRESS_BYTES, false);
    const devEvt = ringU16(mem, this.deviceEventGpa, EVENT_SUPPRESS_BYTES, true);
    this.desc = desc;
    this.descU16 = descU16;
    this.drvEvt = drvEvt;
    this.devEvt = devEvt;
  }


  /** Next descriptor position the device will read (0..size-1). */
  get lastAvailIdx(): number {
    const L = this.availL;
    return L < this.size ? L : L - this.size;
  }
  get availWrapCounter(): boolean {
    return this.availL < this.size;
  }
  /** Used position as published (0..size-1). */
  get usedIdx(): number {
    const L = this.usedL;
    return L < this.size ? L : L - this.size;
  }
  get usedWrapCounter(): boolean {
    return this.usedL < this.size;
  }
  /** Published state, for GET_VRING_BASE (flushUsed() first). */
  get base(): PackedBase {
    return {
      lastAvailIdx: this.lastAvailIdx,
      availWrap: this.availWrapCounter,
      usedIdx: this.usedIdx,
      usedWrap: this.usedWrapCounter,
    };
  }
  /** `base` in the vhost-user GET_VRING_BASE encoding. */
  get vhostBase(): number {
    return packedBaseToVhost(this.base);
  }
  get pendingUsed(): number {
    return this.pending;
  }
  /** Chains popped and neither pushed nor given back. */
  get inFlight(): number {
    return this.outstanding;
  }
  get notificationsEnabled(): boolean {
    return this.notifyOn;
  }


  private fail(code: VirtqErrorCode, message: string): false {
    this.errCode = code;
    this.errMessage = message;
    return false;
  }

  /**
   * Flags of the descriptor at linear position L when it is available for the wrap counter that
   * position implies, else -1. The flags load is the acquire that orders the reads of the list's
   * descriptors after it: `Atomics.load`, or a plain load where that is one (`plain`, D36).
   */
  private availFlags(L: number, plain: boolean): number {
    const S = this.size;
    const w = L >= S ? 0 : 1;
    const fi = ((L >= S ? L - S : L) << 3) + 7;
    const f = plain ? this.descU16[fi]! : Atomics.load(this.descU16, fi);
    return ((f >>> 7) & 1) === w && ((f >>> 15) & 1) !== w ? f : -1;
  }

  /** True when the next descriptor is available (a chain can be popped). False on a broken queue. */
  hasAvailable(): boolean {
    if (this.inflightRegion !== null && this.recovery !== null && this.resubmitPos < this.recovery.entries.length) {
      return this.broken === null && this.ringsMapped;
    }
    return this.broken === null && this.ringsMapped && this.availFlags(this.availL, false) >= 0;
  }

  /**
   * Walks the next available descriptor list into `chain` (reset first). False when none is
   * available or the queue is (or just became) broken; never throws for guest errors.
   */
  pop(chain: Chain): boolean {
    if (this.broken !== null || !this.ringsMapped) return false;
    if (this.inflightRegion !== null) return this.popTracked(chain);
    const S = this.size;
    const L = this.availL;
    const f0 = this.availFlags(L, false);
    if (f0 < 0) return false;
    const pos = L >= S ? L - S : L;
    const w = L >= S ? 0 : 1;
    let n: number;
    try {
      n = this.walk(chain, this.desc, S, pos, f0);
    } catch (e) {
      return this.walkFault(e);
    }
    if (n === 0) {
      this.markBroken(this.errCode!, `descriptor ${pos} (wrap ${w}): ${this.errMessage}`);
      return false;
    }
    // Capacity: everything from the published used position to the end of this list is in flight.
    const twoS = this.twoSize;
    const U = this.usedL;
    const inFlight = L >= U ? L - U : L + twoS - U;
    if (inFlight + n > S) {
      this.markBroken(
        'VQ_AVAIL_JUMP',
        `descriptor ${pos}: ${n} more descriptors available with ${inFlight} in flight exceed the ring (${S})`,
      );
      return false;
    }
    const id = chain.head;
    if (id >= this.idCount.length) this.growIdTables();
    if (this.idCount[id] !== 0) {
      this.markBroken('VQ_BAD_ID', `descriptor ${pos}: buffer id ${id} is already in flight`);
      return false;
    }
    const slot = this.histTop;
    this.histId[slot] = id;
    this.histCount[slot] = n;
    this.histTop = slot + 1 === S ? 0 : slot + 1;
    if (this.histLen < S) this.histLen++;
    this.idCount[id] = n;
    this.idSlot[id] = slot;
    let next = L + n;
    if (next >= twoS) next -= twoS;
    this.availL = next;
    this.ahead = this.ahead > n ? this.ahead - n : 0;
    this.outstanding++;
    this.stats.popped++;
    return true;
  }

  /**
   * pop() for the common case (queue.ts DirectBuffer): the descriptor at the avail position is a
   * list of one (no NEXT / INDIRECT) of the expected direction, non-zero length, in one region, with
   * an id not in flight and room in the ring. Anything else, and queues with an inflight journal,
   * answer DIRECT_CHAIN without consuming, so pop() and its walker judge them. Bookkeeping is pop()'s
   * (id table, unpop history, capacity), for a list of one descriptor.
   */
  popDirect(out: DirectBuffer): number {
    if (this.broken !== null || !this.ringsMapped) return 0;
    if (this.inflightRegion !== null) return -1;
    const S = this.size;
    const L = this.availL;
    // Acquire, as in pop(); on x86 a plain load is one (defs.ts PLAIN_LOAD_ACQUIRES).
    const f0 = this.availFlags(L, PLAIN_ACQ);
    if (f0 < 0) return 0;
    const pos = L >= S ? L - S : L;
    if ((f0 & (F_NEXT | F_INDIRECT | F_WRITE)) !== (out.write ? F_WRITE : 0)) return -1;
    const d = this.desc;
    const wi = pos << 2;
    const len = d[wi + 2]!;
    const hi = d[wi + 1]!;
    if (len === 0 || hi >= HI_LIMIT) return -1;
    const id = d[wi + 3]! & 0xffff;
    const U = this.usedL;
    const inFlight = L >= U ? L - U : L + this.twoSize - U;
    if (inFlight >= S || id >= this.idCount.length || this.idCount[id] !== 0) return -1;
    const addr = hi * TWO_32 + d[wi]!;
    const r = this.resolveDirect(out, addr, len, id);
    if (r !== 1) return r;
    const slot = this.histTop;
    this.histId[slot] = id;
    this.histCount[slot] = 1;
    this.histTop = slot + 1 === S ? 0 : slot + 1;
    if (this.histLen < S) this.histLen++;
    this.idCount[id] = 1;
    this.idSlot[id] = slot;
    this.availL = L + 1 === this.twoSize ? 0 : L + 1;
    if (this.ahead > 0) this.ahead--;
    this.outstanding++;
    this.stats.popped++;
    this.stats.poppedDirect++;
    return 1;
  }

  /**
   * Virtqueue.popBurst: popDirect's checks and bookkeeping over a run of positions, with the ring
   * state in locals (one acquire per descriptor as there: the driver may make each list available
   * on its own, 2.8.21.1). Stops, consuming nothing more, before the first position popDirect would
   * not take and before a buffer in another region than the first.
   */
  override popBurst(out: DirectBurst, max: number): number {
    out.count = 0;
    if (this.broken !== null || !this.ringsMapped || this.inflightRegion !== null) return 0;
    const S = this.size;
    const twoS = this.twoSize;
    const d = this.desc;
    const idCount = this.idCount;
    const idSlot = this.idSlot;
    const histId = this.histId;
    const histCount = this.histCount;
    const idLimit = idCount.length;
    const write = out.write;
    const want = write ? F_WRITE : 0;
    const oOff = out.offset;
    const oLen = out.byteLen;
    const oId = out.id;
    // The region of the run: buffers inside it are bounds-checked here, not translated one by one.
    const win = this.win;
    const U = this.usedL;
    let L = this.availL;
    let inFlight = L >= U ? L - U : L + twoS - U;
    {
      // The run's region, from its first buffer: looked up before the loop so that the loop makes
      // no call (V8 then keeps the arrays' checks out of it). The loop checks that buffer again.
      const pos = L >= S ? L - S : L;
      const f = (PLAIN_ACQ ? d[(pos << 2) + 3]! : Atomics.load(d, (pos << 2) + 3)) >>> 16;
      const w = L >= S ? 0 : 1;
      if (((f >>> 7) & 1) !== w || ((f >>> 15) & 1) === w || (f & (F_NEXT | F_INDIRECT | F_WRITE)) !== want) return 0;
      const len = d[(pos << 2) + 2]!;
      const hi = d[(pos << 2) + 1]!;
      if (len === 0 || hi >= HI_LIMIT || !this.lookupWindow(hi * TWO_32 + d[pos << 2]!, len, write, win)) return 0;
    }
    const wlo = win.lo;
    const whi = win.hi;
    const wbase = win.base;
    const wbytes = win.bytes;
    let top = this.histTop;
    const lim = max < BURST_MAX ? max : BURST_MAX;
    let n = 0;
    while (n < lim && inFlight < S) {
      const w = L >= S ? 0 : 1;
      const pos = L >= S ? L - S : L;
      // Flags and id are one little-endian word (flags in the high half): one load, the acquire of
      // the list (D36), before the descriptor's other words are read.
      const wi = pos << 2;
      const idf = PLAIN_ACQ ? d[wi + 3]! : Atomics.load(d, wi + 3);
      const f = idf >>> 16;
      if (((f >>> 7) & 1) !== w || ((f >>> 15) & 1) === w) break;
      if ((f & (F_NEXT | F_INDIRECT | F_WRITE)) !== want) break;
      const len = d[wi + 2]!;
      const hi = d[wi + 1]!;
      if (len === 0 || hi >= HI_LIMIT) break;
      const id = idf & 0xffff;
      if (id >= idLimit || idCount[id] !== 0) break;
      const addr = hi * TWO_32 + d[wi]!;
      // A buffer not whole in the run's region ends the run (the next run starts with it).
      if (!(addr >= wlo && addr + len <= whi)) break;
      oOff[n] = addr - wbase;
      oLen[n] = len;
      oId[n] = id;
      histId[top] = id;
      histCount[top] = 1;
      idCount[id] = 1;
      idSlot[id] = top;
      top = top + 1 === S ? 0 : top + 1;
      L = L + 1 === twoS ? 0 : L + 1;
      inFlight++;
      n++;
    }
    if (n === 0) return 0;
    out.bytes = wbytes;
    out.addrBase = wbase;
    this.histTop = top;
    this.histLen = this.histLen + n < S ? this.histLen + n : S;
    this.availL = L;
    this.ahead = this.ahead > n ? this.ahead - n : 0;
    this.outstanding += n;
    this.stats.popped += n;
    this.stats.poppedDirect += n;
    out.count = n;
    return n;
  }

  /**
   * popBurst's region lookup for a buffer [addr, addr + len): the memory's window when it has one,
   * else a translation that must cover the whole buffer (then the window is just the buffer). False
   * when the buffer is not whole in one region (pop() judges it) or on a translation fault (handled
   * as pop() does: an IOTLB miss parks the queue).
   */
  private lookupWindow(addr: number, len: number, write: boolean, win: MemWindow): boolean {
    const mem = this.mem;
    if (mem.window !== undefined) return mem.window(addr, write, win) && addr + len <= win.hi;
    const sp = this.span;
    if (this.translateWhole(addr, len, write, sp) !== 1) return false;
    win.bytes = sp.bytes;
    win.lo = addr;
    win.hi = addr + len;
    win.base = addr - sp.offset;
    return true;
  }

  /**
   * Virtqueue.pushUsedBurst: pushUsed for entries [0, n), each a list of one descriptor (popBurst),
   * with the ring state in locals: the loop writes putUsed's element inline (id and flags of all but
   * the first in one store), so both must keep the same layout. Same ordering as pushUsed: the first
   * pending element's flags wait for flushUsed.
   */
  override pushUsedBurst(b: DirectBurst, n: number): void {
    if (!this.ringsMapped || n === 0) return;
    if (this.pending + n > this.size) this.flushEarly();
    if (this.inflightRegion !== null || n > this.size) return super.pushUsedBurst(b, n);
    const tbl = this.idCount;
    const S = this.size;
    const twoS = this.twoSize;
    const d = this.desc;
    const u16 = this.descU16;
    const ids = b.id;
    const lens = b.usedLen;
    const histCount = this.histCount;
    const idSlot = this.idSlot;
    const pendPos = this.pendPos;
    let L = this.shadowUsedL;
    let p = this.pending;
    // IN_ORDER: a burst of zero-length completions (TX) is one used element (D38).
    if (this.inOrder && n > 1 && this.outstanding === n && this.pushBatch(b, n)) return;
    let k = 0;
    for (; k < n; k++) {
      const head = ids[k]!;
      // A device bug: the entries before it are pushed (as pushUsed one by one would), then it throws.
      if (tbl[head] !== 1) break;
      tbl[head] = 0;
      histCount[idSlot[head]!] = 0;
      let pos = L;
      let flags = F_AVAIL_USED;
      if (L >= S) {
        pos = L - S;
        flags = 0;
      }
      const len = lens[k]!;
      if (len !== 0) flags |= F_WRITE;
      d[(pos << 2) + 2] = len;
      if (p === 0) {
        // The first element's flags wait for flushUsed (it exposes the batch).
        const fi = (pos << 3) + 7;
        u16[fi - 1] = head;
        this.firstFlagsAt = fi;
        this.firstFlags = flags;
      } else d[(pos << 2) + 3] = head | (flags << 16); // id and flags in one store, after len
      pendPos[p++] = pos;
      L = L + 1 === twoS ? 0 : L + 1;
    }
    this.pending = p;
    this.shadowUsedL = L;
    this.outstanding -= k;
    this.stats.pushed += k;
    if (k < n) throw new RangeError(`pushUsedBurst: buffer id ${ids[k]} is not in flight as one descriptor`);
  }

  /**
   * IN_ORDER (virtio v1.2 2.8.23): n zero-length completions of one-descriptor lists, the only ones in
   * flight, as ONE used element carrying the last id; the used position skips all n. False (nothing
   * done) unless every length is 0 and every id is in flight as one descriptor.
   */
  private pushBatch(b: DirectBurst, n: number): boolean {
    const tbl = this.idCount;
    const ids = b.id;
    const lens = b.usedLen;
    for (let k = 0; k < n; k++) if (lens[k] !== 0 || tbl[ids[k]!] !== 1) return false;
    if (this.pending >= this.size) this.flushEarly();
    const histCount = this.histCount;
    const idSlot = this.idSlot;
    for (let k = 0; k < n; k++) {
      const head = ids[k]!;
      tbl[head] = 0;
      histCount[idSlot[head]!] = 0;
    }
    this.putUsed(ids[n - 1]!, 0, n);
    this.outstanding -= n;
    this.stats.pushed += n;
    return true;
  }

  /**
   * Writes the used element {id, len} at the used position (the first pending element's flags wait
   * for flushUsed: it exposes the whole batch) and moves the position on by `skip` descriptors.
   */
  private putUsed(id: number, len: number, skip: number): void {
    const S = this.size;
    const L = this.shadowUsedL;
    let pos = L;
    let flags = F_AVAIL_USED;
    if (L >= S) {
      pos = L - S;
      flags = 0;
    }
    if (len !== 0) flags |= F_WRITE;
    this.desc[(pos << 2) + 2] = len;
    const fi = (pos << 3) + 7;
    this.descU16[fi - 1] = id;
    if (this.pending === 0) {
      this.firstFlagsAt = fi;
      this.firstFlags = flags;
    } else this.descU16[fi] = flags;
    this.pendPos[this.pending++] = pos;
    let next = L + skip;
    if (next >= this.twoSize) next -= this.twoSize;
    this.shadowUsedL = next;
  }

  private growIdTables(): void {
    const c = new Uint16Array(65536);
    const s = new Uint16Array(65536);
    c.set(this.idCount);
    s.set(this.idSlot);
    this.idCount = c;
    this.idSlot = s;
    if (this.idEntry.length !== 0) {
      // Allocated with the region (attachInflight); popTracked detaches the region while it pops.
      const e = new Uint16Array(65536);
      e.set(this.idEntry);
      this.idEntry = e;
    }
  }

  /**
   * Resolves the list starting at position `pos` of descriptor ring `d` (`S` descriptors as u32
   * words: the queue's ring, or a resubmitted list's saved copy) with first flags `f0` (already
   * acquired) into `chain`; returns the ring descriptors it took, 0 on error (errCode / errMessage set).
   */
  private walk(chain: Chain, d: Uint32Array, S: number, pos: number, f0: number): number {
    chain.reset();
    chain.mem = this.mem;
    const mem = this.mem;
    const span = this.span;
    let flags = f0;
    let sawWrite = false;
    let n = 0;
    for (;;) {
      if (n === S) {
        this.fail('VQ_LOOP', `descriptor list longer than the ring (${S}): NEXT never ends`);
        return 0;
      }
      const wi = pos << 2;
      const lo = d[wi]!;
      const hi = d[wi + 1]!;
      const len = d[wi + 2]!;
      const idf = d[wi + 3]!;
      if (n !== 0) flags = idf >>> 16;
      n++;
      chain.head = idf & 0xffff;
      const addr = hi >= HI_LIMIT ? -1 : hi * TWO_32 + lo;
      if ((flags & F_INDIRECT) !== 0) {
        if (!this.indirect) {
          this.fail('VQ_INDIRECT_NOT_NEGOTIATED', `position ${pos}: INDIRECT without VIRTIO_F_INDIRECT_DESC`);
          return 0;
        }
        if (n !== 1 || (flags & F_NEXT) !== 0) {
          this.fail('VQ_BAD_INDIRECT', `position ${pos}: INDIRECT in a NEXT-linked list (virtio v1.2 2.8.19)`);
          return 0;
        }
        if (!this.walkIndirect(chain, addr, len, pos)) return 0;
        chain.descCount = 1;
        return 1;
      }
      const write = (flags & F_WRITE) !== 0;
      if (write) sawWrite = true;
      else if (sawWrite) {
        this.fail('VQ_WRITE_BEFORE_READ', `position ${pos}: readable descriptor after a writable one`);
        return 0;
      }
      const err = appendBuf(chain, mem, addr, len, write, span);
      if (err !== null) {
        this.fail(err, bufferMessage(err, `position ${pos}`, 'list', lo, hi, len, write));
        return 0;
      }
      if ((flags & F_NEXT) === 0) {
        chain.descCount = n;
        return n;
      }
      pos = pos + 1 === S ? 0 : pos + 1;
    }
  }

  /** The table of an INDIRECT descriptor at position `at` (IndirectTable.walk: 2.8.7, entries in order). */
  private walkIndirect(chain: Chain, tableAddr: number, tableLen: number, at: number): boolean {
    const t = this.table;
    return t.walk(chain, this.mem, tableAddr, tableLen, false, at, TABLE_PACKED) || this.fail(t.errCode!, t.errMessage);
  }

  /**
   * Gives back the last n popped chains (they will be popped again, e.g. mergeable RX short of
   * buffers): rewinds the avail position AND its wrap counter by their descriptor counts. Throws
   * RangeError when one of them was pushed already or fewer were popped (device bugs).
   */
  unpop(n = 1): void {
    if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`unpop(${n})`);
    if (n > this.histLen) throw new RangeError(`unpop(${n}): only ${this.outstanding} chains are outstanding`);
    const S = this.size;
    let h = this.histTop;
    let total = 0;
    for (let k = 0; k < n; k++) {
      h = h === 0 ? S - 1 : h - 1;
      const c = this.histCount[h]!;
      if (c === 0) throw new RangeError(`unpop(${n}): chain ${k + 1} from the top (id ${this.histId[h]}) was already pushed`);
      total += c;
    }
    const r = this.inflightRegion;
    h = this.histTop;
    for (let k = 0; k < n; k++) {
      h = h === 0 ? S - 1 : h - 1;
      const id = this.histId[h]!;
      if (r !== null) {
        if (this.histResub[h] === 1) {
          // Back on the resubmit list: it was never counted in the ring position.
          this.histResub[h] = 0;
          this.resubmitPos--;
          this.resubmitOff -= this.histCount[h]!;
          total -= this.histCount[h]!;
        } else r.onUnpop(this.idEntry[id]!);
      }
      this.idCount[id] = 0;
      this.histCount[h] = 0;
    }
    this.histTop = h;
    this.histLen -= n;
    let L = this.availL - total;
    if (L < 0) L += this.twoSize;
    this.availL = L;
    this.ahead += total;
    this.outstanding -= n;
    this.stats.popped -= n;
  }

  /**
   * Records a completed chain: a used element {id, len} at the next used position, which then moves
   * by the descriptors that id took. Not visible to the driver until flushUsed(). Allowed on a broken
   * queue (chains completed before the error still reach the driver); ignored once the rings are
   * unmapped. Throws RangeError for an id that is not in flight (a device bug).
   */
  pushUsed(head: number, byteLen: number): void {
    if (!this.ringsMapped) return;
    // pendPos holds `size` positions: a full batch is published first (never an exception a guest provokes).
    if (this.pending >= this.size) this.flushEarly();
    const tbl = this.idCount;
    const cnt = head >= 0 && head < tbl.length ? tbl[head]! : 0;
    if (cnt === 0 || !Number.isInteger(head)) throw new RangeError(`pushUsed: buffer id ${head} is not in flight`);
    if (this.inflightRegion !== null) {
      const e = this.idEntry[head]!;
      this.inflightRegion.beginUsed(e);
      this.pendEntry[this.pending] = e;
    }
    tbl[head] = 0;
    this.histCount[this.idSlot[head]!] = 0;
    this.putUsed(head, byteLen >= 0xffffffff ? 0xffffffff : byteLen >>> 0, cnt);
    this.outstanding--;
    this.stats.pushed++;
  }

  /**
   * Publishes everything pushed since the last flush (the first element's flags, release) and says
   * whether the driver must be notified (driver event suppression, 2.8.10). Each true must be acted
   * on (the next flush only considers its own range).
   */
  /** Publishes now what is pending (a full batch); its notification is owed to the next flushUsed. */
  private flushEarly(): void {
    if (this.flushUsed()) this.notifyOwed = true;
  }

  /** An owed notification (flushEarly), taken once. */
  private takeOwed(): boolean {
    if (!this.notifyOwed) return false;
    this.notifyOwed = false;
    return true;
  }

  flushUsed(): boolean {
    const n = this.pending;
    if (n === 0 || !this.ringsMapped) return this.takeOwed();
    Atomics.store(this.descU16, this.firstFlagsAt, this.firstFlags);
    // Inflight: the batch is committed only once it is published (a crash in between is recovered).
    if (this.inflightRegion !== null) this.inflightRegion.commitUsed(this.pendEntry, n);
    const old = this.usedL;
    const next = this.shadowUsedL;
    this.usedL = next;
    this.pending = 0;
    this.stats.flushes++;
    const hook = this.mem.onWrite;
    if (hook !== undefined) {
      for (let i = 0; i < n; i++) hook.call(this.mem, this.descGpa + this.pendPos[i]! * DESC_SZ + 8, 8);
    }
    // Store-load: the driver area is read after the flags store is visible (Atomics are seq-cst).
    const ev = Atomics.load(this.drvEvt, 1) & 3;
    let notify: boolean;
    if (ev === EV_DESC && this.eventIdx) {
      const ow = Atomics.load(this.drvEvt, 0);
      const twoS = this.twoSize;
      let e = (ow & 0x7fff) + ((ow & 0x8000) !== 0 ? 0 : this.size);
      if (e >= twoS) e %= twoS; // off >= size: a driver bug; any answer is as good
      const span = next > old ? next - old : next + twoS - old;
      const dist = e >= old ? e - old : e + twoS - old;
      notify = dist < span;
    } else notify = ev !== EV_DISABLE;
    if (notify) this.stats.notifies++;
    else this.stats.suppressed++;
    return notify || this.takeOwed();
  }

  /** Asks the driver not to send available-buffer notifications: device area flags := DISABLE. */
  disableNotification(): void {
    if (this.broken !== null || !this.ringsMapped) return;
    this.notifyOn = false;
    if (this.devFlags !== EV_DISABLE) {
      this.devFlags = EV_DISABLE;
      Atomics.store(this.devEvt, 1, EV_DISABLE);
      this.logWrite(this.usedLogGpa + 2, 2);
    }
  }

  /**
   * Asks the driver to notify again, then re-checks the first descriptor not yet seen: true when it
   * is available (it may have been made available before the driver could see our request, and no
   * notification will come for it, so the caller must process it).
   *
   * With EVENT_IDX: off_wrap := that first unseen position with its wrap counter (it equals the
   * avail position when the ring was drained; after unpop it is further on, so given-back lists are
   * not reported again), stored before flags := DESC.
   */
  enableNotification(): boolean {
    if (this.broken !== null || !this.ringsMapped) return false;
    this.notifyOn = true;
    let seen = this.availL + this.ahead;
    if (seen >= this.twoSize) seen -= this.twoSize;
    if (this.eventIdx) {
      const S = this.size;
      const ow = seen < S ? seen | 0x8000 : seen - S;
      if (this.devOffWrap !== ow) {
        this.devOffWrap = ow;
        Atomics.store(this.devEvt, 0, ow);
        this.logWrite(this.usedLogGpa, 2);
      }
      if (this.devFlags !== EV_DESC) {
        this.devFlags = EV_DESC;
        Atomics.store(this.devEvt, 1, EV_DESC);
        this.logWrite(this.usedLogGpa + 2, 2);
      }
    } else if (this.devFlags !== EV_ENABLE) {
      this.devFlags = EV_ENABLE;
      Atomics.store(this.devEvt, 1, EV_ENABLE);
      this.logWrite(this.usedLogGpa + 2, 2);
    }
    // Store-load fence: the seq-cst store above (or an earlier one) is visible before this load.
    return this.availFlags(seen, false) >= 0;
  }


  // ---- inflight tracking -------------------------------------------------------------------------

  /** The attached inflight region, or null. */
  get inflight(): PackedInflight | null {
    return this.inflightRegion;
  }
  /** Resubmitted lists pop() has still to hand out. */
  get resubmitPending(): number {
    return this.recovery === null ? 0 : this.recovery.entries.length - this.resubmitPos;
  }

  /**
   * Attaches this queue's inflight region (SET_INFLIGHT_FD, before the ring runs: nothing popped or
   * pushed yet). A blank region (version 0) is initialized with the queue's used position; a region
   * in use is recovered (PackedInflight.recover, which reads the ring flags at its old used position):
   * the used position becomes the region's, the next position to read that plus the descriptors
   * still in flight, and those lists are resubmitted. Throws VirtqError (VQ_INFLIGHT_REGION /
   * VQ_INFLIGHT_CORRUPT) and leaves the queue untouched when the region is unusable; RangeError when
   * called at the wrong time (host bug).
   */
  protected get queueSize(): number {
    return this.size;
  }

  attachInflight(region: InflightRegion): InflightAttachResult {
    this.checkInflightAttach(region, 'packed', this.inflightRegion !== null, this.outstanding !== 0 || this.pending !== 0);
    if (!(region instanceof PackedInflight)) throw new VirtqError('VQ_INFLIGHT_REGION', `${this.label}: not a packed region`);
    const S = this.size;
    const fresh = region.isFresh;
    let rec: PackedRecovery | null = null;
    if (fresh) region.init({ usedIdx: this.usedIdx, usedWrap: this.usedWrapCounter });
    else {
      const ring = this.descU16;
      rec = region.recover((pos) => Atomics.load(ring, (pos << 3) + 7));
      this.usedL = rec.usedIdx + (rec.usedWrap ? 0 : S);
      this.shadowUsedL = this.usedL;
      let a = this.usedL + rec.descTotal;
      if (a >= this.twoSize) a -= this.twoSize;
      this.availL = a;
      this.ahead = 0;
      this.histTop = 0;
      this.histLen = 0;
      this.histCount.fill(0);
    }
    this.recovery = rec;
    this.resubmitPos = 0;
    this.resubmitOff = 0;
    this.idEntry = new Uint16Array(this.idCount.length);
    this.pendEntry = new Uint16Array(S);
    this.histResub = new Uint8Array(S);
    this.inflightRegion = region;
    return { fresh, resubmitted: rec === null ? 0 : rec.entries.length };
  }

  /** pop() with a region: resubmitted lists first (their saved copies), then the ring, recording the pop. */
  private popTracked(chain: Chain): boolean {
    const r = this.inflightRegion!;
    const rec = this.recovery;
    if (rec !== null && this.resubmitPos < rec.entries.length) return this.popResubmit(chain, rec);
    const L = this.availL;
    // The untracked path does the ring work; detached meanwhile so it does not come back here.
    this.inflightRegion = null;
    let ok: boolean;
    try {
      ok = this.pop(chain);
    } finally {
      this.inflightRegion = r;
    }
    if (!ok) return false;
    const S = this.size;
    const n = chain.descCount;
    const e = r.onPop(this.desc, L < S ? L : L - S, n, S);
    if (e < 0) {
      this.markBroken('VQ_INFLIGHT_CORRUPT', `inflight region has no free entry for ${n} descriptors`);
      return false;
    }
    this.idEntry[chain.head] = e;
    this.histResub[this.histTop === 0 ? S - 1 : this.histTop - 1] = 0;
    return true;
  }

  private popResubmit(chain: Chain, rec: PackedRecovery): boolean {
    const k = this.resubmitPos;
    const e = rec.entries[k]!;
    const num = rec.descCounts[k]!;
    const off = this.resubmitOff;
    const d = rec.descs.subarray(off << 2, (off + num) << 2);
    let n: number;
    try {
      n = this.walk(chain, d, num, 0, d[3]! >>> 16);
    } catch (e) {
      return this.walkFault(e);
    }
    if (n === 0) {
      this.markBroken(this.errCode!, `resubmitted inflight entry ${e}: ${this.errMessage}`);
      return false;
    }
    if (n !== num) {
      this.markBroken('VQ_INFLIGHT_CORRUPT', `resubmitted inflight entry ${e}: ${n} descriptors walked, ${num} saved`);
      return false;
    }
    const id = chain.head;
    if (id >= this.idCount.length) this.growIdTables();
    if (this.idCount[id] !== 0) {
      this.markBroken('VQ_BAD_ID', `resubmitted inflight entry ${e}: buffer id ${id} is already in flight`);
      return false;
    }
    const S = this.size;
    const slot = this.histTop;
    this.histId[slot] = id;
    this.histCount[slot] = n;
    this.histResub[slot] = 1;
    this.histTop = slot + 1 === S ? 0 : slot + 1;
    if (this.histLen < S) this.histLen++;
    this.idCount[id] = n;
    this.idSlot[id] = slot;
    this.idEntry[id] = e;
    this.resubmitPos = k + 1;
    this.resubmitOff = off + num;
    this.outstanding++;
    this.stats.popped++;
    return true;
  }
}

