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

export interface FileStat {
  size: number;
  /** st_mode, to tell a regular/memfd file (S_IFREG) from others. */
  mode: number;
}

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
  /**
   * mmap(MAP_SHARED) of [offset, offset+byteLen) of fd as an external ArrayBuffer. offset need not be page
   * aligned (the addon aligns down and returns a buffer starting at the requested byte). The mapping is
   * released by `munmap(ab)` (which also detaches the buffer so stale views throw) or, failing that, when
   * the buffer is garbage-collected. With `writable` false the pages are PROT_READ: a JS write to them faults.
   * byteLen must be in (0, 2^32] (Node 20's ArrayBuffer limit; window larger regions).
   */
  mmap(fd: Fd, offset: number, byteLen: number, writable: boolean): ArrayBuffer;
  munmap(ab: ArrayBuffer): void;
  memfdCreate(name: string, allowSealing: boolean): Fd;
  ftruncate(fd: Fd, byteLen: number): void;

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
}
