/**
 * Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking", VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
 * GET_INFLIGHT_FD / SET_INFLIGHT_FD): the per-queue region of a buffer shared with the frontend, in
 * which the backend journals which chains it has taken from the ring and not yet completed, so that a
 * restarted backend can hand them to the device again ("resubmit") instead of losing them.
 *
 * This module is the layout and the two algorithms of the spec over one queue's bytes; it knows
 * nothing about sockets or mmap (the session maps the memfd and hands each queue its slice,
 * `inflightQueueOffset`). The queues (split.ts / packed.ts `attachInflight`) call the hooks.
 *
 * Layout (vhost-user.rst, native byte order = little-endian here; offsets in bytes):
 *
 *   split  QueueRegionSplit   { u64 features @0; u16 version @8; u16 desc_num @10;
 *                                u16 last_batch_head @12; u16 used_idx @14; DescStateSplit desc[] @16 }
 *          DescStateSplit     { u8 inflight @0; u8 padding[5]; u16 next @6; u64 counter @8 }    16 bytes
 *   packed QueueRegionPacked  { u64 features @0; u16 version @8; u16 desc_num @10; u16 free_head @12;
 *                                u16 old_free_head @14; u16 used_idx @16; u16 old_used_idx @18;
 *                                u8 used_wrap_counter @20; u8 old_used_wrap_counter @21; u8 padding[7];
 *                                DescStatePacked desc[] @32 (C alignment of the u64 inside) }
 *          DescStatePacked    { u8 inflight @0; u8 padding; u16 next @2; u16 last @4; u16 num @6;
 *                                u64 counter @8; u16 id @16; u16 flags @18; u32 len @20; u64 addr @24 }  32 bytes
 *
 * Size per queue (`inflightQueueSize`): header + desc_num × entry, rounded up to 64 bytes, i.e.
 * align64(16 + 16·N) split and align64(32 + 32·N) packed. That is DPDK's get_pervq_shm_size_split /
 * _packed (INFLIGHT_ALIGNMENT 64: each queue's region starts on a cache line, so queues served by
 * different threads never share one), and it gives the same numbers as libvhost-user's
 * align64(16·N + 2) for every N (no multiple of 64 lies between 16·N + 2 and 16·N + 16). The frontend
 * never interprets the buffer; only we do, so the formula just has to be the same on both sides of
 * our own restart.
 *
 * Trust. The frontend keeps the buffer across our crash and hands it back with SET_INFLIGHT_FD: it
 * may hand back garbage. `validate()` / `recover()` read the region once, check every field and every
 * index against desc_num (loops and overlaps in the `next` lists included) and throw a VirtqError
 * (VQ_INFLIGHT_REGION / VQ_INFLIGHT_CORRUPT) before writing anything. After that the region is a
 * write-only journal: the running state (free list, counters, chain shapes) lives in private mirrors,
 * so a frontend scribbling on the buffer while we run can only spoil its own next recovery (which is
 * validated again), never make us index out of bounds.
 *
 * Ordering. The region must be consistent at every point where our process may die, in program
 * order. The stores that the recovery algorithms decide on (inflight bytes, last_batch_head, used_idx,
 * free_head and the old_* fields) are `Atomics.store`: sequentially consistent, so V8 neither drops nor
 * reorders them around each other or around the guest-ring Atomics stores of the queue (used.idx,
 * the first used flags). Data fields written before them (counter, copies of descriptors, next links)
 * are plain stores that are only read when a later atomic store says so. A process crash keeps every
 * store the process executed (the memfd outlives it); CPU store buffers drain, they are never lost.
 */
import createDebug from 'debug';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED } from './defs.ts';
import { VirtqError } from './errors.ts';

const log = createDebug('vhost:inflight');

export type InflightLayout = 'split' | 'packed';

/** vhost-user.rst: "The version of this region. It's 1 currently. Zero value indicates an uninitialized buffer". */
export const INFLIGHT_VERSION = 1;
/** Per-queue regions are rounded up to this (DPDK INFLIGHT_ALIGNMENT, libvhost-user likewise). */
export const INFLIGHT_ALIGN = 64;
export const SPLIT_INFLIGHT_HEADER_BYTES = 16;
export const SPLIT_INFLIGHT_DESC_BYTES = 16;
export const PACKED_INFLIGHT_HEADER_BYTES = 32;
export const PACKED_INFLIGHT_DESC_BYTES = 32;
/** desc_num is a u16 and queues hold at most 32768 entries (virtio v1.2 2.7 / 2.8). */
const MAX_DESC_NUM = 32768;

const F_NEXT = VIRTQ_DESC_F_NEXT;
const F_AVAIL = VIRTQ_DESC_F_AVAIL;
const F_USED = VIRTQ_DESC_F_USED;

function align64(n: number): number {
  return Math.ceil(n / INFLIGHT_ALIGN) * INFLIGHT_ALIGN;
}

function checkQueueSize(queueSize: number): void {
  if (!(Number.isInteger(queueSize) && queueSize >= 1 && queueSize <= MAX_DESC_NUM)) {
    throw new VirtqError('VQ_INFLIGHT_REGION', `inflight queue size ${queueSize} is not in 1..${MAX_DESC_NUM}`);
  }
}

/** Bytes of one queue's region (see the header for the formula and why). */
export function inflightQueueSize(layout: InflightLayout, queueSize: number): number {
  checkQueueSize(queueSize);
  return layout === 'split'
    ? align64(SPLIT_INFLIGHT_HEADER_BYTES + SPLIT_INFLIGHT_DESC_BYTES * queueSize)
    : align64(PACKED_INFLIGHT_HEADER_BYTES + PACKED_INFLIGHT_DESC_BYTES * queueSize);
}

/** GET_INFLIGHT_FD mmap_size: `numQueues` regions back to back ("queue0 region | queue1 region | ..."). */
export function inflightRegionSize(layout: InflightLayout, numQueues: number, queueSize: number): number {
  if (!(Number.isInteger(numQueues) && numQueues >= 1 && numQueues <= 0xffff)) {
    throw new VirtqError('VQ_INFLIGHT_REGION', `inflight num_queues ${numQueues} is not in 1..65535`);
  }
  return numQueues * inflightQueueSize(layout, queueSize);
}

/** Offset of queue `index`'s region in the buffer. */
export function inflightQueueOffset(layout: InflightLayout, index: number, queueSize: number): number {
  return index * inflightQueueSize(layout, queueSize);
}

export interface InflightInitOptions {
  /** QueueRegion.features: "Now it's initialized to 0"; no flag is defined, anything else is refused. */
  features?: bigint;
  /** Split: the used ring's idx now. Packed: the device's used position now (0..size-1). Default 0. */
  usedIdx?: number;
  /** Packed: the used wrap counter now (default true, virtio v1.2 2.8.1). */
  usedWrap?: boolean;
}

/** What a queue's attachInflight() did. */
export interface InflightAttachResult {
  /** The region was blank (version 0) and was initialized from the queue's state: nothing to resubmit. */
  fresh: boolean;
  /** Chains pop() hands out again, in the order they were first taken, before any new available one. */
  resubmitted: number;
}

function regionError(message: string): VirtqError {
  return new VirtqError('VQ_INFLIGHT_REGION', `inflight region: ${message}`);
}
function corrupt(message: string): VirtqError {
  return new VirtqError('VQ_INFLIGHT_CORRUPT', `inflight region: ${message}`);
}

/** Sorts entry indices by their u64 counter (hi, lo halves), ties by index (a sane region has none). */
function sortByCounter(idx: number[], hi: number[], lo: number[]): void {
  const order = idx.map((_, k) => k);
  order.sort((a, b) => hi[a]! - hi[b]! || lo[a]! - lo[b]! || idx[a]! - idx[b]!);
  const i2 = order.map((k) => idx[k]!);
  const h2 = order.map((k) => hi[k]!);
  const l2 = order.map((k) => lo[k]!);
  for (let k = 0; k < idx.length; k++) {
    idx[k] = i2[k]!;
    hi[k] = h2[k]!;
    lo[k] = l2[k]!;
  }
}

/** What split and packed regions share: the views, the header fields at the same place, the counter. */
abstract class InflightRegionBase {
  abstract readonly layout: InflightLayout;
  /** The queue size this region is for (= desc_num once initialized). */
  readonly size: number;
  /** This queue's bytes (exactly inflightQueueSize). */
  readonly bytes: Uint8Array;
  protected readonly u8: Uint8Array;
  protected readonly u16: Uint16Array;
  protected readonly u32: Uint32Array;
  /** True once init() or recover() succeeded: the hooks may be called. */
  protected active = false;
  /** Next counter value, as two u32 halves (the field is a u64). */
  protected counterLo = 0;
  protected counterHi = 0;

  protected constructor(layout: InflightLayout, bytes: Uint8Array, queueSize: number) {
    const need = inflightQueueSize(layout, queueSize);
    if (!(bytes instanceof Uint8Array)) throw regionError('not a Uint8Array');
    if (bytes.length < need) {
      throw regionError(`${bytes.length} bytes, a ${layout} queue of ${queueSize} needs ${need}`);
    }
    // u64 fields are accessed as u32 halves and the Atomics need natural alignment.
    if (bytes.byteOffset % 8 !== 0) throw regionError(`view at byte offset ${bytes.byteOffset} is not 8-byte aligned`);
    this.size = queueSize;
    this.bytes = bytes.subarray(0, need);
    this.u8 = this.bytes;
    this.u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, need >>> 1);
    this.u32 = new Uint32Array(bytes.buffer, bytes.byteOffset, need >>> 2);
  }

  /** 0 = never initialized (a fresh buffer from GET_INFLIGHT_FD), 1 = in use. */
  get version(): number {
    return this.u16[4]!;
  }
  get descNum(): number {
    return this.u16[5]!;
  }
  get features(): bigint {
    return (BigInt(this.u32[1]!) << 32n) | BigInt(this.u32[0]!);
  }
  /** Blank region: attach initializes it instead of recovering from it. */
  get isFresh(): boolean {
    return this.version === 0;
  }
  /** init() or recover() has run: the queue may call the hooks. */
  get isActive(): boolean {
    return this.active;
  }
  /** The counter the next popped chain gets. */
  get nextCounter(): bigint {
    return (BigInt(this.counterHi) << 32n) | BigInt(this.counterLo);
  }

  /** Zeroes the region and writes the common header; version is written last by the caller. */
  protected initHeader(opts: InflightInitOptions): void {
    const f = opts.features ?? 0n;
    if (f !== 0n) throw regionError(`features 0x${f.toString(16)}: no region feature is defined (vhost-user.rst: "initialized to 0")`);
    this.u8.fill(0);
    this.u16[5] = this.size;
    this.counterLo = 0;
    this.counterHi = 0;
  }

  /** Header checks common to both layouts (read only). */
  protected checkHeader(): void {
    const v = this.version;
    if (v === 0) throw regionError('version 0: the region was never initialized');
    if (v !== INFLIGHT_VERSION) throw regionError(`version ${v} is not ${INFLIGHT_VERSION}`);
    if (this.descNum !== this.size) throw regionError(`desc_num ${this.descNum} is not the queue size ${this.size}`);
    if (this.u32[0] !== 0 || this.u32[1] !== 0) throw regionError(`unknown features 0x${this.features.toString(16)}`);
  }

  protected requireActive(what: string): void {
    if (!this.active) throw new Error(`inflight ${this.layout} region: ${what} before init() or recover()`);
  }

  /** Continues counting after the largest counter still in flight (none: from 0), like libvhost-user and DPDK. */
  protected continueCounter(hi: number[], lo: number[]): void {
    const k = hi.length - 1;
    if (k < 0) {
      this.counterLo = 0;
      this.counterHi = 0;
      return;
    }
    this.counterLo = (lo[k]! + 1) >>> 0;
    this.counterHi = this.counterLo === 0 ? (hi[k]! + 1) >>> 0 : hi[k]!;
  }

  /** Writes the current counter into the u32 pair at word `w` and advances it (wraps at 2^64). */
  protected takeCounter(w: number): void {
    const u = this.u32;
    u[w] = this.counterLo;
    u[w + 1] = this.counterHi;
    this.counterLo = (this.counterLo + 1) >>> 0;
    if (this.counterLo === 0) this.counterHi = (this.counterHi + 1) >>> 0;
  }
}

// ---- split ------------------------------------------------------------------------------------

/** One split queue's entry, decoded (tests, diagnostics). */
export interface SplitInflightEntry {
  inflight: number;
  next: number;
  counter: bigint;
}

/**
 * One split queue's QueueRegionSplit. The spec's algorithm (vhost-user.rst):
 *
 *   pop:   desc[head].counter = counter++; desc[head].inflight = 1                      onPop(head)
 *   used:  per element desc[head].next = last_batch_head; last_batch_head = head       beginUsed(head)
 *          used ring idx += batch                                   (the queue publishes used.idx)
 *          desc[head].inflight = 0 for the batch; used_idx = used ring idx             commitUsed(...)
 *   reconnect: if used_idx != used ring idx, the batch was published but not cleared: clear
 *          (used ring idx - used_idx) entries from last_batch_head; used_idx = used ring idx;
 *          resubmit the entries still inflight in counter order                       recover(...)
 *
 * Plus one step the spec leaves out: a chain given back with unpop() is no longer in flight
 * (onUnpop); otherwise it would be resubmitted AND popped again from the ring after a restart.
 */
export class SplitInflight extends InflightRegionBase {
  readonly layout = 'split' as const;
  /** Mirror of last_batch_head (what beginUsed links to). */
  private lastBatch = 0;

  constructor(bytes: Uint8Array, queueSize: number) {
    super('split', bytes, queueSize);
  }

  get lastBatchHead(): number {
    return this.u16[6]!;
  }
  get usedIdx(): number {
    return this.u16[7]!;
  }

  /** Decoded entry i (reads the region; tests, diagnostics). */
  entry(i: number): SplitInflightEntry {
    if (!(Number.isInteger(i) && i >= 0 && i < this.size)) throw new RangeError(`entry ${i} outside 0..${this.size - 1}`);
    return {
      inflight: this.u8[16 + 16 * i]!,
      next: this.u16[11 + 8 * i]!,
      counter: (BigInt(this.u32[7 + 4 * i]!) << 32n) | BigInt(this.u32[6 + 4 * i]!),
    };
  }

  /**
   * Initializes a blank region: zeroes, desc_num, used_idx := the used ring's idx now (so that a crash
   * before our first flush does not look like an unfinished batch), then version = 1 (last: a region
   * with a version is complete).
   */
  init(opts: InflightInitOptions = {}): void {
    this.initHeader(opts);
    this.u16[7] = (opts.usedIdx ?? 0) & 0xffff;
    Atomics.store(this.u16, 4, INFLIGHT_VERSION);
    this.lastBatch = 0;
    this.active = true;
  }

  /** Checks a region handed back by SET_INFLIGHT_FD without writing it; throws VQ_INFLIGHT_REGION / _CORRUPT. */
  validate(): void {
    this.checkHeader();
    const S = this.size;
    if (this.lastBatchHead >= S) throw corrupt(`last_batch_head ${this.lastBatchHead} >= desc_num ${S}`);
    const u8 = this.u8;
    for (let i = 0; i < S; i++) {
      const f = u8[16 + 16 * i]!;
      if (f > 1) throw corrupt(`desc[${i}].inflight is ${f}, not 0 or 1`);
    }
  }

  /**
   * The spec's reconnect algorithm. `usedRingIdx` is the used ring's idx as the driver sees it now;
   * `availIdx` (optional) the avail ring's idx, for a sanity check: the driver cannot have more
   * chains in flight than it made available past used.idx. Validates everything first, then
   * clears the finished batch and stores used_idx; returns the heads still in flight, in counter
   * order (the order they were popped). The caller sets last_avail_idx := used idx + their number
   * (libvhost-user vu_check_queue_inflights).
   */
  recover(usedRingIdx: number, availIdx?: number): Uint16Array {
    this.validate();
    const S = this.size;
    const u8 = this.u8;
    const u16 = this.u16;
    const used = usedRingIdx & 0xffff;
    const regionUsed = this.usedIdx;
    const batch = (used - regionUsed) & 0xffff;
    const inBatch = new Uint8Array(S);
    const clear: number[] = [];
    if (batch !== 0) {
      if (batch > S) {
        throw corrupt(`used ring idx ${used} is ${batch} past used_idx ${regionUsed}: more than the queue size ${S}`);
      }
      let h = this.lastBatchHead;
      for (let k = 0; k < batch; k++) {
        if (h >= S) throw corrupt(`last batch list: entry ${h} >= desc_num ${S}`);
        if (inBatch[h] !== 0) throw corrupt(`last batch list: loop at entry ${h}`);
        inBatch[h] = 1;
        clear.push(h);
        if (k + 1 < batch) h = u16[11 + 8 * h]!;
      }
    }
    const heads: number[] = [];
    const hi: number[] = [];
    const lo: number[] = [];
    for (let i = 0; i < S; i++) {
      if (u8[16 + 16 * i] === 1 && inBatch[i] === 0) {
        heads.push(i);
        lo.push(this.u32[6 + 4 * i]!);
        hi.push(this.u32[7 + 4 * i]!);
      }
    }
    if (availIdx !== undefined) {
      const outstanding = ((availIdx & 0xffff) - used) & 0xffff;
      if (outstanding <= S && heads.length > outstanding) {
        throw corrupt(`${heads.length} chains in flight but the driver has only ${outstanding} outstanding (avail.idx ${availIdx & 0xffff}, used.idx ${used})`);
      }
    }
    sortByCounter(heads, hi, lo);
    // Apply, in the spec's order: clear the published batch, then record that it is done.
    for (const h of clear) Atomics.store(u8, 16 + 16 * h, 0);
    Atomics.store(u16, 7, used);
    this.lastBatch = this.lastBatchHead;
    this.continueCounter(hi, lo);
    this.active = true;
    log('split region recovered: batch of %d cleared, %d to resubmit', clear.length, heads.length);
    return Uint16Array.from(heads);
  }

  /** A chain with head descriptor `head` was taken from the available ring. */
  onPop(head: number): void {
    if (!(head >= 0 && head < this.size)) throw new RangeError(`onPop: head ${head} outside the queue`);
    this.takeCounter(6 + 4 * head);
    // The counter is in place before the entry says it is in flight.
    Atomics.store(this.u8, 16 + 16 * head, 1);
  }

  /** The chain was given back (unpop): it will be popped from the ring again, so it is not in flight. */
  onUnpop(head: number): void {
    if (!(head >= 0 && head < this.size)) throw new RangeError(`onUnpop: head ${head} outside the queue`);
    Atomics.store(this.u8, 16 + 16 * head, 0);
  }

  /** Steps 1-3 for one used element (before used.idx is published). */
  beginUsed(head: number): void {
    if (!(head >= 0 && head < this.size)) throw new RangeError(`beginUsed: head ${head} outside the queue`);
    this.u16[11 + 8 * head] = this.lastBatch;
    this.lastBatch = head;
    Atomics.store(this.u16, 6, head);
  }

  /**
   * Steps 5-6, after the queue published used.idx = `usedIdx`: clears the batch's `count` heads
   * (`heads[0..count)`), then stores used_idx. A crash in between is what recover() repairs.
   */
  commitUsed(usedIdx: number, heads: ArrayLike<number>, count: number): void {
    const u8 = this.u8;
    for (let i = 0; i < count; i++) Atomics.store(u8, 16 + 16 * heads[i]!, 0);
    Atomics.store(this.u16, 7, usedIdx & 0xffff);
  }

  /** Heads whose inflight byte is set (reads the region; tests, diagnostics). */
  inflightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.u8[16 + 16 * i] === 1) out.push(i);
    return out;
  }
}

// ---- packed -----------------------------------------------------------------------------------

/** One packed queue's entry, decoded (tests, diagnostics). */
export interface PackedInflightEntry {
  inflight: number;
  next: number;
  last: number;
  num: number;
  counter: bigint;
  id: number;
  flags: number;
  len: number;
  addr: bigint;
}

/** The in-flight lists a packed region holds, as recover() found them. */
export interface PackedRecovery {
  /** Head entries still in flight, in counter order (the resubmission order). */
  entries: Uint16Array;
  /** Ring descriptors each took (its `num`), same order. */
  descCounts: Uint16Array;
  /** Their saved descriptors in ring layout (4 u32 words each: addr lo, addr hi, len, id | flags << 16), concatenated. */
  descs: Uint32Array;
  /** The published used position and wrap counter (after the spec's roll-back / commit). */
  usedIdx: number;
  usedWrap: boolean;
  /** Sum of descCounts: the ring descriptors between the used position and the next one to read. */
  descTotal: number;
}

/**
 * One packed queue's QueueRegionPacked. The entries form a free list (`next`, ending at desc_num);
 * popping a list of n ring descriptors takes n entries from it, copies each descriptor in (the ring
 * slots are overwritten by used elements, so the copies are what can be resubmitted) and marks the
 * first (head) entry with num / last / counter / inflight. Completing it links its entries back in
 * front of free_head and advances used_idx; publishing the batch, clearing the heads and copying
 * free_head / used_idx / used_wrap_counter to the old_* fields commits it. The old_* fields are the
 * roll-back point of the reconnect algorithm (vhost-user.rst), which this class implements in
 * recover().
 *
 * One extension, because this queue pops and pushes in the same pass before flushing (the spec and
 * DPDK's rte_vhost_set_inflight_desc_packed assume no pop while a completion batch is open): pops
 * and unpops work on the list at old_free_head (the roll-back list), and while a batch is open its
 * freed entries, in front of free_head, end at the same list: the tail entry of the batch is
 * re-linked whenever the front of the old list changes. So both lists stay well formed at every
 * store, and a roll-back keeps every pop that completed.
 *
 * recover() also returns to the free list any entry that is neither free nor part of an in-flight
 * list (one leaked by a crash in the middle of an unpop), so the list never shrinks.
 */
export class PackedInflight extends InflightRegionBase {
  readonly layout = 'packed' as const;
  // Mirrors (never read back from the region while running).
  private readonly next: Uint16Array;
  private readonly num: Uint16Array;
  private readonly last: Uint16Array;
  private freeHead = 0;
  /** Front of the roll-back list (old_free_head) and how many entries it holds. */
  private oldFree = 0;
  private oldFreeCount = 0;
  /** Used position as pos + (wrap ? 0 : size), like PackedQueue. */
  private usedL = 0;
  private batchOpen = false;
  /** Last entry of the first list freed in the open batch: its next is the old list's front. */
  private batchTail = 0;
  private batchFreed = 0;

  constructor(bytes: Uint8Array, queueSize: number) {
    super('packed', bytes, queueSize);
    this.next = new Uint16Array(queueSize);
    this.num = new Uint16Array(queueSize);
    this.last = new Uint16Array(queueSize);
  }

  get freeHeadField(): number {
    return this.u16[6]!;
  }
  get oldFreeHead(): number {
    return this.u16[7]!;
  }
  get usedIdx(): number {
    return this.u16[8]!;
  }
  get oldUsedIdx(): number {
    return this.u16[9]!;
  }
  get usedWrap(): boolean {
    return this.u8[20] === 1;
  }
  get oldUsedWrap(): boolean {
    return this.u8[21] === 1;
  }

  /** Decoded entry i (reads the region; tests, diagnostics). */
  entry(i: number): PackedInflightEntry {
    if (!(Number.isInteger(i) && i >= 0 && i < this.size)) throw new RangeError(`entry ${i} outside 0..${this.size - 1}`);
    const w = 8 + 8 * i;
    const h = 16 + 16 * i;
    return {
      inflight: this.u8[32 + 32 * i]!,
      next: this.u16[h + 1]!,
      last: this.u16[h + 2]!,
      num: this.u16[h + 3]!,
      counter: (BigInt(this.u32[w + 3]!) << 32n) | BigInt(this.u32[w + 2]!),
      id: this.u16[h + 8]!,
      flags: this.u16[h + 9]!,
      len: this.u32[w + 5]!,
      addr: (BigInt(this.u32[w + 7]!) << 32n) | BigInt(this.u32[w + 6]!),
    };
  }

  /**
   * Initializes a blank region: the free list 0 → 1 → ... → desc_num (DPDK's GET_INFLIGHT_FD does the
   * same), used_idx / old_used_idx and both wrap counters := the queue's used position now, then
   * version = 1.
   */
  init(opts: InflightInitOptions = {}): void {
    const S = this.size;
    const usedIdx = opts.usedIdx ?? 0;
    if (!(Number.isInteger(usedIdx) && usedIdx >= 0 && usedIdx < S)) throw new RangeError(`init: used position ${usedIdx} outside the ring`);
    const wrap = opts.usedWrap ?? true;
    this.initHeader(opts);
    const u16 = this.u16;
    for (let j = 0; j < S; j++) {
      u16[17 + 16 * j] = j + 1;
      this.next[j] = j + 1;
    }
    u16[8] = usedIdx;
    u16[9] = usedIdx;
    this.u8[20] = wrap ? 1 : 0;
    this.u8[21] = wrap ? 1 : 0;
    Atomics.store(u16, 4, INFLIGHT_VERSION);
    this.freeHead = 0;
    this.oldFree = 0;
    this.oldFreeCount = S;
    this.usedL = usedIdx + (wrap ? 0 : S);
    this.batchOpen = false;
    this.active = true;
  }

  /** Checks a region handed back by SET_INFLIGHT_FD without writing it; throws VQ_INFLIGHT_REGION / _CORRUPT. */
  validate(): void {
    this.checkHeader();
    const S = this.size;
    const u16 = this.u16;
    const u8 = this.u8;
    // desc_num itself ends a free list (the last entry of DPDK's initial list points there).
    if (u16[6]! > S) throw corrupt(`free_head ${u16[6]} > desc_num ${S}`);
    if (u16[7]! > S) throw corrupt(`old_free_head ${u16[7]} > desc_num ${S}`);
    if (u16[8]! >= S) throw corrupt(`used_idx ${u16[8]} >= desc_num ${S}`);
    if (u16[9]! >= S) throw corrupt(`old_used_idx ${u16[9]} >= desc_num ${S}`);
    if (u8[20]! > 1 || u8[21]! > 1) throw corrupt(`wrap counters ${u8[20]} / ${u8[21]} are not 0 or 1`);
    for (let i = 0; i < S; i++) {
      const f = u8[32 + 32 * i]!;
      if (f > 1) throw corrupt(`desc[${i}].inflight is ${f}, not 0 or 1`);
    }
  }

  /**
   * The spec's reconnect algorithm. `ringFlags(pos)` returns the flags of ring descriptor `pos` now.
   *
   * 1. If (used_idx, used_wrap_counter) != (old_used_idx, old_used_wrap_counter), a batch was in
   *    progress. It was published iff the ring descriptor at old_used_idx no longer carries the
   *    available flags of lap old_used_wrap_counter (AVAIL = wrap, USED = !wrap): then commit it
   *    (old_* := current). We also count it as published when free_head's entry (the batch's last
   *    head) already has inflight = 0: that is only cleared after publication, and it covers a crash
   *    between the two old_used_* stores, where the pair names no real position.
   * 2. Roll back: free_head, used_idx, used_wrap_counter := old_*.
   * 3. Clear inflight of every entry on the free list.
   * 4. The entries still inflight are the heads to resubmit, in counter order.
   *
   * Everything is checked before anything is written: indices < desc_num, the free list and each
   * head's list (num entries through `next`, ending at `last`) without loops or overlaps, NEXT on all
   * saved descriptors but the last, distinct buffer ids, at most desc_num descriptors in flight.
   */
  recover(ringFlags: (pos: number) => number): PackedRecovery {
    this.validate();
    const S = this.size;
    const u8 = this.u8;
    const u16 = this.u16;
    let freeHead = u16[6]!;
    let oldFreeHead = u16[7]!;
    let usedIdx = u16[8]!;
    let oldUsedIdx = u16[9]!;
    let usedWrap = u8[20]!;
    let oldUsedWrap = u8[21]!;
    let committed = false;
    if (usedIdx !== oldUsedIdx || usedWrap !== oldUsedWrap) {
      const f = ringFlags(oldUsedIdx) & (F_AVAIL | F_USED);
      const availPattern = oldUsedWrap === 1 ? F_AVAIL : F_USED;
      const cleared = freeHead !== oldFreeHead && freeHead < S && u8[32 + 32 * freeHead] === 0;
      if (f !== availPattern || cleared) {
        committed = true;
        oldFreeHead = freeHead;
        oldUsedIdx = usedIdx;
        oldUsedWrap = usedWrap;
      }
    }
    freeHead = oldFreeHead;
    usedIdx = oldUsedIdx;
    usedWrap = oldUsedWrap;

    // 0 = unaccounted, 1 = on the free list, 2 = part of an in-flight list.
    const state = new Uint8Array(S);
    let freeCount = 0;
    for (let e = freeHead; e !== S; ) {
      if (e > S) throw corrupt(`free list: next ${e} > desc_num ${S}`);
      if (state[e] !== 0) throw corrupt(`free list: loop at entry ${e}`);
      state[e] = 1;
      freeCount++;
      e = u16[17 + 16 * e]!;
    }

    const heads: number[] = [];
    const hi: number[] = [];
    const lo: number[] = [];
    for (let i = 0; i < S; i++) {
      if (state[i] === 0 && u8[32 + 32 * i] === 1) {
        heads.push(i);
        lo.push(this.u32[10 + 8 * i]!);
        hi.push(this.u32[11 + 8 * i]!);
      }
    }
    sortByCounter(heads, hi, lo);
    const counts = new Uint16Array(heads.length);
    const descs = new Uint32Array(4 * S);
    const ids = new Set<number>();
    let total = 0;
    for (let k = 0; k < heads.length; k++) {
      const h = heads[k]!;
      const n = u16[19 + 16 * h]!;
      const lastE = u16[18 + 16 * h]!;
      if (n === 0 || n > S) throw corrupt(`entry ${h}: num ${n} not in 1..${S}`);
      if (total + n > S) throw corrupt(`more than ${S} descriptors in flight`);
      let e = h;
      for (let j = 0; j < n; j++) {
        if (e >= S) throw corrupt(`entry ${h}: list reaches entry ${e} >= desc_num ${S}`);
        if (state[e] !== 0) {
          throw corrupt(`entry ${h}: list ${state[e] === 1 ? 'runs into the free list' : 'overlaps another list or loops'} at entry ${e}`);
        }
        state[e] = 2;
        const flags = u16[25 + 16 * e]!;
        const more = (flags & F_NEXT) !== 0;
        if (more !== j + 1 < n) throw corrupt(`entry ${h}: saved descriptor ${j + 1} of ${n} ${more ? 'has' : 'lacks'} NEXT`);
        const o = 4 * (total + j);
        const w = 8 + 8 * e;
        descs[o] = this.u32[w + 6]!;
        descs[o + 1] = this.u32[w + 7]!;
        descs[o + 2] = this.u32[w + 5]!;
        descs[o + 3] = (u16[24 + 16 * e]! | (flags << 16)) >>> 0;
        if (j + 1 < n) e = u16[17 + 16 * e]!;
      }
      if (e !== lastE) throw corrupt(`entry ${h}: last is ${lastE} but its ${n} entries end at ${e}`);
      const id = u16[24 + 16 * e]!;
      if (ids.has(id)) throw corrupt(`buffer id ${id} is in flight twice`);
      ids.add(id);
      counts[k] = n;
      total += n;
    }

    // ---- apply: every prefix of these stores recovers to the same result ----
    // Step 3 first: when committing, this clears the published batch's heads (the spec's step 7), so
    // that the old_* stores below go through the same states as commitUsed(), which step 1
    // recognizes; when rolling back it only touches entries off the batch.
    for (let i = 0; i < S; i++) if (state[i] === 1 && u8[32 + 32 * i] !== 0) Atomics.store(u8, 32 + 32 * i, 0);
    if (committed) {
      Atomics.store(u16, 9, oldUsedIdx);
      Atomics.store(u8, 21, oldUsedWrap);
      Atomics.store(u16, 7, oldFreeHead);
    }
    Atomics.store(u16, 8, usedIdx);
    Atomics.store(u8, 20, usedWrap);
    Atomics.store(u16, 6, freeHead);
    // Leaked entries go back in front of both lists, one complete prepend at a time.
    let leaked = 0;
    for (let i = 0; i < S; i++) {
      if (state[i] !== 0) continue;
      if (u8[32 + 32 * i] !== 0) Atomics.store(u8, 32 + 32 * i, 0);
      u16[17 + 16 * i] = freeHead;
      freeHead = i;
      Atomics.store(u16, 6, freeHead);
      Atomics.store(u16, 7, freeHead);
      state[i] = 1;
      freeCount++;
      leaked++;
    }

    // Mirrors.
    for (let i = 0; i < S; i++) this.next[i] = u16[17 + 16 * i]!;
    for (let k = 0; k < heads.length; k++) {
      const h = heads[k]!;
      this.num[h] = counts[k]!;
      this.last[h] = u16[18 + 16 * h]!;
    }
    this.freeHead = freeHead;
    this.oldFree = freeHead;
    this.oldFreeCount = freeCount;
    this.usedL = usedIdx + (usedWrap === 1 ? 0 : S);
    this.batchOpen = false;
    this.continueCounter(hi, lo);
    this.active = true;
    log(
      'packed region recovered: batch %s, %d lists (%d descriptors) to resubmit, %d leaked entries freed',
      committed ? 'committed' : 'rolled back or none',
      heads.length,
      total,
      leaked,
    );
    return {
      entries: Uint16Array.from(heads),
      descCounts: counts,
      descs: descs.subarray(0, 4 * total),
      usedIdx,
      usedWrap: usedWrap === 1,
      descTotal: total,
    };
  }

  private link(e: number, to: number): void {
    this.u16[17 + 16 * e] = to;
    this.next[e] = to;
  }

  /**
   * A list of `n` descriptors was taken from ring position `pos` (ring = the descriptor ring as u32
   * words, `ringSize` positions): copies them into entries from the roll-back free list and marks its
   * head. Returns the head entry, or -1 when the free list is shorter than n (cannot happen while the
   * queue's capacity check holds).
   */
  onPop(ring: Uint32Array, pos: number, n: number, ringSize: number): number {
    if (!(n >= 1 && n <= this.oldFreeCount)) return -1;
    const u16 = this.u16;
    const u32 = this.u32;
    const next = this.next;
    const h = this.oldFree;
    let e = h;
    let p = pos;
    for (let k = 0; ; k++) {
      const r = p << 2;
      const w = 8 + 8 * e;
      const idf = ring[r + 3]!;
      u32[w + 6] = ring[r]!;
      u32[w + 7] = ring[r + 1]!;
      u32[w + 5] = ring[r + 2]!;
      u16[24 + 16 * e] = idf & 0xffff;
      u16[25 + 16 * e] = idf >>> 16;
      if (k + 1 === n) break;
      e = next[e]!;
      p = p + 1 === ringSize ? 0 : p + 1;
    }
    const y = next[e]!;
    u16[18 + 16 * h] = e;
    u16[19 + 16 * h] = n;
    this.takeCounter(10 + 8 * h);
    this.num[h] = n;
    this.last[h] = e;
    // The head is complete before it is marked; the pop is final once old_free_head moves past it.
    Atomics.store(this.u8, 32 + 32 * h, 1);
    if (this.batchOpen) this.link(this.batchTail, y);
    Atomics.store(u16, 7, y);
    if (!this.batchOpen) {
      Atomics.store(u16, 6, y);
      this.freeHead = y;
    }
    this.oldFree = y;
    this.oldFreeCount -= n;
    return h;
  }

  /** The list at head entry `h` was given back (unpop): no longer in flight, its entries free again. */
  onUnpop(h: number): void {
    if (!(h >= 0 && h < this.size)) throw new RangeError(`onUnpop: entry ${h} outside the queue`);
    // Any prefix of these stores recovers correctly, because recover() derives the ring position from
    // the lists still in flight: before old_free_head moves the list is simply still in flight
    // (resubmitted, not read again from the ring), after it the list is free (read again). Clearing
    // first means a crash in between leaks the entries instead, which recover() frees.
    Atomics.store(this.u8, 32 + 32 * h, 0);
    this.link(this.last[h]!, this.oldFree);
    if (this.batchOpen) this.link(this.batchTail, h);
    Atomics.store(this.u16, 7, h);
    if (!this.batchOpen) {
      Atomics.store(this.u16, 6, h);
      this.freeHead = h;
    }
    this.oldFree = h;
    this.oldFreeCount += this.num[h]!;
  }

  /** Steps 1-5 for one completed list (head entry `h`), before the batch is published. */
  beginUsed(h: number): void {
    if (!(h >= 0 && h < this.size)) throw new RangeError(`beginUsed: entry ${h} outside the queue`);
    const last = this.last[h]!;
    const n = this.num[h]!;
    if (!this.batchOpen) {
      this.batchOpen = true;
      this.batchTail = last;
      this.batchFreed = 0;
    }
    this.link(last, this.freeHead);
    this.freeHead = h;
    Atomics.store(this.u16, 6, h);
    const S = this.size;
    let L = this.usedL + n;
    if (L >= 2 * S) L -= 2 * S;
    this.usedL = L;
    // The pair is consistent again before the batch is published (the only time it is compared).
    Atomics.store(this.u16, 8, L < S ? L : L - S);
    Atomics.store(this.u8, 20, L < S ? 1 : 0);
    this.batchFreed += n;
  }

  /**
   * Steps 7-8, after the queue published the batch (the first used element's flags): clears the heads
   * `entries[0..count)`, then old_used_idx, old_used_wrap_counter and, last, old_free_head (see
   * recover(), step 1, for why this order).
   */
  commitUsed(entries: ArrayLike<number>, count: number): void {
    const u8 = this.u8;
    for (let i = 0; i < count; i++) Atomics.store(u8, 32 + 32 * entries[i]!, 0);
    const S = this.size;
    const L = this.usedL;
    Atomics.store(this.u16, 9, L < S ? L : L - S);
    Atomics.store(u8, 21, L < S ? 1 : 0);
    Atomics.store(this.u16, 7, this.freeHead);
    this.oldFree = this.freeHead;
    this.oldFreeCount += this.batchFreed;
    this.batchFreed = 0;
    this.batchOpen = false;
  }

  /** Head entries whose inflight byte is set (reads the region; tests, diagnostics). */
  inflightEntries(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.u8[32 + 32 * i] === 1) out.push(i);
    return out;
  }

  /** Entries on the free list from free_head (reads the region, bounded; tests, diagnostics). */
  freeList(): number[] {
    const out: number[] = [];
    for (let e = this.u16[6]!; e < this.size && out.length <= this.size; e = this.u16[17 + 16 * e]!) out.push(e);
    return out;
  }
}

export type InflightRegion = SplitInflight | PackedInflight;

/** Wraps one queue's slice of the inflight buffer (`bytes`, at least inflightQueueSize bytes). */
export function openInflightRegion(layout: InflightLayout, bytes: Uint8Array, queueSize: number): InflightRegion {
  return layout === 'split' ? new SplitInflight(bytes, queueSize) : new PackedInflight(bytes, queueSize);
}
