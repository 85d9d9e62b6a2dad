/**
 * An in-memory `NativeBinding`: the fake that native/index.ts promises ("code that takes a
 * `NativeBinding` parameter can be given a fake instead"). With it a session, its ring runtime, memory
 * table, back-end channel, inflight buffer and dirty log run in a unit test without sockets, without the
 * addon and without a kernel. `createFakeNative()` returns the binding (`.native`) and test controls.
 *
 * Modelled, with the real addon's error shapes (a SysError with `code`, negative `errno`, `syscall`, and
 * the message format of native/src/sys_error.h; argument errors as TypeError ERR_INVALID_ARG_TYPE /
 * RangeError ERR_OUT_OF_RANGE like native/src/addon.h):
 *   - an fd table: numbers from 100 up, never reused, so a use after close is EBADF instead of reaching
 *     somebody else's fd. Each fd refers to an open file description shared by `dup()` and by fd passing,
 *     as in the kernel (an eventfd's counter, a file's position, a socket end). Closing an unknown or
 *     closed fd throws EBADF (syscall 'close'). Kinds: memfd, eventfd, socket (an end of a socketpair),
 *     pipe (read or write end; `pipe()` control: the contract has no pipe call), file (`file()` control);
 *   - memfd_create / ftruncate / fstat (size, st_mode: S_IFREG|0777 memfd, S_IFREG|0644 file, 0600
 *     eventfd as the kernel's anon inode reports it, S_IFSOCK|0777, S_IFIFO|0600), and read / write /
 *     pread / pwrite / readv / writev on files (position shared by dups, writes grow the file);
 *   - mmap / munmap / mmapAddress / madvise. A mapping is an ArrayBuffer holding the file's bytes, shared
 *     by every mapping of the SAME window: two `mmap(fd, off, len)` of one memfd (a frontend's mapping and
 *     the backend's, through dup'ed or passed fds) return the same ArrayBuffer, so a write through one is
 *     seen through the other, and file reads/writes (read, pread, write) go to the mapping while it lives.
 *     Windows that do not overlap (two regions of one memfd at different offsets) each get their own
 *     buffer. When the last mapping of a window is unmapped its bytes go back to the file and the buffer
 *     is zeroed: stale views read zeros and their writes reach nothing shared, as the contract says;
 *   - seals (addSeals / getSeals): a memfd created without `allowSealing` is born with F_SEAL_SEAL (EPERM for
 *     more seals), a regular file cannot be sealed (EINVAL), F_SEAL_WRITE with a writable mapping is EBUSY;
 *     the seals are enforced: ftruncate shrinking past SHRINK or growing past GROW, write / pwrite under WRITE
 *     or growing under GROW, writable mmap under WRITE: EPERM;
 *   - the SIGBUS guard (guardMapping / unguardMapping / onGuestMemoryFault / takeGuestMemoryFaults). The fake
 *     cannot see memory accesses, so shrinking a file (ftruncate) under a mapped window faults AT ONCE, as if
 *     the pages past the new end were touched: a guarded window is poisoned (those bytes read zeros, its id
 *     is reported once, from setImmediate, to the fault callback, or kept for takeGuestMemoryFaults), an
 *     unguarded one is recorded in `violations()` (the real process would die on its next access there);
 *   - eventfd / eventfdRead / eventfdWrite with counter semantics: read returns and resets the counter,
 *     null when it is 0 (EAGAIN); a write that would pass 2^64-2 throws EAGAIN, 2^64-1 EINVAL; read() and
 *     write() of an eventfd move exactly 8 bytes (EINVAL otherwise);
 *   - socketpair / sendmsg / recvmsg / read / write on socket ends: a byte stream per direction with a
 *     bounded buffer (256 KiB: partial writes, null on full), fds passed with SCM_RIGHTS semantics: sent fds
 *     stay the sender's, the receiver gets new numbers for the same descriptions, attached to the first
 *     byte; a recvmsg glues earlier fd-less writes in front of a write that carries fds but stops right
 *     after it (what protocol/framer.ts relies on); more fds than `maxFds` sets fdsTruncated and closes the
 *     surplus; in-flight fds are released when the receiving end closes; EOF (byteLen 0) once the peer end
 *     is closed and drained; EPIPE when writing to a closed peer; ENOTSOCK on other kinds;
 *   - pipes: 64 KiB, writes up to 4096 bytes atomic, EOF when the write end is closed, EPIPE without reader;
 *   - `Poller`: level triggered like uv_poll. While started, the callback fires (from setImmediate, never
 *     synchronously) with the requested POLL_* bits that hold: readable (eventfd counter > 0, data or EOF
 *     on a socket or pipe), writable (room to write, or a gone peer), disconnect (peer end closed), and
 *     again on the next pass while they still hold. libuv's rules are enforced: a second Poller on an fd
 *     whose Poller is started throws EEXIST, EBADF for an unknown fd, EPERM for a regular file (epoll
 *     refuses those); closing an fd while a Poller on it is not closed is recorded in `violations()` (the
 *     contract: close the Poller first).
 *
 * Not modelled (documented limits):
 *   - mmap of a window overlapping a DIFFERENT mapped window of the same file (an ArrayBuffer cannot alias
 *     part of another): EINVAL with a detail saying so; and mmap past the end of the file (the kernel maps it
 *     and faults on access): EINVAL. `writable: false` is recorded but not enforced (JS writes succeed).
 *     A file that grows again after shrinking under a mapping shares the window again (the kernel's guard
 *     would have left private zero pages there). Two mmap() of one window share one
 *     buffer and count two mappings, so munmap() of it twice releases both (the real one is idempotent per
 *     mapping); fake addresses (mmapAddress) and guard ids are per window, not per mmap call;
 *   - process liveness: an idle started Poller does not keep Node alive (only pending callbacks do);
 *   - everything a session never needs throws ENOSYS naming the call: unix listen/accept/connect, TAP,
 *     VFIO, userfaultfd and the postcopy page calls (so POSTCOPY_ADVISE is refused). Note the session
 *     withdraws PAGEFAULT only for a binding that LACKS the userfaultfd members (backend/core/migration.ts
 *     postcopySupported checks presence): `without('userfaultfd', ...)` gives such a binding;
 *   - permissions, O_NONBLOCK/O_CLOEXEC flags, credentials, SIGPIPE, seals.
 */
import { constants as osConstants } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import type {
  FileStat,
  FdKind,
  Fd,
  NativeBinding,
  Poller,
  PollerCallback,
  PollerConstructor,
  RecvResult,
  SysError,
} from './types.ts';
import { POLL_DISCONNECT, POLL_READABLE, POLL_WRITABLE } from './types.ts';

export type FakeFdKind = 'memfd' | 'eventfd' | 'socket' | 'pipe' | 'file';

export interface FakeFdInfo {
  fd: Fd;
  kind: FakeFdKind;
  /** 'memfd:guest', 'eventfd#3', 'socket#2.0' (pair 2, end 0), 'pipe#4:read', 'file:state'. */
  label: string;
  /** Identity of the open file description: dups and passed fds share it. */
  description: number;
}

export interface FakeMappingInfo {
  /** Label of the file ('memfd:guest'). */
  file: string;
  offset: number;
  byteLen: number;
  /** mmap() calls of this window not yet munmap()ed. */
  count: number;
  address: bigint;
}

export interface FakePollerInfo {
  fd: Fd;
  started: boolean;
  events: number;
}

/**
 * The userfaultfd members and the postcopy page calls (ENOSYS in the fake): `without(...FAKE_UFFD_MEMBERS)` is a
 * binding without postcopy.
 */
export const FAKE_UFFD_MEMBERS = [
  'userfaultfd', 'uffdApi', 'uffdRegister', 'uffdUnregister', 'uffdCopy', 'uffdZeropage', 'uffdContinue',
  'uffdWriteProtect', 'uffdWake', 'uffdRead', 'mmapAlias', 'mincore', 'prefault',
] as const satisfies readonly (keyof NativeBinding)[];

export interface FakeNative {
  /** The binding: give it wherever a NativeBinding (or a Pick of it) is taken. */
  readonly native: NativeBinding;
  /**
   * The same binding (same fd table) without some members, e.g. `without(...FAKE_UFFD_MEMBERS)`: a native
   * layer with no userfaultfd, for which a session withdraws PAGEFAULT.
   */
  without<K extends keyof NativeBinding>(...members: K[]): Omit<NativeBinding, K>;
  /** Open fds in ascending order: assert that nothing leaked by comparing with what the test holds. */
  openFds(): FakeFdInfo[];
  /** One fd's entry; null when it is not open. */
  fdInfo(fd: Fd): FakeFdInfo | null;
  /** memfd_create + ftruncate in one step (a frontend's guest memory). */
  memfd(name: string, byteLen: number): Fd;
  /** A pipe: [read end, write end] (SET_DEVICE_STATE_FD transfers). */
  pipe(): [Fd, Fd];
  /** A regular file with these contents (not a memfd: fstat says S_IFREG|0644). */
  file(name: string, contents?: Uint8Array): Fd;
  /** An eventfd's counter, without consuming it. Throws for other kinds. */
  peekEventfd(fd: Fd): bigint;
  /** Reads and resets an eventfd's counter; 0n when it was 0 (eventfdRead's null). */
  readEventfd(fd: Fd): bigint;
  /** A copy of a memfd's or file's bytes (through live mappings), regardless of the file position. */
  contents(fd: Fd): Uint8Array;
  /** Live mappings. */
  mappings(): FakeMappingInfo[];
  /** Pollers constructed and not closed. */
  pollers(): FakePollerInfo[];
  /** Contract violations seen (an fd closed while a Poller on it was open). */
  violations(): string[];
  /** Runs poller passes until no started Poller is ready; throws if that never happens. */
  settle(maxPasses?: number): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Errors, shaped like the addon's.

const ERRNO = osConstants.errno as Readonly<Record<string, number>>;
const ERROR_MAP = getSystemErrorMap();

/** A SysError as native/src/sys_error.h builds it: "EBADF: bad file descriptor, close (detail)". */
export function fakeSysError(code: string, syscall: string, detail?: string): SysError {
  const n = ERRNO[code] ?? 0;
  const desc = ERROR_MAP.get(-n)?.[1] ?? code.toLowerCase();
  const e = new Error(`${code}: ${desc}, ${syscall}${detail ? ` (${detail})` : ''}`) as SysError;
  e.code = code;
  e.errno = -n;
  e.syscall = syscall;
  return e;
}

function argType(name: string): TypeError {
  const e = new TypeError(`The "${name}" argument has an invalid type`);
  (e as { code?: string }).code = 'ERR_INVALID_ARG_TYPE';
  return e;
}
function outOfRange(name: string): RangeError {
  const e = new RangeError(`The value of "${name}" is out of range`);
  (e as { code?: string }).code = 'ERR_OUT_OF_RANGE';
  return e;
}
function argInt(v: unknown, name: string, lo: number, hi: number): number {
  if (typeof v !== 'number') throw argType(name);
  if (!Number.isInteger(v) || v < lo || v > hi) throw outOfRange(name);
  return v;
}
const INT32_MAX = 0x7fffffff;
const MAX_LEN = 2 ** 53;
function argFd(v: unknown, name = 'fd'): Fd {
  return argInt(v, name, 0, INT32_MAX);
}
function argView(v: unknown, name: string, offset: number, byteLen: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw argType(name);
  if (offset + byteLen > v.length) throw outOfRange(`${name} window`);
  return v.subarray(offset, offset + byteLen);
}

// ---------------------------------------------------------------------------------------------------
// Open file descriptions.

const PAGE = 4096;
/** Bytes a socket direction holds before sendmsg returns null (order of the default SO_SNDBUF). */
const SOCKET_BUFFER = 256 * 1024;
const PIPE_BUFFER = 64 * 1024;
const PIPE_ATOMIC = 4096;
/** Node 20's ArrayBuffer limit, which the addon's mmap also enforces. */
const MAX_MAP = 2 ** 32;
const EVENTFD_MAX = 0xffff_ffff_ffff_fffen;
const MAX_FDS = 253;
/** F_SEAL_* (linux/fcntl.h; native/types.ts F_SEAL). */
const SEAL = { seal: 0x1, shrink: 0x2, grow: 0x4, write: 0x8, futureWrite: 0x10 } as const;
const SEAL_ALL = 0x1f;

/** One mapped window of a file: its bytes live in `ab` while mapped. */
interface Window {
  file: FileData;
  offset: number;
  byteLen: number;
  ab: ArrayBuffer;
  bytes: Uint8Array;
  count: number;
  address: bigint;
  writable: boolean;
  /** SIGBUS guard id (guardMapping), 0 when not guarded. */
  guard: number;
  /** Reported as faulted (once). */
  poisoned: boolean;
}

/** The bytes of a memfd or regular file: a base store plus the mapped windows that hold their range. */
class FileData {
  size = 0;
  /** F_SEAL_* bits; `sealable` false for a regular file (F_ADD_SEALS / F_GET_SEALS: EINVAL). */
  seals = 0;
  /** Bytes outside mapped windows; allocated lazily (an untouched file reads zeros). */
  private base: Uint8Array | null = null;
  readonly windows: Window[] = [];

  constructor(
    readonly label: string,
    readonly sealable: boolean,
  ) {}

  private ensureBase(n: number): Uint8Array {
    if (this.base === null || this.base.length < n) {
      const next = new Uint8Array(Math.max(n, Math.min(MAX_MAP, (this.base?.length ?? 0) * 2)));
      if (this.base) next.set(this.base);
      this.base = next;
    }
    return this.base;
  }

  /** Calls fn for each piece of [off, off+n): a view of the bytes (window or base) and where it goes. */
  private pieces(off: number, n: number, forWrite: boolean, fn: (view: Uint8Array | null, at: number, len: number) => void): void {
    let pos = off;
    const end = off + n;
    const sorted = [...this.windows].sort((a, b) => a.offset - b.offset);
    while (pos < end) {
      const w = sorted.find((x) => x.offset <= pos && pos < x.offset + x.byteLen);
      if (w) {
        const len = Math.min(end, w.offset + w.byteLen) - pos;
        fn(w.bytes.subarray(pos - w.offset, pos - w.offset + len), pos - off, len);
        pos += len;
        continue;
      }
      const next = sorted.find((x) => x.offset > pos);
      const stop = Math.min(end, next ? next.offset : end);
      const len = stop - pos;
      if (forWrite) fn(this.ensureBase(stop).subarray(pos, stop), pos - off, len);
      else fn(this.base && this.base.length > pos ? this.base.subarray(pos, Math.min(stop, this.base.length)) : null, pos - off, len);
      pos = stop;
    }
  }

  read(off: number, out: Uint8Array): number {
    const n = Math.max(0, Math.min(out.length, this.size - off));
    this.pieces(off, n, false, (view, at, len) => {
      out.fill(0, at, at + len);
      if (view) out.set(view, at);
    });
    return n;
  }

  write(off: number, src: Uint8Array): number {
    if (off + src.length > MAX_MAP) throw fakeSysError('EFBIG', 'write', 'fake: files are limited to 4 GiB');
    this.pieces(off, src.length, true, (view, at, len) => view!.set(src.subarray(at, at + len)));
    this.size = Math.max(this.size, off + src.length);
    return src.length;
  }

  /** Sets the size; returns the mapped windows that reach past a smaller new end (their bytes there are gone). */
  truncate(n: number): Window[] {
    const shrunk = n < this.size;
    if (shrunk && this.base && this.base.length > n) this.base.fill(0, n);
    this.size = n;
    if (!shrunk) return [];
    const cut = this.windows.filter((w) => w.offset + w.byteLen > n);
    for (const w of cut) w.bytes.fill(0, Math.max(0, n - w.offset));
    return cut;
  }

  /** Moves a window's bytes back to the base store (its last munmap). */
  unmapWindow(w: Window): void {
    const i = this.windows.indexOf(w);
    if (i >= 0) this.windows.splice(i, 1);
    const keep = Math.max(0, Math.min(w.byteLen, this.size - w.offset));
    if (keep > 0) this.ensureBase(w.offset + keep).set(w.bytes.subarray(0, keep), w.offset);
  }

  /** Creates a window, taking its bytes from the base store. */
  mapWindow(offset: number, byteLen: number): Window {
    const ab = new ArrayBuffer(byteLen);
    const bytes = new Uint8Array(ab);
    if (this.base && this.base.length > offset) bytes.set(this.base.subarray(offset, Math.min(offset + byteLen, this.base.length)));
    const w: Window = { file: this, offset, byteLen, ab, bytes, count: 1, address: 0n, writable: true, guard: 0, poisoned: false };
    this.windows.push(w);
    return w;
  }
}

interface SocketSegment {
  bytes: Uint8Array;
  offset: number;
  /** Descriptions passed with this write; null once taken (they go with the first byte read). */
  fds: Desc[] | null;
}

class PipeData {
  readonly chunks: Uint8Array[] = [];
  bytes = 0;
  readerOpen = true;
  writerOpen = true;
}

type Desc =
  | { kind: 'memfd' | 'file'; id: number; label: string; refs: number; file: FileData; position: number }
  | { kind: 'eventfd'; id: number; label: string; refs: number; counter: bigint }
  | { kind: 'socket'; id: number; label: string; refs: number; queue: SocketSegment[]; queued: number; peer: Desc & { kind: 'socket' } | null; closed: boolean }
  | { kind: 'pipe'; id: number; label: string; refs: number; pipe: PipeData; end: 'read' | 'write' };
type SocketDesc = Desc & { kind: 'socket' };
type FileDesc = Desc & { kind: 'memfd' | 'file' };
type EventDesc = Desc & { kind: 'eventfd' };
type PipeDesc = Desc & { kind: 'pipe' };

// ---------------------------------------------------------------------------------------------------

export function createFakeNative(): FakeNative {
  const table = new Map<Fd, Desc>();
  let nextFd = 100;
  let nextDesc = 1;
  let nextPair = 1;
  let nextAddress = 0x7f00_0000_0000n;
  const windowOf = new WeakMap<ArrayBuffer, Window>();
  const retired = new WeakSet<ArrayBuffer>();
  /** Mapped windows (a mapping outlives its fd: the dirty log's fd is closed once mapped). */
  const liveWindows = new Set<Window>();
  /** The SIGBUS guard: id -> window; poisoned ids not yet reported; the one fault callback. */
  const guarded = new Map<number, Window>();
  let nextGuard = 1;
  const faults: number[] = [];
  let faultCallback: ((ids: number[]) => void) | null = null;
  let faultReportScheduled = false;
  const pollers = new Set<FakePoller>();
  const violations: string[] = [];
  let passScheduled = false;

  const install = (d: Desc): Fd => {
    d.refs++;
    const fd = nextFd++;
    table.set(fd, d);
    return fd;
  };
  const lookup = (fd: unknown, syscall: string): Desc => {
    const n = argFd(fd);
    const d = table.get(n);
    if (!d) throw fakeSysError('EBADF', syscall);
    return d;
  };
  const newDesc = <D extends Desc>(d: Omit<D, 'id' | 'refs'>): D => ({ ...d, id: nextDesc++, refs: 0 }) as D;

  /** A description lost a reference (fd closed, in-flight fd dropped). */
  const unref = (d: Desc): void => {
    if (--d.refs > 0) return;
    if (d.kind === 'socket') {
      d.closed = true;
      for (const seg of d.queue.splice(0)) for (const f of seg.fds ?? []) unref(f);
      d.queued = 0;
    } else if (d.kind === 'pipe') {
      if (d.end === 'read') d.pipe.readerOpen = false;
      else d.pipe.writerOpen = false;
    }
    schedule();
  };

  // ---- readiness and the poller loop ------------------------------------------------------------

  const peerGone = (d: SocketDesc): boolean => d.peer === null || d.peer.closed;
  const readiness = (d: Desc): number => {
    switch (d.kind) {
      case 'eventfd':
        return (d.counter > 0n ? POLL_READABLE : 0) | (d.counter < EVENTFD_MAX ? POLL_WRITABLE : 0);
      case 'socket': {
        const gone = peerGone(d);
        return (
          (d.queue.length > 0 || gone ? POLL_READABLE : 0) |
          (gone || d.peer!.queued < SOCKET_BUFFER ? POLL_WRITABLE : 0) |
          (gone ? POLL_DISCONNECT : 0)
        );
      }
      case 'pipe':
        if (d.end === 'read') return (d.pipe.bytes > 0 || !d.pipe.writerOpen ? POLL_READABLE : 0) | (!d.pipe.writerOpen ? POLL_DISCONNECT : 0);
        return (!d.pipe.readerOpen || d.pipe.bytes < PIPE_BUFFER ? POLL_WRITABLE : 0) | (!d.pipe.readerOpen ? POLL_DISCONNECT : 0);
      default:
        return 0;
    }
  };
  const due = (p: FakePoller): number => {
    if (!p.started) return 0;
    const d = table.get(p.fd);
    return d ? readiness(d) & p.events : 0;
  };
  function schedule(): void {
    if (passScheduled) return;
    let any = false;
    for (const p of pollers) if (due(p) !== 0) any = true;
    if (!any) return;
    passScheduled = true;
    setImmediate(pass);
  }
  function pass(): void {
    passScheduled = false;
    const errors: unknown[] = [];
    for (const p of [...pollers]) {
      const ev = due(p);
      if (ev === 0) continue;
      try {
        p.callback(null, ev);
      } catch (e) {
        errors.push(e);
      }
    }
    schedule(); // level triggered: whatever is still ready fires again next pass
    // The addon turns a throwing callback into an uncaught exception (napi_fatal_exception).
    if (errors.length > 0) throw errors[0];
  }

  class FakePoller implements Poller {
    started = false;
    events = 0;
    closed = false;
    readonly fd: Fd;
    readonly callback: PollerCallback;
    constructor(fd: Fd, callback: PollerCallback) {
      this.fd = argFd(fd);
      if (typeof callback !== 'function') throw argType('callback');
      const d = table.get(this.fd);
      if (!d) throw fakeSysError('EBADF', 'uv_poll_init');
      if (d.kind === 'memfd' || d.kind === 'file') throw fakeSysError('EPERM', 'uv_poll_init');
      if (this.otherStarted()) throw fakeSysError('EEXIST', 'uv_poll_init');
      this.callback = callback;
      pollers.add(this);
    }
    private otherStarted(): boolean {
      for (const p of pollers) if (p !== this && p.fd === this.fd && p.started) return true;
      return false;
    }
    start(events: number): void {
      argInt(events, 'events', 0, 15);
      if (events === 0) throw outOfRange('events');
      if (this.closed) throw fakeSysError('EBADF', 'uv_poll_start', 'poller is closed');
      if (!table.has(this.fd)) throw fakeSysError('EBADF', 'uv_poll_start');
      if (this.otherStarted()) throw fakeSysError('EEXIST', 'uv_poll_start');
      this.started = true;
      this.events = events;
      schedule();
    }
    stop(): void {
      this.started = false;
    }
    close(): void {
      if (this.closed) return;
      this.closed = true;
      this.started = false;
      pollers.delete(this);
    }
  }

  // ---- seals and the SIGBUS guard --------------------------------------------------------------

  /**
   * How much of a write of `len` bytes at `off` the file's seals allow: EPERM under F_SEAL_WRITE, and under
   * F_SEAL_GROW for a write starting at or past the end; one that crosses the end is cut short there (the
   * kernel writes page by page and stops at the first refused one).
   */
  function sealedLength(file: FileData, off: number, len: number, syscall: string): number {
    if (len === 0) return 0;
    if (file.seals & (SEAL.write | SEAL.futureWrite)) throw fakeSysError('EPERM', syscall);
    if (off + len > file.size && file.seals & SEAL.grow) {
      if (off >= file.size) throw fakeSysError('EPERM', syscall);
      return file.size - off;
    }
    return len;
  }

  /** A guarded window lost its backing: reported once, on the event loop (uv_async in the addon). */
  function poison(w: Window): void {
    if (w.poisoned) return;
    w.poisoned = true;
    faults.push(w.guard);
    reportFaults();
  }

  function reportFaults(): void {
    if (faultReportScheduled || faultCallback === null || faults.length === 0) return;
    faultReportScheduled = true;
    setImmediate(() => {
      faultReportScheduled = false;
      const cb = faultCallback;
      if (cb === null || faults.length === 0) return;
      cb(faults.splice(0));
    });
  }

  function unguard(id: number): boolean {
    const w = guarded.get(id);
    if (!w) return false;
    guarded.delete(id);
    w.guard = 0;
    const i = faults.indexOf(id);
    if (i >= 0) faults.splice(i, 1); // unregistered before its report: dropped
    return true;
  }

  // ---- generic fd I/O ---------------------------------------------------------------------------

  const fileDesc = (d: Desc): FileDesc | null => (d.kind === 'memfd' || d.kind === 'file' ? d : null);

  /** Takes up to out.length bytes from a socket end's queue (recvmsg's stream rules); fds detached. */
  function socketTake(d: SocketDesc, out: Uint8Array): { n: number; fds: Desc[] } {
    let n = 0;
    let fds: Desc[] = [];
    while (n < out.length && d.queue.length > 0) {
      const seg = d.queue[0]!;
      const len = Math.min(out.length - n, seg.bytes.length - seg.offset);
      out.set(seg.bytes.subarray(seg.offset, seg.offset + len), n);
      n += len;
      seg.offset += len;
      d.queued -= len;
      const carried = seg.fds !== null;
      if (carried) {
        fds = seg.fds!;
        seg.fds = null;
      }
      if (seg.offset < seg.bytes.length) break;
      d.queue.shift();
      if (carried) break; // the kernel stops right after a write that carried fds
    }
    schedule(); // the peer may be writable again
    return { n, fds };
  }

  function socketPut(d: SocketDesc, src: Uint8Array, fds: Desc[], syscall: string): number | null {
    if (peerGone(d)) throw fakeSysError('EPIPE', syscall);
    if (src.length === 0) return 0; // a stream socket sends nothing (the fds are not sent either)
    const peer = d.peer!;
    const n = Math.min(src.length, SOCKET_BUFFER - peer.queued);
    if (n <= 0) return null;
    for (const f of fds) f.refs++;
    peer.queue.push({ bytes: src.slice(0, n), offset: 0, fds: fds.length > 0 ? fds : null });
    peer.queued += n;
    schedule();
    return n;
  }

  function readInto(fd: unknown, out: Uint8Array, syscall: string): number | null {
    const d = lookup(fd, syscall);
    switch (d.kind) {
      case 'eventfd': {
        if (out.length < 8) throw fakeSysError('EINVAL', syscall);
        if (d.counter === 0n) return null;
        new DataView(out.buffer, out.byteOffset, 8).setBigUint64(0, d.counter, true);
        d.counter = 0n;
        schedule();
        return 8;
      }
      case 'memfd':
      case 'file': {
        const n = d.file.read(d.position, out);
        d.position += n;
        return n;
      }
      case 'socket': {
        if (d.queue.length === 0) return peerGone(d) ? 0 : null;
        const { n, fds } = socketTake(d, out);
        for (const f of fds) unref(f); // read() has no control buffer: passed fds are closed
        return n;
      }
      case 'pipe': {
        if (d.end !== 'read') throw fakeSysError('EBADF', syscall);
        const p = d.pipe;
        if (p.bytes === 0) return p.writerOpen ? null : 0;
        let n = 0;
        while (n < out.length && p.chunks.length > 0) {
          const c = p.chunks[0]!;
          const len = Math.min(out.length - n, c.length);
          out.set(c.subarray(0, len), n);
          n += len;
          if (len === c.length) p.chunks.shift();
          else p.chunks[0] = c.subarray(len);
        }
        p.bytes -= n;
        schedule();
        return n;
      }
    }
  }

  function writeFrom(fd: unknown, src: Uint8Array, syscall: string): number | null {
    const d = lookup(fd, syscall);
    switch (d.kind) {
      case 'eventfd': {
        if (src.length !== 8) throw fakeSysError('EINVAL', syscall);
        const v = new DataView(src.buffer, src.byteOffset, 8).getBigUint64(0, true);
        if (v === 0xffff_ffff_ffff_ffffn) throw fakeSysError('EINVAL', syscall);
        if (d.counter + v > EVENTFD_MAX) return null;
        d.counter += v;
        schedule();
        return 8;
      }
      case 'memfd':
      case 'file': {
        const n = d.file.write(d.position, src.subarray(0, sealedLength(d.file, d.position, src.length, syscall)));
        d.position += n;
        return n;
      }
      case 'socket':
        return socketPut(d, src, [], syscall);
      case 'pipe': {
        if (d.end !== 'write') throw fakeSysError('EBADF', syscall);
        const p = d.pipe;
        if (!p.readerOpen) throw fakeSysError('EPIPE', syscall);
        if (src.length === 0) return 0;
        const room = PIPE_BUFFER - p.bytes;
        if (room <= 0 || (src.length <= PIPE_ATOMIC && room < src.length)) return null;
        const n = Math.min(room, src.length);
        p.chunks.push(src.slice(0, n));
        p.bytes += n;
        schedule();
        return n;
      }
    }
  }

  function vectors(bufs: unknown, offsets: unknown, lens: unknown): Uint8Array[] {
    if (!Array.isArray(bufs)) throw argType('bufs');
    if (!Array.isArray(offsets)) throw argType('offsets');
    if (!Array.isArray(lens)) throw argType('lens');
    if (offsets.length !== bufs.length || lens.length !== bufs.length) throw outOfRange('offsets/lens length');
    return bufs.map((b, j) => {
      const o = argInt(offsets[j], 'offsets[]', 0, MAX_LEN);
      const l = argInt(lens[j], 'lens[]', 0, MAX_LEN);
      return argView(b, 'bufs[]', o, l);
    });
  }

  const enosys = (name: string) => (): never => {
    throw fakeSysError('ENOSYS', name, 'not modelled by the fake native binding');
  };

  // ---- the binding ------------------------------------------------------------------------------

  // Not annotated as NativeBinding here (assigned below): the contract may grow members while this file
  // implements them, and an annotated literal would refuse members a checkout's contract lacks.
  const impl = {
    unixListen: enosys('unixListen'),
    unixAccept: enosys('unixAccept'),
    unixConnect: enosys('unixConnect'),

    socketpair(): [Fd, Fd] {
      const pair = nextPair++;
      const a = newDesc<SocketDesc>({ kind: 'socket', label: `socket#${pair}.0`, queue: [], queued: 0, peer: null, closed: false });
      const b = newDesc<SocketDesc>({ kind: 'socket', label: `socket#${pair}.1`, queue: [], queued: 0, peer: a, closed: false });
      a.peer = b;
      return [install(a), install(b)];
    },

    recvmsg(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, maxFds: number): RecvResult | null {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      const out = argView(buf, 'buf', offset, byteLen);
      argInt(maxFds, 'maxFds', 0, MAX_FDS);
      const d = lookup(fd, 'recvmsg');
      if (d.kind !== 'socket') throw fakeSysError('ENOTSOCK', 'recvmsg');
      if (d.queue.length === 0) return peerGone(d) ? { byteLen: 0, fds: [], fdsTruncated: false } : null;
      const got = socketTake(d, out);
      const kept = got.fds.slice(0, maxFds);
      for (const f of got.fds.slice(maxFds)) unref(f);
      // install() takes its own reference; the in-flight one is dropped.
      const fds = kept.map((f) => {
        const n = install(f);
        f.refs--;
        return n;
      });
      return { byteLen: got.n, fds, fdsTruncated: got.fds.length > maxFds };
    },

    sendmsg(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, fds: readonly Fd[]): number | null {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      const src = argView(buf, 'buf', offset, byteLen);
      if (!Array.isArray(fds)) throw argType('fds');
      if (fds.length > MAX_FDS) throw outOfRange('fds.length');
      for (const f of fds) argInt(f, 'fds[]', 0, INT32_MAX);
      const d = lookup(fd, 'sendmsg');
      if (d.kind !== 'socket') throw fakeSysError('ENOTSOCK', 'sendmsg');
      const passed = fds.map((f) => {
        const p = table.get(f);
        if (!p) throw fakeSysError('EBADF', 'sendmsg');
        return p;
      });
      return socketPut(d, src, passed, 'sendmsg');
    },

    close(fd: Fd): void {
      const d = lookup(fd, 'close');
      for (const p of pollers) {
        if (p.fd === fd) violations.push(`close(${fd}) [${d.label}] while a Poller on it is ${p.started ? 'started' : 'open'} (close the Poller first)`);
      }
      table.delete(fd);
      unref(d);
    },

    dup(fd: Fd): Fd {
      return install(lookup(fd, 'dup'));
    },

    read(fd: Fd, buf: Uint8Array, offset: number, byteLen: number): number | null {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      return readInto(fd, argView(buf, 'buf', offset, byteLen), 'read');
    },
    write(fd: Fd, buf: Uint8Array, offset: number, byteLen: number): number | null {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      return writeFrom(fd, argView(buf, 'buf', offset, byteLen), 'write');
    },
    readv(fd: Fd, bufs: readonly Uint8Array[], offsets: readonly number[], lens: readonly number[]): number | null {
      argFd(fd);
      const views = vectors(bufs, offsets, lens);
      const tmp = new Uint8Array(views.reduce((s, v) => s + v.length, 0));
      const n = readInto(fd, tmp, 'readv');
      if (n === null) return null;
      let at = 0;
      for (const v of views) {
        if (at >= n) break;
        const k = Math.min(v.length, n - at);
        v.set(tmp.subarray(at, at + k));
        at += k;
      }
      return n;
    },
    writev(fd: Fd, bufs: readonly Uint8Array[], offsets: readonly number[], lens: readonly number[]): number | null {
      argFd(fd);
      const views = vectors(bufs, offsets, lens);
      const tmp = new Uint8Array(views.reduce((s, v) => s + v.length, 0));
      let at = 0;
      for (const v of views) {
        tmp.set(v, at);
        at += v.length;
      }
      return writeFrom(fd, tmp, 'writev');
    },

    fstat(fd: Fd): FileStat {
      const d = lookup(fd, 'fstat');
      switch (d.kind) {
        case 'memfd':
          return { size: d.file.size, mode: 0o100777 };
        case 'file':
          return { size: d.file.size, mode: 0o100644 };
        case 'eventfd':
          return { size: 0, mode: 0o600 };
        case 'socket':
          return { size: 0, mode: 0o140777 };
        case 'pipe':
          return { size: 0, mode: 0o010600 };
      }
    },

    fdKind(fd: Fd): FdKind {
      // The descriptions the fake models are exactly these kinds.
      return lookup(fd, 'fstat').kind;
    },

    mmap(fd: Fd, offset: number, byteLen: number, writable: boolean): ArrayBuffer {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      if (typeof writable !== 'boolean') throw argType('writable');
      if (byteLen === 0) throw fakeSysError('EINVAL', 'mmap', 'byteLen must be > 0');
      if (byteLen > MAX_MAP) throw fakeSysError('EOVERFLOW', 'mmap', 'byteLen exceeds the ArrayBuffer limit');
      const d = lookup(fd, 'mmap');
      const f = fileDesc(d);
      if (!f) throw fakeSysError('ENODEV', 'mmap');
      const file = f.file;
      if (writable && file.seals & (SEAL.write | SEAL.futureWrite)) throw fakeSysError('EPERM', 'mmap');
      if (offset + byteLen > file.size) {
        throw fakeSysError('EINVAL', 'mmap', `fake: [${offset}, +${byteLen}) is past the end of ${file.label} (${file.size} bytes); the kernel would map it and fault on access`);
      }
      const same = file.windows.find((w) => w.offset === offset && w.byteLen === byteLen);
      if (same) {
        same.count++;
        same.writable ||= writable;
        return same.ab;
      }
      const clash = file.windows.find((w) => offset < w.offset + w.byteLen && w.offset < offset + byteLen);
      if (clash) {
        throw fakeSysError('EINVAL', 'mmap',
          `fake: [${offset}, +${byteLen}) of ${file.label} overlaps the mapped window [${clash.offset}, +${clash.byteLen}); ` +
            'the fake shares only identical windows (an ArrayBuffer cannot alias part of another)');
      }
      const w = file.mapWindow(offset, byteLen);
      w.writable = writable;
      const delta = BigInt(offset % PAGE);
      w.address = nextAddress + delta;
      nextAddress += BigInt(Math.ceil((byteLen + offset % PAGE) / PAGE) + 1) * BigInt(PAGE);
      windowOf.set(w.ab, w);
      liveWindows.add(w);
      return w.ab;
    },

    munmap(ab: ArrayBuffer): void {
      if (!(ab instanceof ArrayBuffer)) throw argType('ab');
      const w = windowOf.get(ab);
      if (!w) {
        if (retired.has(ab)) return; // already unmapped: idempotent
        throw fakeSysError('EINVAL', 'munmap', 'not an ArrayBuffer returned by mmap()');
      }
      if (--w.count > 0) return;
      if (w.guard !== 0) unguard(w.guard); // private zero pages cannot SIGBUS
      w.file.unmapWindow(w);
      windowOf.delete(ab);
      liveWindows.delete(w);
      retired.add(ab);
      w.bytes.fill(0); // stale views read zeros, their writes reach nothing shared
    },

    memfdCreate(name: string, allowSealing: boolean): Fd {
      if (typeof name !== 'string') throw argType('name');
      if (typeof allowSealing !== 'boolean') throw argType('allowSealing');
      if (Buffer.byteLength(name) > 249) throw fakeSysError('EINVAL', 'memfd_create');
      const label = `memfd:${name}`;
      const file = new FileData(label, true);
      // Without MFD_ALLOW_SEALING a memfd is born with F_SEAL_SEAL (native/types.ts memfdCreate).
      if (!allowSealing) file.seals = SEAL.seal;
      return install(newDesc<FileDesc>({ kind: 'memfd', label, file, position: 0 }));
    },

    ftruncate(fd: Fd, byteLen: number): void {
      argFd(fd);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      const f = fileDesc(lookup(fd, 'ftruncate'));
      if (!f) throw fakeSysError('EINVAL', 'ftruncate');
      if (byteLen > MAX_MAP) throw fakeSysError('EFBIG', 'ftruncate', 'fake: files are limited to 4 GiB');
      const file = f.file;
      if ((byteLen < file.size && file.seals & SEAL.shrink) || (byteLen > file.size && file.seals & SEAL.grow)) {
        throw fakeSysError('EPERM', 'ftruncate');
      }
      for (const w of file.truncate(byteLen)) {
        // The kernel would SIGBUS the first access past the new end; the fake faults at once (see the top).
        if (w.guard !== 0) poison(w);
        else {
          violations.push(
            `ftruncate(${fd}) of ${file.label} to ${byteLen} bytes under the unguarded mapping [${w.offset}, +${w.byteLen}): ` +
              'an access past the new end would SIGBUS the process',
          );
        }
      }
    },

    addSeals(fd: Fd, seals: number): void {
      argFd(fd);
      argInt(seals, 'seals', 0, INT32_MAX);
      const f = fileDesc(lookup(fd, 'fcntl'));
      if (!f || !f.file.sealable || (seals & ~SEAL_ALL) !== 0) throw fakeSysError('EINVAL', 'fcntl', 'F_ADD_SEALS');
      const file = f.file;
      if (file.seals & SEAL.seal) throw fakeSysError('EPERM', 'fcntl', 'F_ADD_SEALS');
      if (seals & SEAL.write && file.windows.some((w) => w.writable)) throw fakeSysError('EBUSY', 'fcntl', 'F_ADD_SEALS');
      file.seals |= seals;
    },

    getSeals(fd: Fd): number {
      argFd(fd);
      const f = fileDesc(lookup(fd, 'fcntl'));
      if (!f || !f.file.sealable) throw fakeSysError('EINVAL', 'fcntl', 'F_GET_SEALS');
      return f.file.seals;
    },

    guardMapping(ab: ArrayBuffer): number {
      if (!(ab instanceof ArrayBuffer)) throw argType('ab');
      const w = windowOf.get(ab);
      if (!w) throw fakeSysError('EINVAL', 'guardMapping', 'not a live ArrayBuffer returned by mmap()');
      if (w.guard === 0) {
        w.guard = nextGuard++;
        guarded.set(w.guard, w);
      }
      return w.guard;
    },

    unguardMapping(id: number): boolean {
      argInt(id, 'id', 0, MAX_LEN);
      return unguard(id);
    },

    onGuestMemoryFault(callback: ((ids: number[]) => void) | null): void {
      if (callback !== null && typeof callback !== 'function') throw argType('callback');
      faultCallback = callback;
      reportFaults();
    },

    takeGuestMemoryFaults(): number[] {
      return faults.splice(0);
    },

    mmapAddress(ab: ArrayBuffer): bigint {
      const w = ab instanceof ArrayBuffer ? windowOf.get(ab) : undefined;
      if (!w) throw fakeSysError('EINVAL', 'mmapAddress', 'not a live ArrayBuffer returned by mmap()');
      return w.address;
    },

    madvise(ab: ArrayBuffer, offset: number, byteLen: number, advice: 'dontneed' | 'remove' | 'willneed'): number {
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      if (advice !== 'dontneed' && advice !== 'remove' && advice !== 'willneed') {
        const e = new TypeError("The argument 'advice' must be 'dontneed', 'remove' or 'willneed'");
        (e as { code?: string }).code = 'ERR_INVALID_ARG_VALUE';
        throw e;
      }
      const w = ab instanceof ArrayBuffer ? windowOf.get(ab) : undefined;
      if (!w) throw fakeSysError('EINVAL', 'madvise', 'not a live ArrayBuffer returned by mmap()');
      if (offset + byteLen > w.byteLen) throw outOfRange('offset + byteLen');
      const page = BigInt(PAGE);
      let start = w.address + BigInt(offset);
      let end = start + BigInt(byteLen);
      if (advice === 'willneed') {
        start = (start / page) * page;
        end = ((end + page - 1n) / page) * page;
      } else {
        start = ((start + page - 1n) / page) * page;
        end = (end / page) * page;
      }
      if (byteLen === 0 || end <= start) return 0;
      // MADV_REMOVE punches a hole: zeros for every mapping of the file (they share the buffer here).
      if (advice === 'remove') w.bytes.fill(0, Number(start - w.address), Number(end - w.address));
      return Number(end - start);
    },

    eventfd(initval: number): Fd {
      argInt(initval, 'initval', 0, 0xffff_ffff);
      return install(newDesc<EventDesc>({ kind: 'eventfd', label: `eventfd#${nextDesc}`, counter: BigInt(initval) }));
    },

    eventfdRead(fd: Fd): bigint | null {
      const b = new Uint8Array(8);
      const n = readInto(fd, b, 'read');
      if (n === null) return null;
      if (n !== 8) throw fakeSysError('EIO', 'read', 'short eventfd read');
      return new DataView(b.buffer).getBigUint64(0, true);
    },

    eventfdWrite(fd: Fd, value: bigint): void {
      argFd(fd);
      if (typeof value !== 'bigint') throw argType('value');
      if (value < 0n || value > 0xffff_ffff_ffff_ffffn) throw outOfRange('value');
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, value, true);
      // EAGAIN here means the counter would overflow: thrown, as the addon does.
      if (writeFrom(fd, b, 'write') === null) throw fakeSysError('EAGAIN', 'write');
    },

    tapOpen: enosys('tapOpen'),
    tapSetOffload: enosys('tapSetOffload'),
    linkSetUp: enosys('linkSetUp'),

    Poller: FakePoller as PollerConstructor,

    userfaultfd: enosys('userfaultfd'),
    uffdApi: enosys('uffdApi'),
    uffdRegister: enosys('uffdRegister'),
    uffdUnregister: enosys('uffdUnregister'),
    uffdCopy: enosys('uffdCopy'),
    uffdZeropage: enosys('uffdZeropage'),
    uffdContinue: enosys('uffdContinue'),
    uffdWriteProtect: enosys('uffdWriteProtect'),
    uffdWake: enosys('uffdWake'),
    uffdRead: enosys('uffdRead'),
    mmapAlias: enosys('mmapAlias'),
    mincore: enosys('mincore'),
    prefault: enosys('prefault'),

    vfioOpenContainer: enosys('vfioOpenContainer'),
    vfioOpenGroup: enosys('vfioOpenGroup'),
    vfioGetApiVersion: enosys('vfioGetApiVersion'),
    vfioCheckExtension: enosys('vfioCheckExtension'),
    vfioGroupGetStatus: enosys('vfioGroupGetStatus'),
    vfioGroupSetContainer: enosys('vfioGroupSetContainer'),
    vfioGroupUnsetContainer: enosys('vfioGroupUnsetContainer'),
    vfioSetIommu: enosys('vfioSetIommu'),
    vfioGroupGetDeviceFd: enosys('vfioGroupGetDeviceFd'),
    vfioDeviceGetInfo: enosys('vfioDeviceGetInfo'),
    vfioDeviceGetRegionInfo: enosys('vfioDeviceGetRegionInfo'),
    vfioDeviceGetIrqInfo: enosys('vfioDeviceGetIrqInfo'),
    vfioDeviceSetIrqs: enosys('vfioDeviceSetIrqs'),
    vfioDeviceReset: enosys('vfioDeviceReset'),
    vfioMapDma: enosys('vfioMapDma'),
    vfioUnmapDma: enosys('vfioUnmapDma'),

    pread(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, position: number): number {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      const out = argView(buf, 'buf', offset, byteLen);
      argInt(position, 'position', 0, MAX_LEN);
      const f = fileDesc(lookup(fd, 'pread'));
      if (!f) throw fakeSysError('ESPIPE', 'pread');
      return f.file.read(position, out);
    },
    pwrite(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, position: number): number {
      argFd(fd);
      argInt(offset, 'offset', 0, MAX_LEN);
      argInt(byteLen, 'byteLen', 0, MAX_LEN);
      const src = argView(buf, 'buf', offset, byteLen);
      argInt(position, 'position', 0, MAX_LEN);
      const f = fileDesc(lookup(fd, 'pwrite'));
      if (!f) throw fakeSysError('ESPIPE', 'pwrite');
      return f.file.write(position, src.subarray(0, sealedLength(f.file, position, src.length, 'pwrite')));
    },
  };
  const native: NativeBinding = impl;

  // ---- controls ---------------------------------------------------------------------------------

  const info = (fd: Fd, d: Desc): FakeFdInfo => ({ fd, kind: d.kind, label: d.label, description: d.id });
  const eventfdDesc = (fd: Fd): EventDesc => {
    const d = lookup(fd, 'read');
    if (d.kind !== 'eventfd') throw new Error(`fake: fd ${fd} is a ${d.kind}, not an eventfd`);
    return d;
  };

  return {
    native,
    without<K extends keyof NativeBinding>(...members: K[]): Omit<NativeBinding, K> {
      const copy: Partial<NativeBinding> = { ...native };
      for (const m of members) delete copy[m];
      return copy as Omit<NativeBinding, K>;
    },
    openFds(): FakeFdInfo[] {
      return [...table].sort(([a], [b]) => a - b).map(([fd, d]) => info(fd, d));
    },
    fdInfo(fd: Fd): FakeFdInfo | null {
      const d = table.get(fd);
      return d ? info(fd, d) : null;
    },
    memfd(name: string, byteLen: number): Fd {
      const fd = native.memfdCreate(name, false);
      native.ftruncate(fd, byteLen);
      return fd;
    },
    pipe(): [Fd, Fd] {
      const pipe = new PipeData();
      const id = nextDesc;
      const r = newDesc<PipeDesc>({ kind: 'pipe', label: `pipe#${id}:read`, pipe, end: 'read' });
      const w = newDesc<PipeDesc>({ kind: 'pipe', label: `pipe#${id}:write`, pipe, end: 'write' });
      return [install(r), install(w)];
    },
    file(name: string, contents?: Uint8Array): Fd {
      const label = `file:${name}`;
      const file = new FileData(label, false);
      if (contents) file.write(0, contents);
      return install(newDesc<FileDesc>({ kind: 'file', label, file, position: 0 }));
    },
    peekEventfd(fd: Fd): bigint {
      return eventfdDesc(fd).counter;
    },
    readEventfd(fd: Fd): bigint {
      eventfdDesc(fd);
      return native.eventfdRead(fd) ?? 0n;
    },
    contents(fd: Fd): Uint8Array {
      const d = lookup(fd, 'pread');
      const f = fileDesc(d);
      if (!f) throw new Error(`fake: fd ${fd} is a ${d.kind}, not a file`);
      const out = new Uint8Array(f.file.size);
      f.file.read(0, out);
      return out;
    },
    mappings(): FakeMappingInfo[] {
      return [...liveWindows].map((w) => ({ file: w.file.label, offset: w.offset, byteLen: w.byteLen, count: w.count, address: w.address }));
    },
    pollers(): FakePollerInfo[] {
      return [...pollers].map((p) => ({ fd: p.fd, started: p.started, events: p.events }));
    },
    violations(): string[] {
      return [...violations];
    },
    async settle(maxPasses = 1000): Promise<void> {
      for (let i = 0; i < maxPasses; i++) {
        if (!passScheduled) {
          schedule();
          if (!passScheduled) return;
        }
        await new Promise<void>((r) => setImmediate(r));
      }
      throw new Error(`fake: pollers still ready after ${maxPasses} passes (a callback does not consume what it is told of)`);
    },
  };
}
