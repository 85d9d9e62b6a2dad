/**
 * What the split and packed engines share: the drain loop (queue.ts drainQueue), the sticky `broken`
 * state, the current memory table and its re-mapping on SET_MEM_TABLE, and the dirty-log hook.
 * Each format supplies `mapRings` (its ring views) and may react to a re-map in `remapped`.
 */
import createDebug from 'debug';
import { VirtqError, type VirtqErrorCode } from './errors.ts';
import type { GuestMemory, Span } from './memory.ts';
import {
  BURST_MAX,
  DIRECT_OK,
  drainQueue,
  type DirectBuffer,
  type DirectBurst,
  type DrainPlan,
  type DrainResult,
  type Virtqueue,
} from './queue.ts';

const log = createDebug('vhost:vq');

export abstract class QueueCore {
  /** Sticky guest error; null while the queue is healthy. */
  broken: VirtqError | null = null;
  abstract readonly label: string;
  protected mem: GuestMemory;
  /** False after setMemory() failed: the ring views point into a table that is gone. */
  protected ringsMapped = true;

  protected constructor(mem: GuestMemory) {
    this.mem = mem;
  }

  /** (Re)creates the ring views in `mem`; throws VirtqError when the rings are not mapped there. */
  protected abstract mapRings(mem: GuestMemory): void;
  /** Called after a successful re-map (e.g. to rebind a chain walker). */
  protected remapped(): void {}

  /**
   * Switches to a new memory table (SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG): re-maps the rings.
   * Returns false and marks the queue broken if the rings are no longer mapped / contiguous.
   * Chains popped before the switch must not be used afterwards.
   */
  setMemory(mem: GuestMemory): boolean {
    try {
      this.mapRings(mem);
    } catch (e) {
      const err = e instanceof VirtqError ? e : new VirtqError('VQ_UNMAPPED', String(e), { cause: e });
      this.ringsMapped = false;
      this.markBroken(err.code, `rings not mapped in the new memory table: ${err.message}`);
      return false;
    }
    this.mem = mem;
    this.remapped();
    return true;
  }

  get memory(): GuestMemory {
    return this.mem;
  }

  /**
   * A translation fault thrown while walking a chain (ACCESS_PLATFORM, virtqueue/iotlb.ts): a miss
   * leaves the queue as it was (nothing consumed; the session asks the frontend for the mapping and
   * kicks the ring when it arrives), a denied access is the guest's error and breaks the queue. A page
   * not migrated yet (postcopy, VQ_PAGE_MISSING) is a miss too. Anything else is a bug and propagates.
   */
  protected walkFault(e: unknown): false {
    if (e instanceof VirtqError && (e.code === 'VQ_IOTLB_MISS' || e.code === 'VQ_PAGE_MISSING')) {
      if (e.code === 'VQ_IOTLB_MISS') this.iotlbMisses++;
      else this.pageMisses++;
      return false;
    }
    if (e instanceof VirtqError && e.code === 'VQ_IOTLB_PERM') {
      this.markBroken('VQ_IOTLB_PERM', e.message);
      return false;
    }
    throw e;
  }
  private readonly drainResult: DrainResult = { processed: 0, notify: false, more: false, stopped: false };

  /**
   * The device loop of both formats (queue.ts drainQueue): one result object per queue, nothing
   * allocated per call. Both subclasses implement Virtqueue, hence the cast.
   */
  drain(plan: DrainPlan): DrainResult {
    return drainQueue(this as unknown as Virtqueue, plan, this.drainResult);
  }

  /**
   * Virtqueue.popBurst, generic form: popDirect one buffer at a time (a format may do better). A
   * buffer in another region than the first, or not at the same address distance from its view
   * (IOVAs map pages anywhere), is given back and ends the run.
   */
  popBurst(out: DirectBurst, max: number): number {
    const q = this as unknown as Virtqueue;
    const one = out.one;
    const lim = max < BURST_MAX ? max : BURST_MAX;
    let n = 0;
    while (n < lim && q.popDirect(one) === DIRECT_OK) {
      if (n === 0) {
        out.bytes = one.bytes;
        out.addrBase = one.addr - one.offset;
      } else if (one.bytes !== out.bytes || one.addr - one.offset !== out.addrBase) {
        q.unpop(1);
        break;
      }
      out.offset[n] = one.offset;
      out.byteLen[n] = one.byteLen;
      out.id[n] = one.id;
      n++;
    }
    out.count = n;
    return n;
  }

  /** Virtqueue.pushUsedBurst, generic form: pushUsed per entry. */
  pushUsedBurst(b: DirectBurst, n: number): void {
    const q = this as unknown as Virtqueue;
    for (let k = 0; k < n; k++) q.pushUsed(b.id[k]!, b.usedLen[k]!);
  }

  /**
   * popDirect's last step, both formats: `out` := guest range [addr, addr + len) with buffer id `id`
   * when the range lies in one region: 1. When it does not: -1 (pop() takes the buffer). A
   * translation fault is handled as pop() handles it (walkFault: an IOTLB miss parks the queue, a
   * denial breaks it): 0.
   */
  protected resolveDirect(out: DirectBuffer, addr: number, len: number, id: number): number {
    // Translated straight into `out` (a Span): its fields are unspecified unless the answer is 1.
    const r = this.translateWhole(addr, len, out.write, out);
    if (r !== 1) return r;
    out.id = id;
    out.addr = addr;
    return 1;
  }

  /**
   * [addr, addr + len) into `out` when it lies whole in one region: 1; not whole or unmapped: -1
   * (the walker judges it); a translation fault, handled as pop() handles it (walkFault): 0.
   */
  protected translateWhole(addr: number, len: number, write: boolean, out: Span): number {
    try {
      return this.mem.translate(addr, len, write, out) && out.byteLen === len ? 1 : -1;
    } catch (e) {
      this.walkFault(e);
      return 0;
    }
  }

  /** Pops that stopped on an IOTLB miss (diagnostics, tests). */
  iotlbMisses = 0;
  /** Pops that stopped on a page not migrated yet (postcopy; diagnostics, tests). */
  pageMisses = 0;

  /**
   * What attachInflight checks before touching anything (both ring formats): the region's layout
   * and size match this queue, none is attached yet, nothing was popped or pushed, the rings are
   * mapped. Frontend mistakes are VirtqErrors; calling at the wrong time is a host bug (RangeError).
   */
  protected checkInflightAttach(
    region: { layout: string; size: number },
    layout: 'split' | 'packed',
    attached: boolean,
    busy: boolean,
  ): void {
    if (region.layout !== layout) {
      throw new VirtqError('VQ_INFLIGHT_REGION', `${this.label}: a ${region.layout} inflight region on a ${layout} queue`);
    }
    if (region.size !== this.queueSize) {
      throw new VirtqError('VQ_INFLIGHT_REGION', `${this.label}: inflight region for ${region.size} entries on a queue of ${this.queueSize}`);
    }
    if (attached) throw new RangeError(`${this.label}: an inflight region is already attached`);
    if (busy) throw new RangeError(`${this.label}: attachInflight with chains popped or pushed`);
    if (!this.ringsMapped) throw new VirtqError('VQ_UNMAPPED', `${this.label}: rings are not mapped`);
  }
  /** The ring size (for the shared checks above). */
  protected abstract get queueSize(): number;

  /** The first guest error wins; later ones are not recorded. */
  protected markBroken(code: VirtqErrorCode, message: string): void {
    if (this.broken !== null) return;
    this.broken = new VirtqError(code, `${this.label}: ${message}`);
    log('%s broken: %s %s', this.label, code, message);
  }

  /** Reports a device write of guest memory to the dirty log, when one is attached. */
  protected logWrite(gpa: number, byteLen: number): void {
    const hook = this.mem.onWrite;
    if (hook !== undefined) hook.call(this.mem, gpa, byteLen);
  }
}
