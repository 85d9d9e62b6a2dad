/**
 * The contract of the native addon (native/src/*.cc, loaded by native/index.ts).
 *
 * The addon does syscalls only: no protocol logic, no policy. Every call that fails throws a
 * SysError shaped like Node's own system errors (code 'EAGAIN', errno -11, syscall 'recvmsg').
 * Calls never block: sockets, eventfds and tap fds are opened O_NONBLOCK and "would block" is
 * reported as `null` (not as an exception) where the caller is expected to wait for readiness.
 */

/** A file descriptor owned by whoever holds it; closed with `close()` exactly once. */
export type Fd = number;

export interface SysError extends Error {
  code: string; // 'EAGAIN', 'ECONNREFUSED', ...
  errno: number; // negative, as in Node (-11)
  syscall: string; // 'recvmsg'
  path?: string;
}

export interface RecvResult {
  /** Bytes placed in the caller's buffer; 0 means the peer closed the connection (EOF). */
  byteLen: number;
  /** Descriptors received with SCM_RIGHTS (already O_CLOEXEC via MSG_CMSG_CLOEXEC). Caller owns them. */
  fds: Fd[];
  /** MSG_CTRUNC: more descriptors were sent than `maxFds`; the surplus was closed by the kernel. */
  fdsTruncated: boolean;
}

/**
 * What an fd refers to (fdKind): 'memfd' and 'file' are regular files (mappable), 'eventfd' and 'anon'
 * anonymous inodes (anon_inode:[eventfd] / any other), the rest by fstat's file type.
 */
export type FdKind = 'eventfd' | 'memfd' | 'file' | 'socket' | 'pipe' | 'char' | 'block' | 'dir' | 'anon' | 'other';

export interface FileStat {
  size: number;
  /** st_mode, to tell a regular/memfd file (S_IFREG) from others. */
  mode: number;
}

/**
 * File seals (fcntl(2) "File Sealing", linux/fcntl.h) for `addSeals` / `getSeals`. A seal can never be removed,
 * and applies to the file, i.e. to every process that has it open. We add `shrink` (and, on memfds we create,
 * `grow` and `seal`); never `write` / `futureWrite`, which would stop the frontend (QEMU) writing its own memory.
 */
export const F_SEAL = { seal: 0x1, shrink: 0x2, grow: 0x4, write: 0x8, futureWrite: 0x10 } as const;

/** uv_poll event bits, as libuv defines them. */
export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;
export const POLL_DISCONNECT = 4;

/**
 * A uv_poll_t watcher on one fd, driven by Node's own event loop. libuv rules apply: at most one started
 * Poller per fd (else EEXIST), and `close()` must come BEFORE closing the fd (stopping a uv_poll removes the fd
 * number from epoll, which would hit whoever reused the number). A Poller is kept alive until `close()` (never
 * closed by GC), and keeps the process alive only while started.
 */
export interface Poller {
  /** (Re)start watching for the given POLL_* bits; the callback fires each time the fd is ready. */
  start(events: number): void;
  /** Stop watching (can be started again). */
  stop(): void;
  /** Stop and release the uv handle; the fd itself is NOT closed. Idempotent. */
  close(): void;
}
export type PollerCallback = (err: SysError | null, events: number) => void;
export interface PollerConstructor {
  new (fd: Fd, callback: PollerCallback): Poller;
}

export interface TapInfo {
  fd: Fd;
  /** The interface name the kernel gave (may differ from the requested pattern such as 'vut%d'). */
  name: string;
}

/**
 * userfaultfd (Documentation/admin-guide/mm/userfaultfd.rst) for postcopy live migration (vhost-user.rst
 * "Migration": POSTCOPY_ADVISE hands the front-end our uffd, POSTCOPY_LISTEN / POSTCOPY_END bracket its use).
 *
 * A range is named by a `UffdTarget` plus (offset, byteLen):
 *   - an ArrayBuffer returned by `mmap()`: offset/byteLen are relative to byte 0 of the buffer and are checked
 *     against it in C++ (out of bounds: ERR_OUT_OF_RANGE; not a live mapping: EINVAL), so JS never holds raw
 *     pointers for its own memory;
 *   - a bigint absolute address: an address in the address space of the process that created the uffd, possibly
 *     another process (the front-end role: QEMU serves the back-end's faults at the back-end's addresses, which
 *     the back-end reported from `mmapAddress()`). Only the kernel validates it (EINVAL/ENOENT for ranges not
 *     registered on this uffd).
 * Every UFFDIO_* range must be non-empty and page aligned (address and length); otherwise EINVAL is thrown
 * before any ioctl. With a non page-aligned `mmap()` offset, byte 0 of the buffer is not page aligned: use
 * offsets that land on page boundaries (`(mmapAddress(ab) + BigInt(offset)) % pageSize === 0n`).
 */
export type UffdTarget = ArrayBuffer | bigint;

/** What a registration traps: missing pages, writes to write-protected pages, or minor faults (page cache hit). */
export type UffdRegisterMode = 'missing' | 'wp' | 'minor';

/** Result of the UFFDIO_API handshake. */
export interface UffdApiResult {
  /** Every UFFD_FEATURE_* the kernel supports (not only the requested ones, which are the ones enabled). */
  features: bigint;
  /** Bitmask of ioctls usable on the fd itself: 1n << UFFD_IOCTL.* (register, unregister, api). */
  ioctls: bigint;
}

/** One struct uffd_msg. */
export interface UffdMsg {
  /** 'pagefault' | 'fork' | 'remap' | 'remove' | 'unmap', or 'unknown:<n>' for an event this build does not know. */
  event: 'pagefault' | 'fork' | 'remap' | 'remove' | 'unmap' | (string & {});
  /**
   * pagefault: the faulting address (rounded down to its page unless UFFD_FEATURE_EXACT_ADDRESS was enabled);
   * remove/unmap: start of the range; remap: the old address ('from'); fork: 0n.
   */
  address: bigint;
  /** pagefault: UFFD_PAGEFAULT_FLAG_* bits; 0 for other events. */
  flags: number;
  /** pagefault: faulting thread id (only with UFFD_FEATURE_THREAD_ID, else 0). */
  ptid?: number;
  /** fork (UFFD_FEATURE_EVENT_FORK): the child's new uffd, owned by the caller. */
  ufd?: Fd;
  /** remove/unmap: end of the range (exclusive). */
  end?: bigint;
  /** remap (UFFD_FEATURE_EVENT_REMAP): new address and length. */
  to?: bigint;
  len?: bigint;
}

export interface UffdFillOptions {
  /** Do not wake the threads blocked on the range (wake them later with `uffdWake`). */
  dontWake?: boolean;
}
export interface UffdCopyOptions extends UffdFillOptions {
  /** Map the copied pages write-protected (UFFDIO_COPY_MODE_WP; the range must be registered 'wp' too). */
  writeProtect?: boolean;
}

/** uffd_msg.arg.pagefault.flags bits. */
export const UFFD_PAGEFAULT_FLAG_WRITE = 1;
export const UFFD_PAGEFAULT_FLAG_WP = 2;
export const UFFD_PAGEFAULT_FLAG_MINOR = 4;

/** UFFD_FEATURE_* bits for `uffdApi` (linux/userfaultfd.h). */
export const UFFD_FEATURE = {
  pagefaultFlagWp: 1n << 0n,
  eventFork: 1n << 1n,
  eventRemap: 1n << 2n,
  eventRemove: 1n << 3n,
  missingHugetlbfs: 1n << 4n,
  missingShmem: 1n << 5n,
  eventUnmap: 1n << 6n,
  sigbus: 1n << 7n,
  threadId: 1n << 8n,
  minorHugetlbfs: 1n << 9n,
  minorShmem: 1n << 10n,
  exactAddress: 1n << 11n,
  wpHugetlbfsShmem: 1n << 12n,
} as const;

/** Bit numbers (_UFFDIO_*) in the `ioctls` masks of `uffdApi` and `uffdRegister`: test with `mask & (1n << bit)`. */
export const UFFD_IOCTL = {
  register: 0x00n,
  unregister: 0x01n,
  wake: 0x02n,
  copy: 0x03n,
  zeropage: 0x04n,
  move: 0x05n,
  writeProtect: 0x06n,
  continue: 0x07n,
  poison: 0x08n,
  api: 0x3fn,
} as const;

export interface VfioDeviceInfo {
  /** VFIO_DEVICE_FLAGS_* (bit 1: PCI, bit 0: reset supported). */
  flags: number;
  numRegions: number;
  numIrqs: number;
}
export interface VfioRegionInfo {
  index: number;
  /** VFIO_REGION_INFO_FLAG_* (VFIO_REGION_FLAG.read/write/mmap). */
  flags: number;
  /** 0 for a BAR the device does not implement. */
  size: number;
  /** Where the region starts in the device fd (for pread/pwrite and mmap). */
  offset: number;
}
export interface VfioIrqInfo {
  index: number;
  /** VFIO_IRQ_INFO_* (eventfd 1, maskable 2, automasked 4, noresize 8). */
  flags: number;
  /** Vectors; 0 when the device lacks this kind of interrupt. */
  count: number;
}

/** linux/vfio.h constants the TS side needs. */
export const VFIO_API_VERSION = 0;
export const VFIO_EXT = { type1: 1, type1v2: 3, noiommu: 8 } as const;
export const VFIO_GROUP_FLAGS = { viable: 1, containerSet: 2 } as const;
export const VFIO_REGION_FLAG = { read: 1, write: 2, mmap: 4 } as const;
export const VFIO_PCI_REGION = { bar0: 0, config: 7 } as const;
export const VFIO_PCI_IRQ = { intx: 0, msi: 1, msix: 2 } as const;

export interface NativeBinding {
  // ---- AF_UNIX stream sockets (SOCK_CLOEXEC | SOCK_NONBLOCK) ----
  /** socket+bind+listen. Does not unlink an existing path (caller decides). */
  unixListen(path: string, backlog: number): Fd;
  /** accept4 with SOCK_CLOEXEC|SOCK_NONBLOCK; null on EAGAIN. */
  unixAccept(listenFd: Fd): Fd | null;
  /** socket+connect; the returned fd is non-blocking. Throws ENOENT/ECONNREFUSED etc. */
  unixConnect(path: string): Fd;
  /** socketpair(AF_UNIX, SOCK_STREAM) for the backend channel and tests. */
  socketpair(): [Fd, Fd];
  /** recvmsg into buf[offset, offset+byteLen); at most maxFds descriptors; null on EAGAIN. */
  recvmsg(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, maxFds: number): RecvResult | null;
  /** sendmsg of buf[offset, offset+byteLen) with fds as SCM_RIGHTS (sent with the first byte); null on EAGAIN. */
  sendmsg(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, fds: readonly Fd[]): number | null;
  close(fd: Fd): void;
  /** dup(fd) with O_CLOEXEC, for handing a copy to another owner. */
  dup(fd: Fd): Fd;

  // ---- plain fd I/O (tap, eventfd-like, pipes); null on EAGAIN ----
  read(fd: Fd, buf: Uint8Array, offset: number, byteLen: number): number | null;
  write(fd: Fd, buf: Uint8Array, offset: number, byteLen: number): number | null;
  /** readv/writev over several (view, offset, len) triples given as parallel arrays. */
  readv(fd: Fd, bufs: readonly Uint8Array[], offsets: readonly number[], lens: readonly number[]): number | null;
  writev(fd: Fd, bufs: readonly Uint8Array[], offsets: readonly number[], lens: readonly number[]): number | null;

  // ---- memory ----
  fstat(fd: Fd): FileStat;
  /** What the fd refers to, for checking fds a frontend passes before they are used. */
  fdKind(fd: Fd): FdKind;
  /**
   * mmap(MAP_SHARED) of [offset, offset+byteLen) of fd as an external ArrayBuffer. offset need not be page
   * aligned (the addon aligns down and returns a buffer starting at the requested byte). The mapping is
   * released by `munmap(ab)` or, failing that, when the buffer is garbage-collected. munmap releases the
   * file's pages at once but does not detach the buffer (detaching slows every typed-array access of the
   * process: decisions.md D43): stale views read zeros and their writes reach nothing shared; the address
   * range goes when the buffer is collected. With `writable` false the pages are PROT_READ: a JS write to them faults.
   * byteLen must be in (0, 2^32] (Node 20's ArrayBuffer limit; window larger regions).
   */
  mmap(fd: Fd, offset: number, byteLen: number, writable: boolean): ArrayBuffer;
  munmap(ab: ArrayBuffer): void;
  /** memfd_create(MFD_CLOEXEC); without `allowSealing` the file is born with F_SEAL_SEAL (no seal can be added). */
  memfdCreate(name: string, allowSealing: boolean): Fd;
  ftruncate(fd: Fd, byteLen: number): void;
  /**
   * fcntl(F_ADD_SEALS): add F_SEAL.* bits to a file that supports sealing (memfd, and other shmem/hugetlbfs files
   * with sealing allowed). Throws a SysError with syscall 'fcntl': EPERM when the file does not allow sealing
   * (F_SEAL_SEAL is set: a memfd created without MFD_ALLOW_SEALING, or sealed so by its creator) or a seal
   * forbids it; EINVAL when the file cannot be sealed at all (not a memfd / shmem file: a regular file on disk)
   * or a bit is unknown; EBUSY for F_SEAL_WRITE while writable shared mappings exist. Adding a seal already
   * present succeeds.
   */
  addSeals(fd: Fd, seals: number): void;
  /** fcntl(F_GET_SEALS): the F_SEAL.* bits of the file; EINVAL (syscall 'fcntl') for a file without seals support. */
  getSeals(fd: Fd): number;
  /**
   * Registers the mapping behind a buffer returned by `mmap()` with the process's SIGBUS guard and returns its id
   * (a positive integer, never reused; the same id again for a mapping already guarded). A SIGBUS at an address
   * inside a guarded mapping (the file was truncated under it: the frontend shrank its memfd) does not kill
   * the process: the faulting page and every later page of that mapping are replaced by private zero pages
   * (so the access is retried and reads zeros; writes go nowhere), and the id is reported as poisoned through
   * `onGuestMemoryFault` / `takeGuestMemoryFaults`. A SIGBUS anywhere else still kills the process (the
   * previously installed handler, or the default action). The handler (SA_SIGINFO | SA_ONSTACK) is installed
   * at the first call. `munmap()` and the GC finalizer unregister the mapping themselves. Throws EINVAL
   * (syscall 'guardMapping') for a buffer that is not a live mapping of ours, ENOSPC when the registry
   * (16384 mappings) is full. Pattern: libwayland-server's wl_shm SIGBUS guard (native/src/guard.cc).
   */
  guardMapping(ab: ArrayBuffer): number;
  /** Unregisters a guard id; false when it is not registered (already released, or unknown). */
  unguardMapping(id: number): boolean;
  /**
   * The function told, on the event loop, the ids of guarded mappings poisoned since the last report (each id
   * once). One per process (thread): a new call replaces it; null removes it (faults then wait for
   * `takeGuestMemoryFaults`). Faults that came while none was set are reported after it is set.
   */
  onGuestMemoryFault(callback: ((ids: number[]) => void) | null): void;
  /** Takes (so they are not reported again) the ids of guarded mappings poisoned and not yet reported. */
  takeGuestMemoryFaults(): number[];
  /**
   * The virtual address of byte 0 of a buffer returned by `mmap()` (for an unaligned mmap offset: the address of
   * that offset, not of the page below it). Postcopy needs it: vhost-user.rst SET_MEM_TABLE "the back-end replies
   * with the bases of the memory mapped regions". Throws EINVAL (syscall 'mmapAddress') for a buffer that is
   * not a live mapping of ours (foreign, or released by `munmap()`).
   */
  mmapAddress(ab: ArrayBuffer): bigint;
  /**
   * madvise(2) on [offset, offset+byteLen) of a buffer returned by `mmap()` (bounds checked: ERR_OUT_OF_RANGE).
   * The kernel needs page-aligned ranges, so 'dontneed' and 'remove', which drop memory, shrink the range INWARD
   * to the whole pages inside it (nothing outside the given range is ever dropped), while the 'willneed' hint
   * grows OUTWARD to page boundaries. Returns the bytes actually advised (0 when no whole page is inside).
   * 'dontneed' on a MAP_SHARED mapping only drops our page-table entries: the data stays in the page cache (on
   * private anonymous memory it would read back as zeros). 'remove' punches a hole in the shmem/memfd file: the
   * data is gone for every mapping of it; it needs a mapping of a descriptor open for writing (else EACCES).
   * Failures throw with syscall 'madvise'.
   */
  madvise(ab: ArrayBuffer, offset: number, byteLen: number, advice: 'dontneed' | 'remove' | 'willneed'): number;
  /**
   * A second mapping of the same pages as a buffer returned by `mmap()` (mremap(2) with old_size 0 of a
   * MAP_SHARED mapping), at another address: same length, protection and sub-page offset, guarded by the SIGBUS
   * guard when the source is; release it with `munmap()` like any mapping. Postcopy registers only the alias
   * with the userfaultfd, so the source, which the event loop reads, never blocks on a missing page (an access
   * to a missing page through it allocates the page instead: check `mincore` first). EINVAL for a buffer that
   * is not a live mapping of ours; mremap's error (syscall 'mremap') when the kernel cannot alias it.
   */
  mmapAlias(ab: ArrayBuffer): ArrayBuffer;

  // ---- postcopy without blocking the event loop (native/src/prefault.cc) ----
  /**
   * mincore(2) over [offset, offset+byteLen) of a buffer returned by `mmap()` (bounds checked: ERR_OUT_OF_RANGE):
   * -1 when every page of the range is resident, else the offset in `ab` of the first byte of the range that
   * lies on a page that is not (`offset` itself when it is the first page). For a MAP_SHARED mapping of
   * shmem/memfd this is page-cache residency: a page placed with UFFDIO_COPY / UFFDIO_ZEROPAGE (into any mapping
   * of the file) is resident in every mapping of it, a page the frontend has not placed yet is not. Never
   * faults, never blocks. EINVAL (syscall 'mincore') for a buffer that is not a live mapping of ours.
   */
  mincore(ab: ArrayBuffer, offset: number, byteLen: number): number;
  /**
   * Reads one byte of every page of [offset, offset+byteLen) (byteLen >= 1; bounds checked: ERR_OUT_OF_RANGE) of
   * a buffer returned by `mmap()` on a helper thread of its own, then calls `callback` on the event loop. A page
   * missing under a userfaultfd blocks that thread, never the loop, until the frontend places it (or the range
   * is woken); the touch is what raises the fault the frontend serves. The mapping is pinned until the callback:
   * `munmap()` still retires it (the thread then reads zero pages once woken) and the GC may drop the buffer,
   * but the address range is released only after the thread is done. Pending prefaults do not keep the process
   * alive. One thread per call (not libuv's pool, which blocked prefaults would starve): callers bound how many
   * they start. EINVAL for a buffer that is not a live mapping; EAGAIN (syscall 'pthread_create') when no thread
   * can be started.
   */
  prefault(ab: ArrayBuffer, offset: number, byteLen: number, callback: () => void): void;

  // ---- eventfd (EFD_CLOEXEC | EFD_NONBLOCK) ----
  eventfd(initval: number): Fd;
  /** Read and reset the counter; null when it is zero (EAGAIN). */
  eventfdRead(fd: Fd): bigint | null;
  /** Add to the counter (1n to signal). */
  eventfdWrite(fd: Fd, value: bigint): void;

  // ---- TAP (/dev/net/tun) ----
  /** TUNSETIFF with IFF_TAP|IFF_NO_PI (|IFF_VNET_HDR when vnetHdrLen > 0, then TUNSETVNETHDRSZ). Non-blocking fd. */
  tapOpen(name: string, vnetHdrLen: number): TapInfo;
  /** TUNSETOFFLOAD with TUN_F_* bits (0 disables offloads). */
  tapSetOffload(fd: Fd, tunFlags: number): void;
  /** SIOCSIFFLAGS IFF_UP on a named interface (so tests need no `ip link set up`). */
  linkSetUp(name: string): void;

  // ---- readiness ----
  Poller: PollerConstructor;

  // ---- userfaultfd (postcopy migration); see UffdTarget for how ranges are named ----
  /**
   * syscall(SYS_userfaultfd, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)); falls back to /dev/userfaultfd
   * (USERFAULTFD_IOC_NEW) when the syscall is refused with EPERM/ENOSYS. Kernel-mode faults are trapped too (no
   * UFFD_USER_MODE_ONLY): the back-end's own syscalls write guest memory. Call `uffdApi` next.
   */
  userfaultfd(nonBlocking: boolean): Fd;
  /**
   * UFFDIO_API handshake (api = UFFD_API): required once, before any other ioctl; a second call fails (EINVAL).
   * `features` enables optional UFFD_FEATURE_* bits (0n for postcopy: missing-page faults need none, even on
   * shmem; events such as remove/unmap would only add messages to handle). Unsupported bits throw EINVAL.
   */
  uffdApi(fd: Fd, features: bigint): UffdApiResult;
  /**
   * UFFDIO_REGISTER of [offset, offset+byteLen) of our mapping `ab`. Returns the ioctls the kernel allows on the
   * range (bits UFFD_IOCTL.*; e.g. no zeropage on hugetlbfs, continue only with 'minor').
   */
  uffdRegister(fd: Fd, ab: ArrayBuffer, offset: number, byteLen: number, mode: UffdRegisterMode): bigint;
  /** UFFDIO_UNREGISTER: accesses to the range no longer fault to the uffd (blocked faulters are woken). */
  uffdUnregister(fd: Fd, ab: ArrayBuffer, offset: number, byteLen: number): void;
  /**
   * UFFDIO_COPY of `src` (whole pages) to the range starting at `offset` of `target`, atomically filling missing
   * pages and waking their waiters (unless `dontWake`). Returns the bytes placed: fewer than src.length only when
   * the kernel stopped early with EAGAIN (mm changing, or a later page failed): retry the rest. Throws EEXIST
   * when the first page is already present, ENOENT/EINVAL for a range not registered on this uffd.
   */
  uffdCopy(fd: Fd, target: UffdTarget, offset: number, src: Uint8Array, options?: UffdCopyOptions): number;
  /** UFFDIO_ZEROPAGE: fill missing pages of the range with zeros. Returns bytes placed, as `uffdCopy`. */
  uffdZeropage(fd: Fd, target: UffdTarget, offset: number, byteLen: number, options?: UffdFillOptions): number;
  /**
   * UFFDIO_CONTINUE for 'minor' registrations: map the pages already in the page cache into the range. Returns
   * bytes mapped, as `uffdCopy`.
   */
  uffdContinue(fd: Fd, target: UffdTarget, offset: number, byteLen: number, options?: UffdFillOptions): number;
  /**
   * UFFDIO_WRITEPROTECT for 'wp' registrations: protect (writes then fault with UFFD_PAGEFAULT_FLAG_WP) or
   * unprotect the range; unprotecting wakes blocked writers unless `dontWake`.
   */
  uffdWriteProtect(fd: Fd, target: UffdTarget, offset: number, byteLen: number, protect: boolean,
    options?: UffdFillOptions): void;
  /** UFFDIO_WAKE: wake threads blocked on faults in the range (after a `dontWake` fill, or a fill made elsewhere). */
  uffdWake(fd: Fd, target: UffdTarget, offset: number, byteLen: number): void;
  /** Read one struct uffd_msg; null when none is pending (EAGAIN; open the uffd non-blocking). */
  uffdRead(fd: Fd): UffdMsg | null;

  // ---- VFIO (linux/vfio.h; backend/net/ports/vfio/ holds the policy) ----
  /** open('/dev/vfio/vfio'): a new, empty container. ENOENT when the vfio module is not loaded. */
  vfioOpenContainer(): Fd;
  /** open('/dev/vfio/<group>'): ENOENT when no device of that IOMMU group is bound to vfio-pci. */
  vfioOpenGroup(group: number): Fd;
  /** VFIO_GET_API_VERSION (VFIO_API_VERSION = 0). */
  vfioGetApiVersion(container: Fd): number;
  /** VFIO_CHECK_EXTENSION: > 0 when supported (VFIO_EXT.type1v2 ...). */
  vfioCheckExtension(container: Fd, extension: number): number;
  /** VFIO_GROUP_GET_STATUS flags (VFIO_GROUP_FLAGS.*). */
  vfioGroupGetStatus(group: Fd): number;
  /** VFIO_GROUP_SET_CONTAINER / VFIO_GROUP_UNSET_CONTAINER. */
  vfioGroupSetContainer(group: Fd, container: Fd): void;
  vfioGroupUnsetContainer(group: Fd): void;
  /** VFIO_SET_IOMMU (after the first group is attached). */
  vfioSetIommu(container: Fd, type: number): void;
  /** VFIO_GROUP_GET_DEVICE_FD by PCI address ('0000:00:03.0'). */
  vfioGroupGetDeviceFd(group: Fd, name: string): Fd;
  vfioDeviceGetInfo(device: Fd): VfioDeviceInfo;
  /** VFIO_DEVICE_GET_REGION_INFO; vfio-pci: index 0-5 = BARs, 7 = config space (VFIO_PCI_REGION). */
  vfioDeviceGetRegionInfo(device: Fd, index: number): VfioRegionInfo;
  /** VFIO_DEVICE_GET_IRQ_INFO; vfio-pci: index 0 INTx, 1 MSI, 2 MSI-X (VFIO_PCI_IRQ). */
  vfioDeviceGetIrqInfo(device: Fd, index: number): VfioIrqInfo;
  /**
   * VFIO_DEVICE_SET_IRQS. With `fds`: eventfds for vectors [start, start+fds.length) ('trigger' only; -1
   * de-assigns one). Without: DATA_NONE over [start, start+count): 'trigger' with count 0 disables the index,
   * 'unmask' re-arms an auto-masked INTx.
   */
  vfioDeviceSetIrqs(device: Fd, index: number, action: 'trigger' | 'mask' | 'unmask', start: number,
    fds: readonly Fd[] | null, count?: number): void;
  /** VFIO_DEVICE_RESET (function-level reset); EINVAL/ENOTTY when the device has none. */
  vfioDeviceReset(device: Fd): void;
  /**
   * VFIO_IOMMU_MAP_DMA (read+write) of [offset, offset+byteLen) of a buffer returned by `mmap()` at `iova`.
   * vaddr, iova and length must be page aligned (EINVAL before the ioctl). Unmap before munmap().
   */
  vfioMapDma(container: Fd, ab: ArrayBuffer, offset: number, byteLen: number, iova: bigint): void;
  /** VFIO_IOMMU_UNMAP_DMA; returns the bytes unmapped. */
  vfioUnmapDma(container: Fd, iova: bigint, byteLen: number): number;
  /** pread/pwrite of buf[offset, offset+byteLen) at file `position` (VFIO region offset + register). */
  pread(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, position: number): number;
  pwrite(fd: Fd, buf: Uint8Array, offset: number, byteLen: number, position: number): number;
}
