/**
 * Live-migration state of one session: the dirty log (vhost-user.rst "Migration", LOG_SHMFD) and
 * postcopy (PAGEFAULT: "Postcopy migration"). The session's handlers decide *when*; this module
 * owns the resources: the log mapping, the log eventfd, the userfaultfd, and which regions are
 * registered with it.
 *
 * Postcopy division of labour (vhost-user.rst POSTCOPY_ADVISE .. POSTCOPY_END; QEMU
 * hw/virtio/vhost-user.c): we create the userfaultfd and hand it to the frontend, register our
 * mappings of guest memory with it, and the *frontend* reads the faults and wakes us once it has
 * placed the page. A backend thread that touches a page still on the source simply blocks in the
 * kernel until then; nothing here handles faults.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../native/types.ts';
import { DirtyLog } from '../../virtqueue/dirty-log.ts';
import type { GuestMemory } from '../../virtqueue/index.ts';
import { BackendError, fail } from './errors.ts';
import { hex } from './hex.ts';
import { MappingGuards, fdBackedBytes, guardOrRefuse, sealAgainstShrink, type GuardNative } from './mapping-guard.ts';

const log = createDebug('vhost:migration');

export type MigrationNative = Pick<NativeBinding, 'mmap' | 'munmap' | 'close' | 'eventfdWrite' | 'fstat'> &
  Partial<Pick<NativeBinding, 'userfaultfd' | 'uffdApi' | 'uffdRegister' | 'madvise' | 'mmapAddress'>> &
  GuardNative;

/** One mapped guest region as postcopy needs it. */
export interface MappedView {
  gpa: number;
  byteLen: number;
  ab: ArrayBuffer;
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
  private registered = new Set<ArrayBuffer>();

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
    return !!(s.userfaultfd && s.uffdApi && s.uffdRegister && s.madvise && s.mmapAddress);
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
    this.closeUfd();
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
  }

  /** Address of our mapping of a region, for the postcopy SET_MEM_TABLE / ADD_MEM_REG reply. */
  addressOf(ab: ArrayBuffer): bigint {
    return this.sys.mmapAddress!(ab);
  }

  /**
   * The frontend acked our postcopy memory reply: drop any page we may have faulted in and register
   * every new mapping in MISSING mode, so that touching a page not yet migrated blocks until the
   * frontend has placed it (libvhost-user does the same after the ack).
   */
  registerAll(views: readonly MappedView[]): void {
    const s = this.sys;
    if (this.ufd === null) fail('SESSION_BAD_STATE', 'postcopy memory without a userfaultfd');
    for (const v of views) {
      if (this.registered.has(v.ab)) continue;
      s.madvise!(v.ab, 0, v.byteLen, 'dontneed');
      s.uffdRegister!(this.ufd, v.ab, 0, v.byteLen, 'missing');
      this.registered.add(v.ab);
      log('registered gpa %s +%s with the userfaultfd', hex(v.gpa), hex(v.byteLen));
    }
  }

  /** POSTCOPY_END: closing the userfaultfd unregisters every range. */
  end(): void {
    this.listening = false;
    this.ackPending = null;
    this.closeUfd();
  }

  private closeUfd(): void {
    if (this.ufd !== null) this.sys.close(this.ufd);
    this.ufd = null;
    this.registered.clear();
  }

  close(): void {
    this.dropLog();
    this.setLogFd(null);
    this.end();
  }
}
