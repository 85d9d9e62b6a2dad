/**
 * Split virtqueue, device side (virtio v1.2 2.7). The queue is indices + ring views over a
 * GuestMemory; it never allocates per chain and never throws for guest-caused errors: a bad ring
 * marks the queue `broken` (sticky, first error wins), `pop()` returns false from then on, and the
 * caller reports it (vhost-user SET_VRING_ERR eventfd). Other queues are unaffected (decisions.md D13).
 *
 * Ring views: the three rings must each lie in ONE memory region and be naturally aligned in the
 * host mapping too (desc 16 / avail 2 / used 4 in gpa; 4 / 2 / 4 in the host view), so they are
 * plain typed arrays: desc as Uint32Array (4 words per descriptor; flags|next is one word, LE),
 * avail as Uint16Array, used as Uint16Array (flags, idx, avail_event) + Uint32Array (elements).
 * Only little-endian hosts are supported (virtio 1.x rings are little-endian).
 *
 * Legacy big-endian rings (`bigEndian`, vhost-user.rst SET_VRING_ENDIAN with CROSS_ENDIAN: a
 * pre-VERSION_1 device driven by a big-endian guest has every ring field in the guest's byte order):
 * `new SplitQueue({ bigEndian: true, ... })` returns a SplitQueueBE, whose methods swap every value
 * read from or written to the rings (descriptors and indirect tables through SplitChainWalkerBE).
 * The accesses themselves are unchanged (same views, same Atomics: the value is swapped, not the
 * access) and so are all checks. A subclass chosen at construction keeps the little-endian methods
 * exactly as they are: no per-field branch on the hot path.
 *
 * Memory ordering (the guest runs concurrently on other CPUs):
 * - avail.idx is read with `Atomics.load` (acquire) before any ring entry / descriptor it covers.
 * - used elements are plain stores into slots the driver does not own yet; used.idx is published
 *   once per batch with `Atomics.store` (release): elements are visible before the index that
 *   exposes them (2.7.8.2: "The device MUST set len prior to updating the used idx").
 * - Store-load fences: after publishing used.idx we read used_event / avail.flags, and after writing
 *   avail_event / used.flags we re-read avail.idx (the device-side race of 2.7.10). Both need the
 *   store to be globally visible before the load; we rely on `Atomics.store` being sequentially
 *   consistent (V8 emits xchg on x64, stlr on arm64; stlr+ldar are ordered on arm64).
 *   V8 applies the same lowering to non-shared buffers (our mmaps are external ArrayBuffers, not
 *   SharedArrayBuffers); see model-codebases.md section 10 (open point to re-verify per Node major).
 *
 * Used ring batching: like DPDK's shadow used ring, `pushUsed` only fills the element slot (a slot
 * the driver will not read before used.idx moves) and advances a private shadow index; `flushUsed`
 * publishes used.idx once and computes whether the driver must be notified. We write elements in
 * place instead of keeping a host-side copy: same single publication, no extra copy.
 *
 * Inflight tracking (vhost-user.rst "Inflight I/O tracking", inflight.ts): with a region attached
 * (`attachInflight`), pop marks the head in flight, pushUsed links it into the batch list, flushUsed
 * publishes used.idx and then clears the batch (the spec's order), unpop clears what it gives back.
 * Attaching a region that holds work from before a restart resubmits it: pop() returns those heads,
 * oldest first, through the same chain walker, before reading the available ring, whose position
 * becomes used.idx + their number (libvhost-user vu_check_queue_inflights). Without a region each
 * operation pays one null check.
 *
 * Dirty log: writes to the used ring are reported at `usedLogAddr` + offset when the session gives
 * it (SET_VRING_ADDR log_guest_addr with VHOST_VRING_F_LOG: vhost-user.rst "Migration", "the write
 * to first byte of the used ring is logged at this offset from log start"), at the ring's own gpa
 * otherwise.
 */
import type { GuestMemory } from './memory.ts';
import { ringU16, ringU32 } from './memory.ts';
import { Chain } from './chain.ts';
import { SplitChainWalker, SplitChainWalkerBE } from './walk.ts';
import {
  AVAIL_ALIGN,
  DESC_ALIGN,
  MAX_SPLIT_QUEUE_SIZE,
  USED_ALIGN,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  bswap16,
  bswap32,
  descTableBytes,
  needEvent,
  usedRingBytes,
} from './defs.ts';
import type { VirtqErrorCode } from './errors.ts';
import { VirtqError, hexAddr } from './errors.ts';
import type { InflightAttachResult, InflightRegion } from './inflight.ts';
import { SplitInflight } from './inflight.ts';
import type { DirectBuffer, Virtqueue, VirtqueueStats } from './queue.ts';
import { QueueCore } from './queue-core.ts';


// Module-local copies of imported bindings used per operation (tsx's CJS output turns imports
// into getter calls).
const AVAIL_F_NO_INTERRUPT = VIRTQ_AVAIL_F_NO_INTERRUPT;
const USED_F_NO_NOTIFY = VIRTQ_USED_F_NO_NOTIFY;
const vringNeedEvent = needEvent;
const swap16 = bswap16;
const swap32 = bswap32;
/** Descriptor flags (virtio v1.2 2.7.5). */
const DESC_F_WRITE = 2;
const TWO_32 = 2 ** 32;
/** hi halves >= this make a 64-bit address >= 2^53 (memory.ts joinAddr). */
const HI_LIMIT = 2 ** 21;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([0x0102]).buffer)[0] === 0x02;

export interface SplitQueueConfig {
  /** Queue size: power of two, 1..32768 (SET_VRING_NUM). */
  size: number;
  /** Guest-physical addresses of the three rings (already translated from uva, SET_VRING_ADDR). */
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
  /** Next avail index to read (SET_VRING_BASE); default 0. */
  lastAvailIdx?: number;
  /** Next used index to write; default: the ring's current used.idx (what the driver has seen). */
  usedIdx?: number;
  /**
   * Guest address at which used ring writes are reported to the dirty log (SET_VRING_ADDR
   * log_guest_addr, when VHOST_VRING_F_LOG is set); default: usedAddr.
   */
  usedLogAddr?: number;
  /**
   * Legacy big-endian ring (vhost-user.rst SET_VRING_ENDIAN num 1): every ring field is big-endian.
   * Only for legacy devices (no VIRTIO_F_VERSION_1; virtio 1.x rings are little-endian), which the
   * session checks. Default false.
   */
  bigEndian?: boolean;
  /** For log lines. */
  label?: string;
}

const NO_HEADS: Uint16Array = new Uint16Array(0);
/** Split pop history flag: the chain came from the resubmit list, not the available ring. */
const HIST_RESUBMIT = 0x10000;

/** Kept as the split-specific name; same shape as every queue's stats. */
export type SplitQueueStats = VirtqueueStats;
export type { DrainResult, ChainHandler } from './queue.ts';

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function checkIdx(v: number | undefined, what: string): void {
  if (v !== undefined && !(Number.isInteger(v) && v >= 0 && v <= 0xffff)) {
    throw new RangeError(`${what} ${v} is not a 16-bit index`);
  }
}

export class SplitQueue extends QueueCore implements Virtqueue {
  readonly size: number;
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  /** Where used ring writes are logged (usedLogAddr, or usedGpa). */
  readonly usedLogGpa: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** Ring fields are big-endian (SplitQueueConfig.bigEndian; the instance is then a SplitQueueBE). */
  readonly bigEndian: boolean;
  readonly label: string;
  /** Sticky guest error; null while the queue is healthy. */
  readonly stats: SplitQueueStats = { popped: 0, poppedDirect: 0, pushed: 0, flushes: 0, notifies: 0, suppressed: 0 };

  private desc!: Uint32Array;
  protected avail!: Uint16Array;
  protected usedU16!: Uint16Array;
  protected usedU32!: Uint32Array;
  protected readonly walker: SplitChainWalker;
  protected readonly mask: number;
  /** u16 index of used_event in the avail ring / avail_event in the used ring. */
  protected readonly usedEventAt: number;
  protected readonly availEventAt: number;

  protected lastAvail: number;
  /** avail.idx as last read (acquire); pop() re-reads it only when it has consumed up to here. */
  protected seenAvail: number;
  /** Published used.idx. */
  protected used: number;
  /**
   * A notification decided by a flush pushUsed made on its own (more than `size` elements pending: a
   * driver that made buffers available again while we drained), owed to the next flushUsed's answer.
   */
  protected notifyOwed = false;
  /** Next used slot (published + pending). */
  protected shadowUsed: number;
  protected pending = 0;
  /** Chains popped and neither pushed nor given back: the most unpop() may rewind. */
  protected outstanding = 0;
  /** What we last wrote to used.flags / avail_event (-1: not written by us), to skip redundant writes. */
  protected usedFlags = -1;
  protected availEvent = -1;
  protected notifyOn = true;

  // Inflight tracking (null / empty without a region).
  protected inflightRegion: SplitInflight | null = null;
  /** Heads to hand out again, in counter order, and how many were handed out. */
  protected resubmit: Uint16Array = NO_HEADS;
  protected resubmitPos = 0;
  /** Heads pushed since the last flush (the batch commitUsed clears). */
  protected pendHeads: Uint16Array = NO_HEADS;
  /** Pop history for unpop: head | HIST_RESUBMIT, a ring of `size`. */
  private hist: Uint32Array = new Uint32Array(0);
  private histTop = 0;
  private histLen = 0;

  /** Validates the layout and maps the rings; throws VirtqError (VQ_BAD_SIZE, VQ_RING_LAYOUT, VQ_UNMAPPED). */
  constructor(cfg: SplitQueueConfig, mem: GuestMemory) {
    super(mem);
    if (!LITTLE_ENDIAN) throw new Error('virtqueue engine needs a little-endian host');
    const { size } = cfg;
    if (!isPow2(size) || size > MAX_SPLIT_QUEUE_SIZE) {
      throw new VirtqError('VQ_BAD_SIZE', `queue size ${size} is not a power of two in 1..${MAX_SPLIT_QUEUE_SIZE}`);
    }
    const addrs: [number, number, string][] = [
      [cfg.descAddr, DESC_ALIGN, 'descriptor table'],
      [cfg.availAddr, AVAIL_ALIGN, 'available ring'],
      [cfg.usedAddr, USED_ALIGN, 'used ring'],
    ];
    for (const [a, align, what] of addrs) {
      if (!Number.isSafeInteger(a) || a < 0) throw new VirtqError('VQ_UNMAPPED', `${what} address ${a} is invalid`);
      if (a % align !== 0) {
        throw new VirtqError('VQ_RING_LAYOUT', `${what} at ${hexAddr(a)} is not ${align}-byte aligned (virtio v1.2 2.7)`);
      }
    }
    checkIdx(cfg.lastAvailIdx, 'lastAvailIdx');
    checkIdx(cfg.usedIdx, 'usedIdx');
    const logAt = cfg.usedLogAddr ?? cfg.usedAddr;
    if (!Number.isSafeInteger(logAt) || logAt < 0) {
      throw new VirtqError('VQ_RING_LAYOUT', `used ring log address ${logAt} is invalid`);
    }
    this.usedLogGpa = logAt;
    this.size = size;
    this.mask = size - 1;
    this.descGpa = cfg.descAddr;
    this.availGpa = cfg.availAddr;
    this.usedGpa = cfg.usedAddr;
    this.eventIdx = cfg.eventIdx;
    this.indirect = cfg.indirect;
    this.bigEndian = cfg.bigEndian === true;
    this.label = cfg.label ?? `vq@${hexAddr(cfg.descAddr)}`;
    this.usedEventAt = 2 + size;
    this.availEventAt = 2 + 4 * size;
    this.mapRings(mem);
    this.walker = this.bigEndian
      ? new SplitChainWalkerBE(mem, this.desc, size, cfg.indirect)
      : new SplitChainWalker(mem, this.desc, size, cfg.indirect);
    this.lastAvail = cfg.lastAvailIdx ?? 0;
    this.seenAvail = this.lastAvail;
    this.used = cfg.usedIdx ?? this.loadRingU16(this.usedU16, 1);
    this.shadowUsed = this.used;
    // A big-endian ring is served by the subclass (its own methods): hand that out instead. Done
    // last, after the same validation, so every field is assigned on both paths (rings start rarely).
    if (this.bigEndian && new.target === SplitQueue) return new SplitQueueBE(cfg, mem);
  }

  /** Maps all three rings first, then swaps them in: a failure leaves the previous views untouched. */
  protected mapRings(mem: GuestMemory): void {
    const n = this.size;
    const desc = ringU32(mem, this.descGpa, descTableBytes(n), false);
    const avail = ringU16(mem, this.availGpa, availRingBytes(n), false);
    const usedU16 = ringU16(mem, this.usedGpa, usedRingBytes(n), true);
    // Elements only (header word + 2 words per element); avail_event goes through usedU16.
    const usedU32 = ringU32(mem, this.usedGpa, 4 + 8 * n, true);
    this.desc = desc;
    this.avail = avail;
    this.usedU16 = usedU16;
    this.usedU32 = usedU32;
  }


  protected override remapped(): void {
    this.walker.rebind(this.mem, this.desc);
  }

  /** A ring u16 in host order, atomically (acquire). Off the hot path only (construction, attach). */
  protected loadRingU16(view: Uint16Array, i: number): number {
    const v = Atomics.load(view, i);
    return this.bigEndian ? swap16(v) : v;
  }

  /** Next avail index the device will read: the value GET_VRING_BASE returns. */
  get lastAvailIdx(): number {
    return this.lastAvail;
  }
  /** used.idx as published (pending pushUsed entries not included; flushUsed() first). */
  get usedIdx(): number {
    return this.used;
  }
  /** Used elements pushed but not yet published. */
  get pendingUsed(): number {
    return this.pending;
  }
  /** avail.idx as last read. */
  get seenAvailIdx(): number {
    return this.seenAvail;
  }
  get notificationsEnabled(): boolean {
    return this.notifyOn;
  }


  /**
   * Chains the driver has made available and we have not popped: avail.idx - last_avail_idx.
   * A distance above the queue size cannot come from a correct driver (2.7.6: idx only grows, by at
   * most the number of free descriptors): the queue is marked broken (VQ_AVAIL_JUMP) and 0 returned.
   */
  hasAvailable(): boolean {
    if (this.inflightRegion !== null && this.broken === null && this.resubmitPos < this.resubmit.length) return true;
    return this.availableCount() > 0;
  }

  availableCount(): number {
    if (this.broken !== null) return 0;
    const idx = Atomics.load(this.avail, 1);
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.size) {
      this.markBroken('VQ_AVAIL_JUMP', `avail.idx ${idx} is ${n} ahead of last_avail_idx ${this.lastAvail} (size ${this.size})`);
      return 0;
    }
    this.seenAvail = idx;
    return n;
  }

  /**
   * Walks the next available chain into `chain` (reset first). False when the ring is empty or the
   * queue is (or just became) broken; never throws for guest errors.
   */
  pop(chain: Chain): boolean {
    if (this.broken !== null) return false;
    if (this.inflightRegion !== null) return this.popTracked(chain);
    if (this.lastAvail === this.seenAvail && this.availableCount() === 0) return false;
    // Ring entries are read after the acquire load of avail.idx that covered them.
    const head = this.avail[2 + (this.lastAvail & this.mask)]!;
    let ok: boolean;
    try {
      ok = this.walker.walk(chain, head);
    } catch (e) {
      return this.walkFault(e);
    }
    if (!ok) {
      this.markBroken(this.walker.errCode!, `avail[${this.lastAvail}]: ${this.walker.errMessage}`);
      return false;
    }
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.outstanding++;
    this.stats.popped++;
    return true;
  }

  /**
   * pop() for the common case (queue.ts DirectBuffer): the head descriptor has no NEXT / INDIRECT,
   * the expected direction, a non-zero length, and lies in one region. Anything else, and queues
   * with an inflight journal, answer DIRECT_CHAIN without consuming, so pop() and its walker judge
   * them (the same errors as always). The descriptor is read after the acquire load of avail.idx
   * that covered its ring entry, as in pop().
   */
  popDirect(out: DirectBuffer): number {
    if (this.broken !== null) return 0;
    if (this.inflightRegion !== null) return -1;
    if (this.lastAvail === this.seenAvail && this.availableCount() === 0) return 0;
    const head = this.avail[2 + (this.lastAvail & this.mask)]!;
    if (head >= this.size) return -1;
    const d = this.desc;
    const wi = head << 2;
    // The last word is flags | next << 16: flags must be exactly WRITE or 0.
    if ((d[wi + 3]! & 0xffff) !== (out.write ? DESC_F_WRITE : 0)) return -1;
    const len = d[wi + 2]!;
    const hi = d[wi + 1]!;
    if (len === 0 || hi >= HI_LIMIT) return -1;
    const addr = hi * TWO_32 + d[wi]!;
    const r = this.resolveDirect(out, addr, len, head);
    if (r !== 1) return r;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.outstanding++;
    this.stats.popped++;
    this.stats.poppedDirect++;
    return 1;
  }

  /**
   * Gives back the last n popped chains (they will be popped again), e.g. when mergeable RX cannot
   * gather enough buffers for a packet. The device must not have pushed them. Throws RangeError
   * when n exceeds the chains popped and not pushed (a device bug).
   */
  unpop(n = 1): void {
    if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`unpop(${n})`);
    if (n > this.outstanding) throw new RangeError(`unpop(${n}): only ${this.outstanding} chains are outstanding`);
    if (this.inflightRegion !== null) return this.unpopTracked(n);
    this.lastAvail = (this.lastAvail - n) & 0xffff;
    this.outstanding -= n;
    this.stats.popped -= n;
  }

  /**
   * Records a completed chain: used element {id: head, len: byteLen} in the next used slot. Not
   * visible to the driver until flushUsed(). Still allowed on a broken queue, so chains completed
   * before the error reach the driver (only popping stops); ignored once the rings are unmapped.
   * Throws RangeError on a head outside the ring (a device bug). A driver that keeps making buffers
   * available while we drain can bring more than `size` completions before a flush: the ones pending
   * are published first (the used ring holds `size`), never an exception the guest could provoke.
   */
  pushUsed(head: number, byteLen: number): void {
    if (!this.ringsMapped) return;
    if (!(head >= 0 && head < this.size && Number.isInteger(head))) {
      throw new RangeError(`pushUsed: head ${head} outside 0..${this.size - 1}`);
    }
    if (this.pending >= this.size) this.flushEarly();
    if (this.inflightRegion !== null) {
      this.inflightRegion.beginUsed(head);
      this.pendHeads[this.pending] = head;
    }
    const w = 1 + 2 * (this.shadowUsed & this.mask);
    this.usedU32[w] = head;
    this.usedU32[w + 1] = byteLen >= 0xffffffff ? 0xffffffff : byteLen >>> 0;
    this.shadowUsed = (this.shadowUsed + 1) & 0xffff;
    this.pending++;
    // Heads completed that this instance did not pop (e.g. after a restart) are legal: clamp.
    if (this.outstanding > 0) this.outstanding--;
    this.stats.pushed++;
  }

  /**
   * Publishes used.idx once for everything pushed since the last flush, and says whether the driver
   * must be notified: with EVENT_IDX iff used_event lies in [old, new) (vring_need_event, 2.7.7.2),
   * otherwise unless avail.flags has VIRTQ_AVAIL_F_NO_INTERRUPT. Each true must be acted on (the
   * next flush only considers its own range).
   */
  /** Publishes now what is pending (pushUsed, a full batch); its notification is owed to the next flushUsed. */
  protected flushEarly(): void {
    if (this.flushUsed()) this.notifyOwed = true;
  }

  flushUsed(): boolean {
    const n = this.pending;
    if (n === 0 || !this.ringsMapped) return this.takeOwed();
    const old = this.used;
    const next = this.shadowUsed;
    // Release: the element stores above become visible before the new index.
    Atomics.store(this.usedU16, 1, next);
    // Inflight: the batch is cleared only once used.idx covers it (a crash in between is recovered).
    if (this.inflightRegion !== null) this.inflightRegion.commitUsed(next, this.pendHeads, n);
    this.used = next;
    this.pending = 0;
    this.stats.flushes++;
    const hook = this.mem.onWrite;
    if (hook !== undefined) this.logUsed(hook, old, n);
    // Store-load: used_event / flags are read after used.idx is visible (Atomics are seq-cst).
    let notify: boolean;
    if (this.eventIdx) notify = vringNeedEvent(Atomics.load(this.avail, this.usedEventAt), next, old);
    else notify = (Atomics.load(this.avail, 0) & AVAIL_F_NO_INTERRUPT) === 0;
    if (notify) this.stats.notifies++;
    else this.stats.suppressed++;
    return notify || this.takeOwed();
  }

  /** An owed notification (flushEarly), taken once. */
  protected takeOwed(): boolean {
    if (!this.notifyOwed) return false;
    this.notifyOwed = false;
    return true;
  }

  protected logUsed(hook: (gpa: number, byteLen: number) => void, old: number, n: number): void {
    const mem = this.mem;
    const first = old & this.mask;
    const elems = this.usedLogGpa + 4;
    const head = Math.min(n, this.size - first);
    hook.call(mem, elems + 8 * first, 8 * head);
    if (head < n) hook.call(mem, elems, 8 * (n - head));
    hook.call(mem, this.usedLogGpa + 2, 2);
  }

  /**
   * Asks the driver not to kick (2.7.10): sets VIRTQ_USED_F_NO_NOTIFY without EVENT_IDX. With
   * EVENT_IDX nothing is written ("The device MUST set flags to 0"): avail_event simply stays
   * behind, so the driver's next avail.idx update does not cross it again.
   */
  disableNotification(): void {
    if (this.broken !== null) return;
    this.notifyOn = false;
    if (!this.eventIdx && this.usedFlags !== USED_F_NO_NOTIFY) {
      this.usedFlags = USED_F_NO_NOTIFY;
      Atomics.store(this.usedU16, 0, USED_F_NO_NOTIFY);
      this.logWrite(this.usedLogGpa, 2);
    }
  }

  /**
   * Asks the driver to kick again, then re-reads avail.idx: true when entries arrived that we had not
   * seen (they may have been added before the driver could see our request, and no kick will come
   * for them: the race of 2.7.10, so the caller must process them).
   *
   * With EVENT_IDX, avail_event := the avail.idx we last saw, i.e. "kick me when you write entry
   * number <seen>" (the first we have not seen). It equals lastAvailIdx when the ring was drained;
   * after an unpop it is further on, so given-back entries do not cause an immediate true.
   */
  enableNotification(): boolean {
    if (this.broken !== null) return false;
    this.notifyOn = true;
    if (this.eventIdx) {
      if (this.availEvent !== this.seenAvail) {
        this.availEvent = this.seenAvail;
        Atomics.store(this.usedU16, this.availEventAt, this.seenAvail);
        this.logWrite(this.usedLogGpa + 4 + 8 * this.size, 2);
      }
    } else if (this.usedFlags !== 0) {
      this.usedFlags = 0;
      Atomics.store(this.usedU16, 0, 0);
      this.logWrite(this.usedLogGpa, 2);
    }
    // Store-load fence: the seq-cst store above (or an earlier one) is visible before this load.
    return Atomics.load(this.avail, 1) !== this.seenAvail;
  }


  // ---- inflight tracking -------------------------------------------------------------------------

  /** The attached inflight region, or null. */
  get inflight(): SplitInflight | null {
    return this.inflightRegion;
  }
  /** Resubmitted chains pop() has still to hand out. */
  get resubmitPending(): number {
    return this.resubmit.length - this.resubmitPos;
  }

  /**
   * Attaches this queue's inflight region (SET_INFLIGHT_FD, before the ring runs: nothing popped or
   * pushed yet). A blank region (version 0) is initialized from the ring; a region in use is
   * recovered (SplitInflight.recover with the used ring's idx now): its heads still in flight are
   * resubmitted, used := used.idx and last_avail_idx := used.idx + their number. Throws VirtqError
   * (VQ_INFLIGHT_REGION / VQ_INFLIGHT_CORRUPT) and leaves the queue untouched when the region is
   * unusable; RangeError when called at the wrong time (host bug).
   */
  protected get queueSize(): number {
    return this.size;
  }

  attachInflight(region: InflightRegion): InflightAttachResult {
    this.checkInflightAttach(region, 'split', this.inflightRegion !== null, this.outstanding !== 0 || this.pending !== 0);
    if (!(region instanceof SplitInflight)) throw new VirtqError('VQ_INFLIGHT_REGION', `${this.label}: not a split region`);
    const ringUsed = this.loadRingU16(this.usedU16, 1);
    let heads = NO_HEADS;
    const fresh = region.isFresh;
    if (fresh) region.init({ usedIdx: ringUsed });
    else {
      heads = region.recover(ringUsed, this.loadRingU16(this.avail, 1));
      this.used = ringUsed;
      this.shadowUsed = ringUsed;
      this.lastAvail = (ringUsed + heads.length) & 0xffff;
      this.seenAvail = this.lastAvail;
    }
    this.resubmit = heads;
    this.resubmitPos = 0;
    this.pendHeads = new Uint16Array(this.size);
    this.hist = new Uint32Array(this.size);
    this.histTop = 0;
    this.histLen = 0;
    this.inflightRegion = region;
    return { fresh, resubmitted: heads.length };
  }

  /** pop() with a region: resubmitted heads first, then the ring (same walker), recording the pop. */
  protected popTracked(chain: Chain): boolean {
    const r = this.inflightRegion!;
    let head: number;
    if (this.resubmitPos < this.resubmit.length) {
      head = this.resubmit[this.resubmitPos]!;
      let ok: boolean;
      try {
        ok = this.walker.walk(chain, head);
      } catch (e) {
        return this.walkFault(e);
      }
      if (!ok) {
        this.markBroken(this.walker.errCode!, `resubmitted head ${head}: ${this.walker.errMessage}`);
        return false;
      }
      this.resubmitPos++;
      this.remember(head | HIST_RESUBMIT);
      this.outstanding++;
      this.stats.popped++;
      return true;
    }
    // The untracked path does the ring work; detached meanwhile so it does not come back here.
    this.inflightRegion = null;
    let ok: boolean;
    try {
      ok = this.pop(chain);
    } finally {
      this.inflightRegion = r;
    }
    if (!ok) return false;
    head = chain.head;
    r.onPop(head);
    this.remember(head);
    return true;
  }

  private remember(v: number): void {
    this.hist[this.histTop] = v;
    this.histTop = this.histTop + 1 === this.size ? 0 : this.histTop + 1;
    if (this.histLen < this.size) this.histLen++;
  }

  private unpopTracked(n: number): void {
    if (n > this.histLen) throw new RangeError(`unpop(${n}): only ${this.histLen} pops are remembered`);
    const r = this.inflightRegion!;
    for (let k = 0; k < n; k++) {
      this.histTop = this.histTop === 0 ? this.size - 1 : this.histTop - 1;
      const v = this.hist[this.histTop]!;
      if ((v & HIST_RESUBMIT) !== 0) this.resubmitPos--;
      else {
        r.onUnpop(v & 0xffff);
        this.lastAvail = (this.lastAvail - 1) & 0xffff;
      }
    }
    this.histLen -= n;
    this.outstanding -= n;
    this.stats.popped -= n;
  }

}

/**
 * A split queue whose ring fields are big-endian (legacy device, big-endian guest: vhost-user.rst
 * SET_VRING_ENDIAN). Made by `new SplitQueue({ bigEndian: true, ... })`. Each method that touches a
 * ring field is SplitQueue's with the value swapped: same views, same Atomics (acquire loads of
 * avail.idx, release store of used.idx, the seq-cst store-load pairs of 2.7.10), same checks and
 * the same order of effects. Descriptors go through SplitChainWalkerBE.
 */
export class SplitQueueBE extends SplitQueue {
  constructor(cfg: SplitQueueConfig, mem: GuestMemory) {
    super({ ...cfg, bigEndian: true }, mem);
  }

  override availableCount(): number {
    if (this.broken !== null) return 0;
    const idx = swap16(Atomics.load(this.avail, 1));
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.size) {
      this.markBroken('VQ_AVAIL_JUMP', `avail.idx ${idx} is ${n} ahead of last_avail_idx ${this.lastAvail} (size ${this.size})`);
      return 0;
    }
    this.seenAvail = idx;
    return n;
  }

  /** Big-endian descriptors always take the walker (pop): no fast path for legacy rings. */
  override popDirect(_out: DirectBuffer): number {
    return this.broken !== null ? 0 : -1;
  }

  override pop(chain: Chain): boolean {
    if (this.broken !== null) return false;
    if (this.inflightRegion !== null) return this.popTracked(chain);
    if (this.lastAvail === this.seenAvail && this.availableCount() === 0) return false;
    const head = swap16(this.avail[2 + (this.lastAvail & this.mask)]!);
    let ok: boolean;
    try {
      ok = this.walker.walk(chain, head);
    } catch (e) {
      return this.walkFault(e);
    }
    if (!ok) {
      this.markBroken(this.walker.errCode!, `avail[${this.lastAvail}]: ${this.walker.errMessage}`);
      return false;
    }
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.outstanding++;
    this.stats.popped++;
    return true;
  }

  override pushUsed(head: number, byteLen: number): void {
    if (!this.ringsMapped) return;
    if (!(head >= 0 && head < this.size && Number.isInteger(head))) {
      throw new RangeError(`pushUsed: head ${head} outside 0..${this.size - 1}`);
    }
    if (this.pending >= this.size) this.flushEarly();
    if (this.inflightRegion !== null) {
      this.inflightRegion.beginUsed(head);
      this.pendHeads[this.pending] = head;
    }
    const w = 1 + 2 * (this.shadowUsed & this.mask);
    this.usedU32[w] = swap32(head);
    this.usedU32[w + 1] = swap32(byteLen >= 0xffffffff ? 0xffffffff : byteLen >>> 0);
    this.shadowUsed = (this.shadowUsed + 1) & 0xffff;
    this.pending++;
    if (this.outstanding > 0) this.outstanding--;
    this.stats.pushed++;
  }

  override flushUsed(): boolean {
    const n = this.pending;
    if (n === 0 || !this.ringsMapped) return this.takeOwed();
    const old = this.used;
    const next = this.shadowUsed;
    Atomics.store(this.usedU16, 1, swap16(next));
    if (this.inflightRegion !== null) this.inflightRegion.commitUsed(next, this.pendHeads, n);
    this.used = next;
    this.pending = 0;
    this.stats.flushes++;
    const hook = this.mem.onWrite;
    if (hook !== undefined) this.logUsed(hook, old, n);
    let notify: boolean;
    if (this.eventIdx) notify = vringNeedEvent(swap16(Atomics.load(this.avail, this.usedEventAt)), next, old);
    else notify = (swap16(Atomics.load(this.avail, 0)) & AVAIL_F_NO_INTERRUPT) === 0;
    if (notify) this.stats.notifies++;
    else this.stats.suppressed++;
    return notify || this.takeOwed();
  }

  override disableNotification(): void {
    if (this.broken !== null) return;
    this.notifyOn = false;
    if (!this.eventIdx && this.usedFlags !== USED_F_NO_NOTIFY) {
      this.usedFlags = USED_F_NO_NOTIFY;
      Atomics.store(this.usedU16, 0, swap16(USED_F_NO_NOTIFY));
      this.logWrite(this.usedLogGpa, 2);
    }
  }

  override enableNotification(): boolean {
    if (this.broken !== null) return false;
    this.notifyOn = true;
    if (this.eventIdx) {
      if (this.availEvent !== this.seenAvail) {
        this.availEvent = this.seenAvail;
        Atomics.store(this.usedU16, this.availEventAt, swap16(this.seenAvail));
        this.logWrite(this.usedLogGpa + 4 + 8 * this.size, 2);
      }
    } else if (this.usedFlags !== 0) {
      this.usedFlags = 0;
      Atomics.store(this.usedU16, 0, 0);
      this.logWrite(this.usedLogGpa, 2);
    }
    return swap16(Atomics.load(this.avail, 1)) !== this.seenAvail;
  }
}
