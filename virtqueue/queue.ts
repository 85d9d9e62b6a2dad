/**
 * The device-facing virtqueue contract shared by the split (virtio v1.2 2.7) and packed (2.8) engines,
 * so devices and the session drive either through one type. Everything here is ring-format neutral:
 * `Chain.head` is what goes back in `pushUsed` (split: head descriptor index; packed: buffer id), and
 * `lastAvailIdx` / `usedIdx` are the format's own positions (split: free-running 16-bit indices;
 * packed: ring positions 0..size-1, with wrap counters on `PackedQueue`).
 */
import { Chain } from './chain.ts';
import type { VirtqError } from './errors.ts';
import type { InflightAttachResult, InflightRegion } from './inflight.ts';
import type { GuestMemory, Span } from './memory.ts';

export interface VirtqueueStats {
  /** Chains popped (unpops subtract). */
  popped: number;
  /** Of those, buffers popped by popDirect (the one-descriptor fast path; unpops not subtracted). */
  poppedDirect: number;
  /** Used elements pushed. */
  pushed: number;
  /** Used publications (split: used.idx stores; packed: batch flag releases). */
  flushes: number;
  /** Flushes after which the driver had to be notified. */
  notifies: number;
  /** Flushes whose notification the driver suppressed. */
  suppressed: number;
}

export interface DrainResult {
  /** Chains completed (pushed as used). */
  processed: number;
  /** The driver must be notified (call eventfd): some flush crossed the driver's event / flags allowed it. */
  notify: boolean;
  /**
   * Work remains: the budget ran out with chains still available. Notifications are left disabled;
   * call drain() again later (e.g. setImmediate).
   */
  more: boolean;
  /** `fn` returned false: that chain was given back (unpop) and notifications were re-enabled. */
  stopped: boolean;
}

/** What drain() hands each chain to: bytes written into it (used len), or false to stop. */
export type ChainHandler = (chain: Chain) => number | false;

/**
 * One available buffer that is a single direct descriptor lying in one memory region, resolved in
 * place by `popDirect`: guest memory `bytes[offset, offset + byteLen)`, buffer id `id` (what pushUsed
 * takes), guest address `addr` (what the dirty log is told). The fast path of a device: no Chain,
 * no segment arrays, no cursor. `write` is set once by the owner: the direction the device expects
 * (true: a device-writable buffer, e.g. virtio-net RX; false: device-readable, e.g. TX).
 */
export interface DirectBuffer extends Span {
  write: boolean;
  id: number;
  addr: number;
}

export function createDirectBuffer(write: boolean): DirectBuffer {
  return { bytes: new Uint8Array(0), offset: 0, byteLen: 0, write, id: 0, addr: 0 };
}

/** The most buffers one popBurst hands out (DPDK's burst size; a burst is one pass of the device). */
export const BURST_MAX = 32;

const NO_BYTES = new Uint8Array(0);

/**
 * Up to BURST_MAX buffers popped together by `popBurst`: each would have been a DirectBuffer of
 * popDirect (one direct descriptor of direction `write`, in one region), and all lie in the SAME
 * linear window of guest addresses, `bytes`. Entry k is `bytes[offset[k], offset[k] + byteLen[k])`,
 * buffer id `id[k]`, guest address `addrBase + offset[k]` (what the dirty log is told). The device
 * fills `usedLen[k]` for the entries it completes (pushUsedBurst). Struct-of-arrays so a burst is
 * walked with plain typed-array loads and allocates nothing; offsets are u32 (a view is < 4 GiB).
 */
export class DirectBurst {
  count = 0;
  bytes: Uint8Array = NO_BYTES;
  /** The guest address of bytes[0] (a descriptor address: an IOVA under a vIOMMU). */
  addrBase = 0;
  readonly offset = new Uint32Array(BURST_MAX);
  readonly byteLen = new Uint32Array(BURST_MAX);
  readonly id = new Uint16Array(BURST_MAX);
  readonly usedLen = new Uint32Array(BURST_MAX);
  /** popBurst's scratch buffer (the generic form pops through popDirect). */
  readonly one: DirectBuffer;
  constructor(readonly write: boolean) {
    this.one = createDirectBuffer(write);
  }
}

/**
 * What drain() hands a burst to: the number of entries completed from the front, in order, with
 * their used lengths in `usedLen`. The rest are given back (unpop) and the pass stops as for false.
 */
export type BurstHandler = (b: DirectBurst) => number;

/** popDirect answers: nothing available (or broken), one buffer popped, or "pop() this one". */
export const DIRECT_EMPTY = 0;
export const DIRECT_OK = 1;
/**
 * The next buffer is not a single direct descriptor of the expected direction in one region (a
 * chain, an indirect table, a descriptor crossing regions, an invalid descriptor), or the queue
 * tracks inflight I/O: nothing was consumed; `pop()` resolves it (and reports errors). An IOTLB
 * miss is answered as pop() answers it: DIRECT_EMPTY with the queue parked (a denial: broken).
 */
export const DIRECT_CHAIN = -1;

/** What drain() hands a direct buffer to: like ChainHandler. */
export type DirectHandler = (buf: DirectBuffer) => number | false;

/**
 * What one drain() call does (drainQueue has the loop's rules). Built once by its owner (per ring or
 * per device, createDrainPlan) and reused, so the device loop allocates nothing; an owner changes only
 * values between calls (e.g. `poll`, `budget`). Every field is always present, null rather than
 * absent, so all plans share one shape (one hidden class for V8's inline caches in drainQueue).
 */
export interface DrainPlan {
  /** Gets every chain pop() resolves: the bytes it wrote (used len), or false to stop. */
  onChain: ChainHandler;
  /** Most chains and buffers completed per call; more left over: the result says `more`. */
  budget: number;
  /** The Chain pop() resolves into (the owner's, reused). */
  chain: Chain;
  /** Busy polling: an empty ring returns with notifications still disabled (the caller enables them). */
  poll: boolean;
  /** The fast path: gets the buffers popDirect resolves (one direct descriptor), or null (all go to onChain). */
  onDirect: DirectHandler | null;
  /** popDirect's buffer for onDirect (non-null when onDirect is). */
  directBuf: DirectBuffer | null;
  /** Gets runs of such buffers popped together (popBurst), or null (one by one). */
  onBurst: BurstHandler | null;
  /** popBurst's burst for onBurst (non-null when onBurst is). */
  burstBuf: DirectBurst | null;
}

/** A DrainPlan with every field set (the rest: a new Chain, no polling, no fast paths). */
export function createDrainPlan(
  onChain: ChainHandler,
  budget: number,
  opt: Partial<Omit<DrainPlan, 'onChain' | 'budget'>> = {},
): DrainPlan {
  return {
    onChain,
    budget,
    chain: opt.chain ?? new Chain(),
    poll: opt.poll ?? false,
    onDirect: opt.onDirect ?? null,
    directBuf: opt.directBuf ?? null,
    onBurst: opt.onBurst ?? null,
    burstBuf: opt.burstBuf ?? null,
  };
}

/**
 * One virtqueue, device side. Guest errors never throw: they set `broken` (sticky) and `pop` returns
 * false from then on. RangeError is thrown only for device (host code) bugs: pushing an id that is not
 * in flight, unpopping more than is outstanding.
 */
export interface Virtqueue {
  readonly size: number;
  readonly label: string;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  readonly indirect: boolean;
  /** Sticky guest error; null while the queue is healthy. */
  readonly broken: VirtqError | null;
  readonly stats: VirtqueueStats;
  readonly memory: GuestMemory;
  /** Next available position the device will read (for GET_VRING_BASE; packed adds the wrap counter). */
  readonly lastAvailIdx: number;
  /** Used position as published to the driver (pending pushes not included). */
  readonly usedIdx: number;
  /** Used elements pushed but not yet published. */
  readonly pendingUsed: number;
  readonly notificationsEnabled: boolean;

  /** Re-maps the rings in a new memory table; false (and broken) when they are no longer mapped. */
  setMemory(mem: GuestMemory): boolean;
  /** Resolves the next available chain into `chain`; false when none is available or the queue is broken. */
  pop(chain: Chain): boolean;
  /**
   * The fast form of pop() for the common buffer, one direct descriptor (DirectBuffer): DIRECT_OK
   * with `out` filled and the buffer popped (pushUsed / unpop as for pop), DIRECT_EMPTY, or
   * DIRECT_CHAIN with nothing consumed (call pop()). Same validation as pop(): whatever it cannot
   * vouch for is left to pop(), so a hostile descriptor is judged by one walker.
   */
  popDirect(out: DirectBuffer): number;
  /**
   * Up to `max` (at most BURST_MAX) buffers that popDirect would hand out one by one, popped together into
   * `out` (DirectBurst): the run stops before the first buffer popDirect would not take (a chain, an
   * invalid descriptor: left for pop() to judge) and before one in another memory region. Returns
   * the count (also `out.count`); 0 pops nothing. Bookkeeping as for popDirect (unpop, pushUsed).
   */
  popBurst(out: DirectBurst, max: number): number;
  /** pushUsed for entries [0, n) of a burst, with used lengths `b.usedLen` (not visible before flushUsed). */
  pushUsedBurst(b: DirectBurst, n: number): void;
  /** Gives back the last n popped (and not pushed) chains; they will be popped again. */
  unpop(n?: number): void;
  /** Records a completed chain (id `head`, `byteLen` bytes written); visible after flushUsed(). */
  pushUsed(head: number, byteLen: number): void;
  /** Publishes pushed elements; true when the driver must be notified. */
  flushUsed(): boolean;
  /** Asks the driver not to send available-buffer notifications. */
  disableNotification(): void;
  /** Asks for notifications again; true when buffers arrived that must be processed now (the race). */
  enableNotification(): boolean;
  /** True when the driver has made a chain available that has not been popped. */
  hasAvailable(): boolean;
  /**
   * The device loop (drainQueue): pop, hand to the plan's handlers, push, flush, re-enable with the
   * race re-check. The result object is the queue's, overwritten by the next call.
   */
  drain(plan: DrainPlan): DrainResult;

  /** The attached inflight region (vhost-user.rst "Inflight I/O tracking"), or null. */
  readonly inflight: InflightRegion | null;
  /** Chains from before a restart that pop() has still to hand out (hasAvailable() is true meanwhile). */
  readonly resubmitPending: number;
  /**
   * Attaches this queue's region of the inflight buffer (its layout must match the ring format)
   * before the ring runs; recovers and resubmits what it holds. Throws VirtqError
   * (VQ_INFLIGHT_REGION / VQ_INFLIGHT_CORRUPT) without changing the queue when it is unusable.
   */
  attachInflight(region: InflightRegion): InflightAttachResult;
}

/**
 * The device loop, shared by both ring formats and owned here so devices cannot get EVENT_IDX wrong
 * (vm-virtio leaves it to each device): disable notifications, pop and hand each chain to
 * `plan.onChain` (up to `plan.budget` chains), push the returned length, flush once per pass, enable
 * notifications and re-check for entries that raced with enabling (virtio v1.2 2.7.10 / 2.8.x);
 * repeat until the ring stays empty or the budget is spent.
 *
 * A handler returns the bytes it wrote into the chain (used len), or false to stop: that chain is
 * given back (unpop), notifications are re-enabled and the result says `stopped` (the device resumes
 * on its own trigger or the next kick). Budget exhausted with chains left: `more`, notifications stay
 * disabled and the caller must call drain again. Guest errors end the loop with `broken` set.
 * `out` is filled and returned (one object per queue: the loop allocates nothing).
 *
 * `onDirect` (with `directBuf`): buffers that popDirect resolves go to it instead of `onChain` (the
 * device's fast path); everything else still goes through pop() and `onChain`, in ring order.
 *
 * `onBurst` (with `burstBuf`): runs of such buffers are popped together (popBurst) and handed over as
 * one burst; what popBurst does not take goes one by one as above. The burst handler says how many
 * it completed; the rest are given back as for false.
 *
 * `poll` (busy polling, spec-notes/performance.md): an empty ring returns with notifications still
 * disabled; the caller keeps polling `hasAvailable()` and must call `enableNotification()` (and
 * handle its race answer) before it stops polling, or no kick will ever come.
 */
export function drainQueue(q: Virtqueue, plan: DrainPlan, out: DrainResult): DrainResult {
  // The plan is read once: a handler that changes it affects the next call, not this one.
  const fn = plan.onChain;
  const budget = plan.budget;
  const chain = plan.chain;
  const poll = plan.poll;
  const direct = plan.onDirect;
  const dbuf = plan.directBuf;
  const burst = plan.onBurst;
  const bbuf = plan.burstBuf;
  out.processed = 0;
  out.notify = false;
  out.more = false;
  out.stopped = false;
  if (q.broken !== null) return out;
  for (;;) {
    q.disableNotification();
    while (out.processed < budget) {
      if (burst !== null) {
        const n = q.popBurst(bbuf!, budget - out.processed);
        if (n !== 0) {
          const k = burst(bbuf!);
          // The handler's entries are completed in ring order; what it left is given back first.
          if (k < n) q.unpop(n - k);
          q.pushUsedBurst(bbuf!, k);
          out.processed += k;
          if (k < n) {
            out.stopped = true;
            break;
          }
          continue;
        }
      }
      let r: number | false;
      let id: number;
      // `direct` (with its buffer): single-descriptor buffers skip the chain walk; others take pop().
      const d = direct === null ? DIRECT_CHAIN : q.popDirect(dbuf!);
      if (d === DIRECT_EMPTY) break;
      if (d === DIRECT_OK) {
        r = direct!(dbuf!);
        id = dbuf!.id;
      } else {
        if (!q.pop(chain)) break;
        r = fn(chain);
        id = chain.head;
      }
      if (r === false) {
        q.unpop(1);
        out.stopped = true;
        break;
      }
      q.pushUsed(id, r);
      out.processed++;
    }
    if (q.flushUsed()) out.notify = true;
    if (q.broken !== null) return out;
    if (out.stopped) {
      q.enableNotification();
      return out;
    }
    if (out.processed >= budget && q.hasAvailable()) {
      out.more = true;
      return out;
    }
    if (poll) return out;
    if (!q.enableNotification()) return out;
    // Entries arrived while we were enabling: go on (or hand back to the caller if out of budget).
    if (out.processed >= budget) {
      q.disableNotification();
      out.more = true;
      return out;
    }
  }
}
