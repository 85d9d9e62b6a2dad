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
 */
import type { GuestMemory } from './memory.ts';
import { ringU16, ringU32 } from './memory.ts';
import { Chain, SplitChainWalker } from './chain.ts';
import {
  AVAIL_ALIGN,
  DESC_ALIGN,
  MAX_SPLIT_QUEUE_SIZE,
  USED_ALIGN,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  availRingBytes,
  descTableBytes,
  needEvent,
  usedRingBytes,
} from './defs.ts';
import type { VirtqErrorCode } from './errors.ts';
import { VirtqError, hexAddr } from './errors.ts';
import type { ChainHandler, DrainResult, Virtqueue, VirtqueueStats } from './queue.ts';
import { drainQueue } from './queue.ts';
import { QueueCore } from './queue-core.ts';


// Module-local copies of imported bindings used per operation (tsx's CJS output turns imports
// into getter calls).
const AVAIL_F_NO_INTERRUPT = VIRTQ_AVAIL_F_NO_INTERRUPT;
const USED_F_NO_NOTIFY = VIRTQ_USED_F_NO_NOTIFY;
const vringNeedEvent = needEvent;

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
  /** For log lines. */
  label?: string;
}

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
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly label: string;
  /** Sticky guest error; null while the queue is healthy. */
  readonly stats: SplitQueueStats = { popped: 0, pushed: 0, flushes: 0, notifies: 0, suppressed: 0 };

  private desc!: Uint32Array;
  private avail!: Uint16Array;
  private usedU16!: Uint16Array;
  private usedU32!: Uint32Array;
  private readonly walker: SplitChainWalker;
  private readonly mask: number;
  /** u16 index of used_event in the avail ring / avail_event in the used ring. */
  private readonly usedEventAt: number;
  private readonly availEventAt: number;

  private lastAvail: number;
  /** avail.idx as last read (acquire); pop() re-reads it only when it has consumed up to here. */
  private seenAvail: number;
  /** Published used.idx. */
  private used: number;
  /** Next used slot (published + pending). */
  private shadowUsed: number;
  private pending = 0;
  /** Chains popped and neither pushed nor given back: the most unpop() may rewind. */
  private outstanding = 0;
  /** What we last wrote to used.flags / avail_event (-1: not written by us), to skip redundant writes. */
  private usedFlags = -1;
  private availEvent = -1;
  private notifyOn = true;
  private readonly scratchChain = new Chain();

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
    this.size = size;
    this.mask = size - 1;
    this.descGpa = cfg.descAddr;
    this.availGpa = cfg.availAddr;
    this.usedGpa = cfg.usedAddr;
    this.eventIdx = cfg.eventIdx;
    this.indirect = cfg.indirect;
    this.label = cfg.label ?? `vq@${hexAddr(cfg.descAddr)}`;
    this.usedEventAt = 2 + size;
    this.availEventAt = 2 + 4 * size;
    this.mapRings(mem);
    this.walker = new SplitChainWalker(mem, this.desc, size, cfg.indirect);
    this.lastAvail = cfg.lastAvailIdx ?? 0;
    this.seenAvail = this.lastAvail;
    this.used = cfg.usedIdx ?? Atomics.load(this.usedU16, 1);
    this.shadowUsed = this.used;
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
    if (this.lastAvail === this.seenAvail && this.availableCount() === 0) return false;
    // Ring entries are read after the acquire load of avail.idx that covered them.
    const head = this.avail[2 + (this.lastAvail & this.mask)]!;
    if (!this.walker.walk(chain, head)) {
      this.markBroken(this.walker.errCode!, `avail[${this.lastAvail}]: ${this.walker.errMessage}`);
      return false;
    }
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.outstanding++;
    this.stats.popped++;
    return true;
  }

  /**
   * Gives back the last n popped chains (they will be popped again), e.g. when mergeable RX cannot
   * gather enough buffers for a packet. The device must not have pushed them. Throws RangeError
   * when n exceeds the chains popped and not pushed (a device bug).
   */
  unpop(n = 1): void {
    if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`unpop(${n})`);
    if (n > this.outstanding) throw new RangeError(`unpop(${n}): only ${this.outstanding} chains are outstanding`);
    this.lastAvail = (this.lastAvail - n) & 0xffff;
    this.outstanding -= n;
    this.stats.popped -= n;
  }

  /**
   * Records a completed chain: used element {id: head, len: byteLen} in the next used slot. Not
   * visible to the driver until flushUsed(). Still allowed on a broken queue, so chains completed
   * before the error reach the driver (only popping stops); ignored once the rings are unmapped.
   * Throws RangeError on a head outside the ring or more than `size` unpublished elements (device
   * bugs, not guest errors).
   */
  pushUsed(head: number, byteLen: number): void {
    if (!this.ringsMapped) return;
    if (!(head >= 0 && head < this.size && Number.isInteger(head))) {
      throw new RangeError(`pushUsed: head ${head} outside 0..${this.size - 1}`);
    }
    if (this.pending >= this.size) throw new RangeError(`pushUsed: more than ${this.size} unpublished used elements`);
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
  flushUsed(): boolean {
    const n = this.pending;
    if (n === 0 || !this.ringsMapped) return false;
    const old = this.used;
    const next = this.shadowUsed;
    // Release: the element stores above become visible before the new index.
    Atomics.store(this.usedU16, 1, next);
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
    return notify;
  }

  private logUsed(hook: (gpa: number, byteLen: number) => void, old: number, n: number): void {
    const mem = this.mem;
    const first = old & this.mask;
    const elems = this.usedGpa + 4;
    const head = Math.min(n, this.size - first);
    hook.call(mem, elems + 8 * first, 8 * head);
    if (head < n) hook.call(mem, elems, 8 * (n - head));
    hook.call(mem, this.usedGpa + 2, 2);
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
      this.logWrite(this.usedGpa, 2);
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
        this.logWrite(this.usedGpa + 4 + 8 * this.size, 2);
      }
    } else if (this.usedFlags !== 0) {
      this.usedFlags = 0;
      Atomics.store(this.usedU16, 0, 0);
      this.logWrite(this.usedGpa, 2);
    }
    // Store-load fence: the seq-cst store above (or an earlier one) is visible before this load.
    return Atomics.load(this.avail, 1) !== this.seenAvail;
  }


  /** The device loop (queue.ts drainQueue): one result object per queue, nothing allocated per call. */
  drain(fn: ChainHandler, budget: number, chain: Chain = this.scratchChain): DrainResult {
    return drainQueue(this, fn, budget, chain, this.drainResult);
  }
  private readonly drainResult: DrainResult = { processed: 0, notify: false, more: false, stopped: false };
}
