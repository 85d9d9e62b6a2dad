/**
 * Guest memory as the rings see it while a session's postcopy is live (POSTCOPY_LISTEN .. POSTCOPY_END):
 * a page the frontend has not placed yet parks the ring instead of blocking the process (decisions.md D48).
 *
 * Without this, the event loop's thread touches the missing page and sleeps in the kernel until the
 * frontend places it: every session of the process freezes with it (issue 15), and a frontend that never
 * places the page freezes them for good. Here:
 *   - `PostcopyMemory` wraps the session's GuestMemory (the memory table, or the IOTLB view over it) and
 *     checks every translated range with `PostcopyPages.check`: all its pages resident, or it throws
 *     `PageMissing` (VQ_PAGE_MISSING), which the engine treats like an IOTLB miss: the chain is given
 *     back, nothing is consumed, the ring is not broken (queue-core.ts walkFault). A ring whose areas
 *     (descriptor table, avail / driver area, used / device area) are missing does not start: the queue
 *     constructor maps them through `translate` and the ring runtime parks the start (ring-runtime.ts).
 *   - The missing page is fetched asynchronously: native `prefault` touches it on a helper thread, which
 *     blocks in the kernel until the frontend has placed it (the touch raises the fault the frontend
 *     serves), then calls back on the loop, where the session's parked rings are started and kicked again
 *     (`onArrived`). At most `maxInFlight` prefaults per session; a ring waiting behind the limit is
 *     retried at the next completion.
 *   - Residency is native `mincore` on the mapping registered with the userfaultfd (migration.ts: an
 *     alias of ours, `targetOf`). For shmem/memfd guest memory that is the page cache, which a page placed
 *     with UFFDIO_COPY (into any mapping of the file) is in. A page seen resident is remembered (one byte
 *     per 4 KiB of mapping): placed pages stay placed, so the next translation of it costs no syscall.
 *     Were the frontend to punch it out again, the event loop's read of it through our own, unregistered
 *     mapping allocates a zero page (its guest's memory, its fault) but never blocks: the loop never
 *     touches the registered alias.
 * Nothing of this exists while postcopy is not live: the rings then see the plain memory (no wrapper,
 * no cost).
 */
import createDebug from 'debug';
import type { NativeBinding } from '../../native/types.ts';
import { VirtqError, hexAddr } from '../../virtqueue/errors.ts';
import type { GuestMemory, Span } from '../../virtqueue/memory.ts';

const log = createDebug('vhost:migration');

export type PostcopyNative = Pick<NativeBinding, 'mincore' | 'prefault' | 'mmapAddress'>;

/** Granularity of the residency memo (pages of 4 KiB, or parts of larger pages: both are exact). */
const PAGE = 4096;
/** Prefaults in flight per session (each is a thread, possibly blocked for as long as the frontend likes). */
export const MAX_PREFAULTS = 8;
/** One prefault touches at most this much (a descriptor can name 4 GiB); the rest comes with the next. */
const MAX_PREFAULT_BYTES = 64 * PAGE;

/** A guest page the frontend has not placed yet: the ring waits for it, nothing is consumed. */
export class PageMissing extends VirtqError {
  constructor(
    /** First guest address (gpa, or IOVA with a vIOMMU) of the range that is not there yet. */
    readonly addr: number,
    readonly write: boolean,
  ) {
    super('VQ_PAGE_MISSING', `guest page at ${hexAddr(addr)} not migrated yet (postcopy): the ring waits for it`);
    this.name = 'PageMissing';
  }
}

/** Residency of one mapping of guest memory (keyed by the buffer the memory table uses). */
interface MappingState {
  view: ArrayBuffer;
  /** Where residency is asked and pages are touched: the mapping registered with the userfaultfd. */
  target: ArrayBuffer;
  /** Sub-4 KiB offset of byte 0 of the mapping in the address space (pages are counted from there). */
  delta: number;
  /** 1 = page known resident. */
  present: Uint8Array;
  /** Pages with a prefault under way. */
  fetching: Set<number>;
}

export interface PostcopyPagesStats {
  /** Translations that found a page missing. */
  missing: number;
  /** Prefaults started / completed. */
  prefaults: number;
  arrived: number;
  /** Missing pages not fetched at once because `maxInFlight` prefaults were under way. */
  deferred: number;
}

/** The missing-page bookkeeping of one session. */
export class PostcopyPages {
  private readonly maps = new WeakMap<ArrayBuffer, MappingState>();
  private last: MappingState | null = null;
  private closed = false;
  /** Prefaults started and not completed. */
  inFlight = 0;
  readonly stats: PostcopyPagesStats = { missing: 0, prefaults: 0, arrived: 0, deferred: 0 };

  constructor(
    private readonly sys: PostcopyNative,
    /** The mapping to ask and touch for one of ours (the userfaultfd-registered alias; itself without one). */
    private readonly targetOf: (view: ArrayBuffer) => ArrayBuffer,
    /** A prefault completed (on the loop): parked rings may go on. */
    private readonly onArrived: () => void,
    readonly label = 'postcopy',
    readonly maxInFlight = MAX_PREFAULTS,
  ) {}

  /**
   * -1 when every page of `bytes[offset, offset + byteLen)` is resident. Else the offset in `bytes` of the
   * first byte on a page that is not; its page is being fetched (or will be, once fewer than
   * `maxInFlight` prefaults are under way: a later check asks again).
   */
  check(bytes: Uint8Array, offset: number, byteLen: number): number {
    if (byteLen <= 0) return -1;
    const ab = bytes.buffer as ArrayBuffer;
    const last = this.last;
    const m = last !== null && last.view === ab ? last : this.stateOf(ab);
    const abs = bytes.byteOffset + offset;
    const d = m.delta;
    const lastPage = Math.floor((abs + byteLen - 1 + d) / PAGE);
    const present = m.present;
    let p = Math.floor((abs + d) / PAGE);
    while (p <= lastPage && present[p] === 1) p++;
    if (p > lastPage) return -1;
    const from = Math.max(abs, p * PAGE - d);
    const end = abs + byteLen;
    const miss = this.sys.mincore(m.target, from, end - from);
    present.fill(1, p, miss < 0 ? lastPage + 1 : Math.floor((miss + d) / PAGE));
    if (miss < 0) return -1;
    this.stats.missing++;
    this.fetch(m, miss, end);
    return miss - bytes.byteOffset;
  }

  /** No more callbacks (POSTCOPY_END, session closed); prefaults under way complete unheard. */
  close(): void {
    this.closed = true;
    this.last = null;
  }

  private stateOf(view: ArrayBuffer): MappingState {
    let m = this.maps.get(view);
    if (m === undefined) {
      const target = this.targetOf(view);
      const delta = Number(this.sys.mmapAddress(target) % BigInt(PAGE));
      m = {
        view,
        target,
        delta,
        present: new Uint8Array(Math.ceil((view.byteLength + delta) / PAGE)),
        fetching: new Set(),
      };
      this.maps.set(view, m);
    }
    this.last = m;
    return m;
  }

  /** Starts a prefault of the page holding byte `miss` of the mapping (and what follows it, up to `end`). */
  private fetch(m: MappingState, miss: number, end: number): void {
    const d = m.delta;
    const p = Math.floor((miss + d) / PAGE);
    if (m.fetching.has(p)) return;
    if (this.inFlight >= this.maxInFlight) {
      this.stats.deferred++;
      return;
    }
    const start = Math.max(0, p * PAGE - d);
    const stop = Math.min(end, start + MAX_PREFAULT_BYTES);
    m.fetching.add(p);
    this.inFlight++;
    this.stats.prefaults++;
    log('%s: page at offset %s of a region is missing: fetching %d bytes (%d in flight)', this.label, hexAddr(start), stop - start, this.inFlight);
    try {
      this.sys.prefault(m.target, start, stop - start, () => this.arrived(m, p));
    } catch (e) {
      m.fetching.delete(p);
      this.inFlight--;
      throw e;
    }
  }

  private arrived(m: MappingState, p: number): void {
    m.fetching.delete(p);
    this.inFlight--;
    if (this.closed) return;
    this.stats.arrived++;
    // Called from native code: nothing may escape (an exception here would end the process).
    try {
      this.onArrived();
    } catch (e) {
      log('%s: resuming after a page arrived failed: %O', this.label, e);
    }
  }
}

/**
 * GuestMemory that parks on pages not migrated yet: `backing`'s translation, then every page of the
 * translated span must be resident (PostcopyPages.check), else PageMissing. The dirty-log hook is
 * `backing`'s (read and set through). No `window`: every range is translated, and checked.
 */
export class PostcopyMemory implements GuestMemory {
  constructor(
    /** The memory the rings would see without postcopy (replaced when the table changes). */
    public backing: GuestMemory,
    readonly pages: PostcopyPages,
  ) {}

  get onWrite(): ((gpa: number, byteLen: number) => void) | undefined {
    return this.backing.onWrite;
  }

  set onWrite(hook: ((gpa: number, byteLen: number) => void) | undefined) {
    this.backing.onWrite = hook;
  }

  translate(addr: number, byteLen: number, write: boolean, out: Span): boolean {
    if (!this.backing.translate(addr, byteLen, write, out)) return false;
    const miss = this.pages.check(out.bytes, out.offset, out.byteLen);
    if (miss < 0) return true;
    throw new PageMissing(addr + (miss - out.offset), write);
  }
}
