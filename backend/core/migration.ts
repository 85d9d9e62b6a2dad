/**
 * Live-migration state of one session: the dirty log (vhost-user.rst "Migration", LOG_SHMFD) and
 * postcopy (PAGEFAULT: "Postcopy migration"). The session's handlers decide *when*; this module
 * owns the resources: the log mapping, the log eventfd, the userfaultfd, and which regions are
 * registered with it.
 *
 * Postcopy division of labour (vhost-user.rst POSTCOPY_ADVISE .. POSTCOPY_END; QEMU
 * hw/virtio/vhost-user.c): we create the userfaultfd and hand it to the frontend, register mappings
 * of guest memory with it, and the *frontend* reads the faults and wakes us once it has placed the
 * page. A thread that touches a page still on the source blocks in the kernel until then; nothing
 * here handles faults.
 *
 * That thread is never the event loop's (issue 15: one frontend that never places a page would
 * freeze every session of the process). What we register, and report in the SET_MEM_TABLE /
 * ADD_MEM_REG reply, is a second mapping of each region (native mmapAlias), touched only by prefault
 * helper threads; the rings read the memory table's own mapping, which is never registered, through
 * PostcopyMemory (postcopy-memory.ts: a missing page parks the ring and is prefaulted). When the
 * kernel cannot alias a region, that region's own mapping is registered (a frontend that punches a
 * placed page out again could then block the loop on it: logged).
 *
 * Blocked helpers and the end of postcopy: a helper thread reads through a pinned mapping (native
 * prefault), so it can never touch an address that was given back. At POSTCOPY_END, RESET_DEVICE and
 * when the session closes, each alias is retired (munmap: private zero pages replace it, so a retried
 * touch reads zeros and changes nothing shared) and its range woken through our userfaultfd (a helper
 * blocked on a page the frontend never placed completes), before the userfaultfd is closed. The guest's
 * memory is not touched: no page is allocated in it behind the frontend's back. (Without an alias the
 * region's own mapping is unregistered instead, which wakes its helpers too; their retried touch then
 * allocates the page, as closing the userfaultfd would have.)
 */
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../native/types.ts';
import { DirtyLog } from '../../virtqueue/dirty-log.ts';
import type { GuestMemory } from '../../virtqueue/index.ts';
import { BackendError, fail } from './errors.ts';
import { hex } from './hex.ts';
import { MappingGuards, fdBackedBytes, guardOrRefuse, sealAgainstShrink, type GuardNative } from './mapping-guard.ts';
import { PostcopyMemory, PostcopyPages } from './postcopy-memory.ts';

const log = createDebug('vhost:migration');

export type MigrationNative = Pick<NativeBinding, 'mmap' | 'munmap' | 'close' | 'eventfdWrite' | 'fstat'> &
  Partial<
    Pick<
      NativeBinding,
      | 'userfaultfd'
      | 'uffdApi'
      | 'uffdRegister'
      | 'uffdUnregister'
      | 'uffdWake'
      | 'madvise'
      | 'mmapAddress'
      | 'mmapAlias'
      | 'mincore'
      | 'prefault'
    >
  > &
  GuardNative;

/** One mapped guest region as postcopy needs it. */
export interface MappedView {
  gpa: number;
  byteLen: number;
  ab: ArrayBuffer;
}

/** The mapping registered with the userfaultfd for one region of ours (its alias, or itself). */
interface Registered {
  ab: ArrayBuffer;
  /** Its address (what the frontend was told; faults and wakes name it). */
  address: bigint;
  byteLen: number;
  /** `ab` is the region's own mapping (no alias could be made). */
  own: boolean;
  /** UFFDIO_REGISTER done. */
  registered: boolean;
}

/** Above this a SET_LOG_BASE size is refused: 1 GiB of bitmap covers 32 TiB of guest memory. */
const MAX_LOG_BYTES = 1 << 30;

export class Migration {
  private logMapping: ArrayBuffer | null = null;
  /** SIGBUS guard of the log mapping (memory-table.ts MappingGuards). */
  private logGuard: number | null = null;
  private readonly guards: MappingGuards;
  private dirty: DirtyLog | null = null;
  private logFd: Fd | null = null;
  private signalledMarks = 0;
  private signalScheduled = false;
  /** VHOST_F_LOG_ALL acked (SET_FEATURES). */
  logAll = false;

  private ufd: Fd | null = null;
  /** POSTCOPY_LISTEN received and POSTCOPY_END not yet. */
  listening = false;
  /**
   * Request id (SET_MEM_TABLE or ADD_MEM_REG) whose postcopy reply we sent and whose u64 ack the
   * frontend still owes us (QEMU: "Now we've registered this with the postcopy code, we ack to the
   * client"). Until it comes, nothing may touch guest memory.
   */
  ackPending: number | null = null;
  /** Our mapping of a region (the memory table's) -> the mapping the frontend knows and the uffd covers. */
  private readonly faultable = new Map<ArrayBuffer, Registered>();
  /** Missing pages and their prefaults, while postcopy is live (LISTEN .. END). */
  private pages: PostcopyPages | null = null;
  private ringView: PostcopyMemory | null = null;
  private resumeScheduled = false;
  /** Told (from setImmediate) when pages arrived or postcopy ended: parked rings should start / go on. */
  onPagesArrived: (() => void) | null = null;

  constructor(private readonly sys: MigrationNative) {
    this.guards = new MappingGuards(sys);
  }

  /** Told once when the dirty log lost its memory (the frontend shrank the log fd: see MappingGuards). */
  set onFault(sink: ((reason: string) => void) | null) {
    this.guards.onFault = sink;
  }

  get log(): DirtyLog | null {
    return this.dirty;
  }
  /** Writes are being logged now. */
  get logging(): boolean {
    return this.logAll && this.dirty !== null;
  }
  get postcopySupported(): boolean {
    const s = this.sys;
    // Without mincore / prefault a missing page would block the event loop: no postcopy then.
    return !!(
      s.userfaultfd && s.uffdApi && s.uffdRegister && s.uffdUnregister && s.uffdWake &&
      s.madvise && s.mmapAddress && s.mincore && s.prefault
    );
  }

  /** POSTCOPY_LISTEN received and POSTCOPY_END not yet: the rings see `ringMemory`'s wrapper. */
  get postcopyLive(): boolean {
    return this.pages !== null;
  }

  /** Missing-page statistics of the live postcopy (null when not live). */
  get postcopyStats(): PostcopyPages['stats'] | null {
    return this.pages?.stats ?? null;
  }

  /**
   * The memory the rings see: `mem` itself, or while postcopy is live a PostcopyMemory over it (one
   * object for the whole postcopy, re-pointed at `mem`), whose translations park on missing pages.
   */
  ringMemory(mem: GuestMemory): GuestMemory {
    const pages = this.pages;
    if (pages === null) return mem;
    const v = this.ringView;
    if (v === null) return (this.ringView = new PostcopyMemory(mem, pages));
    v.backing = mem;
    return v;
  }

  // ---- dirty log ---------------------------------------------------------------------------

  /** SET_LOG_BASE: map [offset, offset + size) of the log fd; takes ownership of fd. */
  setLogBase(fd: Fd, byteLen: bigint, offset: bigint): void {
    try {
      if (byteLen === 0n || byteLen > BigInt(MAX_LOG_BYTES)) {
        fail('SESSION_BAD_LOG', `log size ${byteLen} is not in 1..${MAX_LOG_BYTES}`);
      }
      if (offset > BigInt(Number.MAX_SAFE_INTEGER)) fail('SESSION_BAD_LOG', `log offset ${offset} out of range`);
      // A log past the end of its file would SIGBUS on the first mark (same rules as memory-table.ts:
      // sealed against shrinking first where it can be, sized, then guarded).
      const seal = sealAgainstShrink(this.sys, fd);
      const backed = fdBackedBytes(this.sys, fd);
      if (backed !== null && offset + byteLen > BigInt(backed)) {
        fail('SESSION_BAD_LOG', `log [${hex(offset)}, +${hex(byteLen)}) is larger than its fd (${hex(backed)} bytes)`);
      }
      let ab: ArrayBuffer;
      try {
        ab = this.sys.mmap(fd, Number(offset), Number(byteLen), true);
      } catch (e) {
        throw new BackendError('SESSION_BAD_LOG', `mmap of the dirty log failed: ${(e as Error).message}`, { cause: e });
      }
      let guard: number | null;
      try {
        guard = guardOrRefuse(this.guards, ab, `the dirty log (+${hex(byteLen)})`, seal);
      } catch (e) {
        this.sys.munmap(ab);
        throw new BackendError('SESSION_BAD_LOG', `the dirty log can neither be sealed nor guarded: ${(e as Error).message}`, { cause: e });
      }
      this.dropLog();
      this.logMapping = ab;
      this.logGuard = guard;
      this.dirty = new DirtyLog(new Uint8Array(ab));
      log('log mapped: %s bytes at offset %s (covers %s of guest memory)', hex(byteLen), hex(offset), hex(this.dirty.coveredBytes));
    } finally {
      // The mapping keeps the memory; the fd itself is not needed any more.
      this.sys.close(fd);
    }
  }

  /** SET_LOG_FD: an eventfd we signal after logging writes; takes ownership. */
  setLogFd(fd: Fd | null): void {
    if (this.logFd !== null) this.sys.close(this.logFd);
    this.logFd = fd;
  }

  /** Installs (or removes) the dirty-log hook on the current memory table. */
  attach(mem: GuestMemory): void {
    const d = this.logging ? this.dirty : null;
    if (d === null) {
      if (mem.onWrite !== undefined) mem.onWrite = undefined;
      return;
    }
    if ((mem.onWrite as { log?: DirtyLog } | undefined)?.log === d) return;
    const hook = (gpa: number, byteLen: number): void => {
      d.mark(gpa, byteLen);
      if (this.logFd !== null && !this.signalScheduled) this.scheduleSignal();
    };
    (hook as { log?: DirtyLog }).log = d;
    mem.onWrite = hook;
  }

  /** One log-eventfd signal per event-loop turn that marked pages, not one syscall per write. */
  private scheduleSignal(): void {
    this.signalScheduled = true;
    setImmediate(() => {
      this.signalScheduled = false;
      this.signalLog();
    });
  }

  /** Tells the log eventfd (SET_LOG_FD), if any, that pages were marked since the last signal. */
  private signalLog(): void {
    const d = this.dirty;
    if (this.logFd === null || d === null || d.marks === this.signalledMarks) return;
    this.signalledMarks = d.marks;
    try {
      this.sys.eventfdWrite(this.logFd, 1n);
    } catch (e) {
      log('log eventfd write failed: %s', (e as Error).message);
    }
  }

  private dropLog(): void {
    this.guards.remove(this.logGuard);
    this.logGuard = null;
    if (this.logMapping !== null) this.sys.munmap(this.logMapping);
    this.logMapping = null;
    this.dirty = null;
    this.signalledMarks = 0;
  }

  // ---- postcopy ----------------------------------------------------------------------------

  /** POSTCOPY_ADVISE: a fresh userfaultfd for the frontend (we keep our copy to register ranges). */
  advise(): Fd {
    const s = this.sys;
    if (!this.postcopySupported) fail('SESSION_UNSUPPORTED', 'userfaultfd is not available in the native layer');
    // A second ADVISE starts over: a live postcopy and what the old userfaultfd covers go with it.
    this.stopPostcopy();
    const fd = s.userfaultfd!(true);
    try {
      s.uffdApi!(fd, 0n);
    } catch (e) {
      s.close(fd);
      throw new BackendError('SESSION_POSTCOPY', `UFFDIO_API failed: ${(e as Error).message}`, { cause: e });
    }
    this.ufd = fd;
    log('postcopy advised: userfaultfd %d', fd);
    return fd;
  }

  /** POSTCOPY_LISTEN. libvhost-user refuses it once memory is mapped; so do we (the pages are already in). */
  listen(regionCount: number): void {
    if (this.ufd === null) fail('SESSION_BAD_STATE', 'POSTCOPY_LISTEN before POSTCOPY_ADVISE');
    if (regionCount > 0) fail('SESSION_BAD_STATE', 'POSTCOPY_LISTEN with memory already mapped');
    this.listening = true;
    this.pages ??= new PostcopyPages(
      this.sys as Required<MigrationNative>,
      (view) => this.faultable.get(view)?.ab ?? view,
      () => this.scheduleResume(),
    );
  }

  /**
   * Address of a region in the postcopy SET_MEM_TABLE / ADD_MEM_REG reply: that of the mapping the
   * userfaultfd will cover (the alias of our mapping `ab`, made here).
   */
  addressOf(ab: ArrayBuffer): bigint {
    this.pruneFaultable();
    return this.faultableOf(ab).address;
  }

  /**
   * The frontend acked our postcopy memory reply: drop any page the alias may have faulted in and
   * register every new alias in MISSING mode, so that a helper touching a page not yet migrated blocks
   * until the frontend has placed it (libvhost-user registers after the ack too).
   */
  registerAll(views: readonly MappedView[]): void {
    const s = this.sys;
    if (this.ufd === null) fail('SESSION_BAD_STATE', 'postcopy memory without a userfaultfd');
    this.pruneFaultable();
    for (const v of views) {
      const f = this.faultableOf(v.ab);
      if (f.registered) continue;
      s.madvise!(f.ab, 0, v.byteLen, 'dontneed');
      s.uffdRegister!(this.ufd, f.ab, 0, v.byteLen, 'missing');
      f.registered = true;
      log('registered gpa %s +%s with the userfaultfd (%s)', hex(v.gpa), hex(v.byteLen), f.own ? 'our own mapping' : 'an alias');
    }
  }

  /** The faultable mapping of our mapping `ab` (made on first use). */
  private faultableOf(ab: ArrayBuffer): Registered {
    const known = this.faultable.get(ab);
    if (known !== undefined) return known;
    const s = this.sys;
    let alias: ArrayBuffer | null = null;
    try {
      alias = s.mmapAlias?.(ab) ?? null;
    } catch (e) {
      log('no alias of a guest mapping (%s): its own mapping is registered; a page punched out after it arrived would block the loop', (e as Error).message);
    }
    const f: Registered = {
      ab: alias ?? ab,
      address: s.mmapAddress!(alias ?? ab),
      byteLen: ab.byteLength,
      own: alias === null,
      registered: false,
    };
    this.faultable.set(ab, f);
    return f;
  }

  /** Aliases of mappings the memory table has released (a new table, a removed region) go too. */
  private pruneFaultable(): void {
    for (const [view, f] of this.faultable) {
      try {
        this.sys.mmapAddress!(view);
      } catch {
        this.faultable.delete(view);
        this.release(f, view);
      }
    }
  }

  /**
   * Gives one faultable mapping back. An alias is retired (zero pages over it, nothing shared changes)
   * and then its range woken, so that a helper blocked on a page there completes on a zero page; our
   * own mapping (no alias) is unregistered while it is still mapped (that wakes its helpers, whose
   * retried touch then allocates the page), else woken once the memory table retired it.
   */
  private release(f: Registered, view: ArrayBuffer): void {
    const s = this.sys;
    const ufd = this.ufd;
    try {
      if (!f.own) s.munmap(f.ab);
      else if (f.registered && ufd !== null && this.isMapped(view)) {
        s.uffdUnregister!(ufd, view, 0, f.byteLen);
        return;
      }
      if (f.registered && ufd !== null) s.uffdWake!(ufd, f.address, 0, f.byteLen);
    } catch (e) {
      log('releasing a postcopy mapping at %s: %s', hex(f.address), (e as Error).message);
    }
  }

  private isMapped(ab: ArrayBuffer): boolean {
    try {
      this.sys.mmapAddress!(ab);
      return true;
    } catch {
      return false;
    }
  }

  /** Parked rings are told from setImmediate, once per event-loop turn however many pages arrived. */
  private scheduleResume(): void {
    if (this.resumeScheduled) return;
    this.resumeScheduled = true;
    setImmediate(() => {
      this.resumeScheduled = false;
      try {
        this.onPagesArrived?.();
      } catch (e) {
        log('resuming rings after postcopy pages failed: %O', e);
      }
    });
  }

  /**
   * POSTCOPY_END: the rings see plain memory again (they are rebuilt and kicked: one may have been
   * parked), the faultable mappings go (helpers still blocked complete), the userfaultfd is closed.
   */
  end(): void {
    const live = this.pages !== null;
    this.stopPostcopy();
    if (live) this.scheduleResume();
  }

  private stopPostcopy(): void {
    this.listening = false;
    this.ackPending = null;
    this.pages?.close();
    this.pages = null;
    this.ringView = null;
    for (const [view, f] of this.faultable) this.release(f, view);
    this.faultable.clear();
    this.closeUfd();
  }

  private closeUfd(): void {
    if (this.ufd !== null) this.sys.close(this.ufd);
    this.ufd = null;
  }

  /** RESET_DEVICE, session closed: everything released; nobody is told. */
  close(): void {
    this.dropLog();
    this.setLogFd(null);
    this.stopPostcopy();
  }
}
