/**
 * A raw, hostile vhost-user frontend for the hostile suite and the fuzzer. It is independent of the
 * project's scripted frontend (protocol/frontend.ts) and of the codec: it frames messages itself (12-byte
 * header, wire.ts), sends any bytes with any fds (SCM_RIGHTS through the native addon, one sendmsg per
 * message), makes its own memfds, eventfds, pipes and sockets, and writes split-ring contents straight
 * into its guest memory. It never validates what it sends: lying sizes, wrong fd kinds, replies sent as
 * requests are the point.
 *
 * Replies are matched by request id (the REPLY flag set); frames nobody waits for land in `stray`.
 * Fds that arrive with replies are closed at once unless a waiter asked for them.
 */
import { closeSync, constants as fsc, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadNative } from '../../native/index.ts';
import { POLL_DISCONNECT, POLL_READABLE, type Fd, type NativeBinding, type Poller } from '../../native/types.ts';
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  EMPTY,
  F_NEED_REPLY,
  F_REPLY,
  F_VERSION,
  HDR,
  NET_HDR_V1,
  type Region,
  readU64,
} from './wire.ts';

export const sys: NativeBinding = loadNative();

export interface Frame {
  request: number;
  flags: number;
  /** The header's size field. */
  size: number;
  payload: Uint8Array;
  fds: Fd[];
}

export type Answer =
  | { kind: 'reply'; frame: Frame; ms: number }
  | { kind: 'closed'; ms: number }
  | { kind: 'timeout'; ms: number };

interface Waiter {
  request: number;
  keepFds: boolean;
  resolve: (a: Answer) => void;
  timer: NodeJS.Timeout;
  t0: number;
}

export interface SendOptions {
  flags?: number;
  fds?: readonly Fd[];
  /** Header size field (default: the payload length). A larger value with fewer bytes "lies". */
  size?: number;
}

export interface RequestOptions extends SendOptions {
  /** Also set NEED_REPLY (default false). */
  needReply?: boolean;
  timeoutMs?: number;
  /** Keep the fds of the reply (the caller closes them). */
  keepFds?: boolean;
}

const MAX_FRAME = 1 << 20;

export class RawFrontend {
  readonly fd: Fd;
  private readonly poller: Poller;
  private rx = new Uint8Array(64 * 1024);
  private rxLen = 0;
  private readonly rbuf = new Uint8Array(64 * 1024);
  private pendingFds: Fd[] = [];
  private waiters: Waiter[] = [];
  private closeWaiters: (() => void)[] = [];
  /** Replies (or anything else) that arrived with nobody waiting for them. */
  readonly stray: Frame[] = [];
  /** Called for every frame nobody waits for (e.g. back-end requests on the back-end channel). */
  onStray: ((f: Frame) => void) | null = null;
  /** The backend closed the connection (EOF, reset) or we did. */
  closed = false;
  peerClosed = false;
  private released = false;

  private constructor(fd: Fd) {
    this.fd = fd;
    this.poller = new sys.Poller(fd, () => this.readable());
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  /** Connects to a backend's socket. Throws when nobody listens. */
  static connect(path: string): RawFrontend {
    return new RawFrontend(sys.unixConnect(path));
  }

  /** Wraps one end of a socketpair (e.g. our end of the back-end channel). */
  static adopt(fd: Fd): RawFrontend {
    return new RawFrontend(fd);
  }

  private readable(): void {
    if (this.released) return;
    for (;;) {
      let r;
      try {
        r = sys.recvmsg(this.fd, this.rbuf, 0, this.rbuf.length, 16);
      } catch {
        return this.peerGone();
      }
      if (r === null) return;
      for (const fd of r.fds) this.pendingFds.push(fd);
      if (r.byteLen === 0) return this.peerGone();
      this.append(this.rbuf.subarray(0, r.byteLen));
      this.parse();
    }
  }

  private append(b: Uint8Array): void {
    if (this.rxLen + b.length > this.rx.length) {
      const n = new Uint8Array(Math.max(this.rx.length * 2, this.rxLen + b.length));
      n.set(this.rx.subarray(0, this.rxLen));
      this.rx = n;
    }
    this.rx.set(b, this.rxLen);
    this.rxLen += b.length;
  }

  private parse(): void {
    let off = 0;
    while (this.rxLen - off >= HDR) {
      const dv = new DataView(this.rx.buffer, this.rx.byteOffset + off, HDR);
      const size = dv.getUint32(8, true);
      if (size > MAX_FRAME) {
        // A backend that sends nonsense sizes: treat as a closed connection.
        this.rxLen = 0;
        return this.peerGone();
      }
      if (this.rxLen - off < HDR + size) break;
      const frame: Frame = {
        request: dv.getUint32(0, true),
        flags: dv.getUint32(4, true),
        size,
        payload: this.rx.slice(off + HDR, off + HDR + size),
        fds: this.pendingFds,
      };
      this.pendingFds = [];
      off += HDR + size;
      this.dispatch(frame);
    }
    if (off > 0) {
      this.rx.copyWithin(0, off, this.rxLen);
      this.rxLen -= off;
    }
  }

  private dispatch(f: Frame): void {
    const i = (f.flags & F_REPLY) !== 0 ? this.waiters.findIndex((w) => w.request === f.request) : -1;
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      clearTimeout(w!.timer);
      if (!w!.keepFds) this.closeFds(f.fds);
      w!.resolve({ kind: 'reply', frame: f, ms: Date.now() - w!.t0 });
      return;
    }
    this.closeFds(f.fds);
    f.fds = [];
    this.stray.push(f);
    this.onStray?.(f);
    if (this.stray.length > 1000) this.stray.splice(0, 500);
  }

  private closeFds(fds: Fd[]): void {
    for (const fd of fds) {
      try {
        sys.close(fd);
      } catch {
        /* already gone */
      }
    }
  }

  private peerGone(): void {
    this.peerClosed = true;
    this.markClosed();
  }

  private markClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.stop();
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve({ kind: 'closed', ms: Date.now() - w.t0 });
    }
    this.waiters = [];
    for (const c of this.closeWaiters) c();
    this.closeWaiters = [];
  }

  /**
   * Sends one message in one sendmsg (fds with its first byte). Returns false when the connection is
   * gone (EPIPE, ECONNRESET) or the peer stopped reading for a second.
   */
  send(request: number, payload: Uint8Array = EMPTY, o: SendOptions = {}): boolean {
    const bytes = new Uint8Array(HDR + payload.length);
    const dv = new DataView(bytes.buffer);
    dv.setUint32(0, request >>> 0, true);
    dv.setUint32(4, (o.flags ?? F_VERSION) >>> 0, true);
    dv.setUint32(8, (o.size ?? payload.length) >>> 0, true);
    bytes.set(payload, HDR);
    return this.sendRaw(bytes, o.fds ?? []);
  }

  /** Any bytes (a partial header, half a payload), fds with the first byte. */
  sendRaw(bytes: Uint8Array, fds: readonly Fd[] = []): boolean {
    if (this.closed) return false;
    let off = 0;
    let first = true;
    let deadline = 0;
    while (off < bytes.length || first) {
      let n: number | null;
      try {
        n = sys.sendmsg(this.fd, bytes, off, bytes.length - off, first ? fds : []);
      } catch {
        this.peerGone();
        return false;
      }
      if (n === null) {
        // The backend does not read: give it a second, then report the connection as stuck.
        if (deadline === 0) deadline = Date.now() + 1000;
        if (Date.now() > deadline) return false;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
        continue;
      }
      first = false;
      off += n;
      if (bytes.length === 0) break;
    }
    return true;
  }

  /** Waits for the reply to `request` (REPLY flag, same id), or the connection's end, or the timeout. */
  waitReply(request: number, timeoutMs = 1000, keepFds = false): Promise<Answer> {
    const t0 = Date.now();
    if (this.closed) return Promise.resolve({ kind: 'closed', ms: 0 });
    return new Promise((resolve) => {
      const w: Waiter = {
        request,
        keepFds,
        resolve,
        t0,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve({ kind: 'timeout', ms: Date.now() - t0 });
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Sends and waits for the reply with the same id. */
  request(request: number, payload: Uint8Array = EMPTY, o: RequestOptions = {}): Promise<Answer> {
    const flags = o.flags ?? F_VERSION | (o.needReply ? F_NEED_REPLY : 0);
    const p = this.waitReply(request, o.timeoutMs ?? 1000, o.keepFds ?? false);
    const sent = this.send(request, payload, { ...o, flags });
    if (!sent && !this.closed) this.markClosed();
    return p;
  }

  /**
   * A request with NEED_REPLY whose answer is the REPLY_ACK u64: the value, or 'closed' / 'timeout' /
   * 'bad-size' (a reply that is not 8 bytes).
   */
  async ack(request: number, payload: Uint8Array = EMPTY, o: RequestOptions = {}): Promise<bigint | 'closed' | 'timeout' | 'bad-size'> {
    const a = await this.request(request, payload, { ...o, needReply: true });
    if (a.kind !== 'reply') return a.kind;
    return readU64(a.frame.payload) ?? 'bad-size';
  }

  /** A request whose reply is a u64 body (GET_FEATURES ...): the value, or why there is none. */
  async getU64(request: number, payload: Uint8Array = EMPTY, timeoutMs = 1000): Promise<bigint | 'closed' | 'timeout' | 'bad-size'> {
    const a = await this.request(request, payload, { timeoutMs });
    if (a.kind !== 'reply') return a.kind;
    return readU64(a.frame.payload) ?? 'bad-size';
  }

  /** Resolves true when the backend closed the connection within `ms`. */
  waitClosed(ms: number): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Closes our end (abruptly: no goodbye exists in vhost-user). Idempotent. */
  close(): void {
    if (this.released) return;
    this.markClosed();
    this.released = true;
    this.poller.close();
    this.closeFds(this.pendingFds);
    this.pendingFds = [];
    sys.close(this.fd);
  }
}

// ---- fds of every kind ---------------------------------------------------------------------------

export type FdKind = 'eventfd' | 'pipe' | 'socket' | 'memfd' | 'devnull' | 'dir';
export const FD_KINDS: readonly FdKind[] = ['eventfd', 'pipe', 'socket', 'memfd', 'devnull', 'dir'];

/**
 * One fd to hand to the backend, plus our way to act on it from the far end: `fd` is what is sent
 * (sendmsg passes a copy: ours stays open), `poke()` makes it readable for whoever holds it, `hangUp()`
 * closes the far end (a pipe's writer, the socket's peer). `close()` releases everything of ours.
 */
export interface KindFd {
  kind: FdKind;
  fd: Fd;
  poke(): void;
  hangUp(): void;
  /** Empties what poke() left readable (a pooled fd starts each fuzz sequence empty). */
  drain(): void;
  close(): void;
}

const scratch = new Uint8Array(4096);
/** Reads `fd` until it would block (or fails): a pipe's or a socket's pending bytes. */
function drainFd(fd: Fd): void {
  for (let i = 0; i < 1024; i++) {
    try {
      const n = sys.read(fd, scratch, 0, scratch.length);
      if (n === null || n === 0) return;
    } catch {
      return;
    }
  }
}

let fifoDir: string | null = null;
let fifoSeq = 0;
const fifoReady: string[] = [];
/** A fresh FIFO path; made 64 at a time (one mkfifo process per 64: the fuzzer makes many). */
function fifoPath(): string {
  if (fifoDir === null) {
    const d = mkdtempSync(join(tmpdir(), 'vut-hostile-fifo-'));
    process.once('exit', () => rmSync(d, { recursive: true, force: true }));
    fifoDir = d;
  }
  if (fifoReady.length === 0) {
    const batch = Array.from({ length: 64 }, () => join(fifoDir!, `p${fifoSeq++}`));
    execFileSync('mkfifo', batch);
    fifoReady.push(...batch);
  }
  return fifoReady.shift()!;
}

function safeClose(fd: Fd | null): void {
  if (fd === null) return;
  try {
    sys.close(fd);
  } catch {
    /* closed already */
  }
}

/** A pipe's read end for the backend, its write end ours (a FIFO opened both ways, then unlinked). */
function makePipe(): KindFd {
  const path = fifoPath();
  const r = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  let w: Fd | null = openSync(path, fsc.O_WRONLY | fsc.O_NONBLOCK);
  rmSync(path);
  return {
    kind: 'pipe',
    fd: r,
    poke() {
      // 3 bytes: a reader that expects an 8-byte eventfd counter gets a short read.
      try {
        if (w !== null) writeSync(w, new Uint8Array([1, 2, 3]));
      } catch {
        /* pipe full (nobody reads it): still readable for its reader */
      }
    },
    hangUp() {
      if (w !== null) closeSync(w);
      w = null;
    },
    drain: () => drainFd(r),
    close() {
      this.hangUp();
      safeClose(r);
    },
  };
}

/**
 * A pool with one fd of each kind, made on first use and reused (the fuzzer: sendmsg hands the backend
 * copies, ours stay). `closeAll` releases the pool.
 */
export class FdKit {
  private readonly pool = new Map<FdKind, KindFd>();

  get(kind: FdKind): KindFd {
    let k = this.pool.get(kind);
    if (k === undefined) {
      k = makeKind(kind);
      this.pool.set(kind, k);
    }
    return k;
  }

  /** Every pooled fd back to empty. */
  drainAll(): void {
    for (const k of this.pool.values()) k.drain();
  }

  closeAll(): void {
    for (const k of this.pool.values()) k.close();
    this.pool.clear();
  }
}

export function makeKind(kind: FdKind): KindFd {
  switch (kind) {
    case 'eventfd': {
      const fd = sys.eventfd(0);
      return {
        kind,
        fd,
        poke: () => {
          try {
            sys.eventfdWrite(fd, 1n);
          } catch {
            /* counter full */
          }
        },
        hangUp() {},
        drain: () => void sys.eventfdRead(fd),
        close: () => safeClose(fd),
      };
    }
    case 'pipe':
      return makePipe();
    case 'socket': {
      const [a, b] = sys.socketpair();
      let peer: Fd | null = b;
      return {
        kind,
        fd: a,
        poke() {
          try {
            if (peer !== null) sys.write(peer, new Uint8Array([7, 7, 7]), 0, 3);
          } catch {
            /* peer buffer full */
          }
        },
        hangUp() {
          safeClose(peer);
          peer = null;
        },
        drain: () => drainFd(a),
        close() {
          this.hangUp();
          safeClose(a);
        },
      };
    }
    case 'memfd': {
      const fd = sys.memfdCreate('hostile-kind', false);
      sys.ftruncate(fd, 4096);
      return {
        kind,
        fd,
        poke: () => void sys.write(fd, new Uint8Array(8).fill(1), 0, 8),
        hangUp() {},
        drain() {},
        close: () => safeClose(fd),
      };
    }
    case 'devnull': {
      const fd = openSync('/dev/null', 'r+');
      return { kind, fd, poke() {}, hangUp() {}, drain() {}, close: () => safeClose(fd) };
    }
    case 'dir': {
      const fd = openSync(tmpdir(), fsc.O_RDONLY | fsc.O_DIRECTORY);
      return { kind, fd, poke() {}, hangUp() {}, drain() {}, close: () => safeClose(fd) };
    }
  }
}

// ---- guest memory and split rings ----------------------------------------------------------------

/** The user address our (pretend) VMM maps guest memory at; the backend maps its own copy. */
export const UVA_BASE = 0x7f5500000000n;

export interface GuestMemoryOptions {
  bytes?: number;
  /** memfd created with MFD_ALLOW_SEALING (a backend may seal it against shrinking). */
  allowSealing?: boolean;
  uva?: bigint;
  gpa?: bigint;
}

/** A memfd of guest memory, mapped here too so we can write rings and frames into it. */
export class GuestMemory {
  readonly fd: Fd;
  readonly bytes: number;
  readonly ab: ArrayBuffer;
  readonly u8: Uint8Array;
  readonly dv: DataView;
  readonly uva: bigint;
  readonly gpa: bigint;
  private released = false;

  constructor(o: GuestMemoryOptions = {}) {
    this.bytes = o.bytes ?? 4 << 20;
    this.fd = sys.memfdCreate('hostile-guest', o.allowSealing ?? false);
    sys.ftruncate(this.fd, this.bytes);
    this.ab = sys.mmap(this.fd, 0, this.bytes, true);
    this.u8 = new Uint8Array(this.ab);
    this.dv = new DataView(this.ab);
    this.uva = o.uva ?? UVA_BASE;
    this.gpa = o.gpa ?? 0n;
  }

  region(over: Partial<Region> = {}): Region {
    return { gpa: this.gpa, size: BigInt(this.bytes), uva: this.uva, offset: 0n, ...over };
  }

  /** Guest physical address -> user address as our SET_VRING_ADDR must say it. */
  uvaOf(gpa: number): bigint {
    return this.uva + BigInt(gpa) - this.gpa;
  }

  writeDesc(tableGpa: number, i: number, addr: bigint | number, len: number, flags: number, next: number): void {
    const at = tableGpa + 16 * i;
    this.dv.setBigUint64(at, BigInt.asUintN(64, BigInt(addr)), true);
    this.dv.setUint32(at + 8, len >>> 0, true);
    this.dv.setUint16(at + 12, flags & 0xffff, true);
    this.dv.setUint16(at + 14, next & 0xffff, true);
  }

  close(): void {
    if (this.released) return;
    this.released = true;
    sys.munmap(this.ab);
    safeClose(this.fd);
  }
}

/** Where one ring lives in guest memory: each ring gets a 64 KiB area (desc, avail, used). */
export function ringArea(index: number): { desc: number; avail: number; used: number } {
  const base = 0x10000 * (index + 1);
  return { desc: base, avail: base + 0x8000, used: base + 0xc000 };
}

/**
 * The driver side of one split ring as a hostile driver writes it: raw descriptors, raw avail
 * entries and idx, reads of used.idx / used.flags. Nothing is checked.
 */
export class SplitRing {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  /** Our avail.idx shadow. */
  idx = 0;

  constructor(
    readonly mem: GuestMemory,
    readonly index: number,
    readonly size: number,
  ) {
    const a = ringArea(index);
    this.desc = a.desc;
    this.avail = a.avail;
    this.used = a.used;
    this.avail16 = new Uint16Array(mem.ab, this.avail, 2 + size + 1);
    this.used16 = new Uint16Array(mem.ab, this.used, 2);
    mem.u8.fill(0, a.desc, a.desc + 0x10000);
  }

  /** SET_VRING_ADDR's fields (user addresses). */
  get addrs(): { desc: bigint; used: bigint; avail: bigint } {
    return { desc: this.mem.uvaOf(this.desc), used: this.mem.uvaOf(this.used), avail: this.mem.uvaOf(this.avail) };
  }

  setDesc(i: number, addr: bigint | number, len: number, flags: number, next = 0): void {
    this.mem.writeDesc(this.desc, i, addr, len, flags, next);
  }

  /** Puts `head` in the next avail slot and publishes avail.idx (unless publish is false). */
  pushAvail(head: number, publish = true): void {
    this.avail16[2 + (this.idx % this.size)] = head;
    this.idx = (this.idx + 1) & 0xffff;
    if (publish) this.publish();
  }

  publish(): void {
    Atomics.store(this.avail16, 1, this.idx);
  }

  /** Writes avail.idx as given (index jumps, races). */
  setAvailIdx(v: number): void {
    this.idx = v & 0xffff;
    Atomics.store(this.avail16, 1, this.idx);
  }

  /** Writes used.idx (the device's field: only to resynchronise a ring that was stopped). */
  setUsedIdx(v: number): void {
    Atomics.store(this.used16, 1, v & 0xffff);
  }

  get usedIdx(): number {
    return Atomics.load(this.used16, 1);
  }
  get usedFlags(): number {
    return Atomics.load(this.used16, 0);
  }

  /** A one-descriptor TX buffer at `bufGpa`: a zero virtio_net_hdr_v1 then a `frameLen`-byte frame. */
  txOne(head: number, bufGpa: number, frameLen = 60): void {
    writeFrame(this.mem, bufGpa, frameLen);
    this.setDesc(head, bufGpa, NET_HDR_V1 + frameLen, 0);
    this.pushAvail(head);
  }

  /**
   * A TX chain through an indirect table of `n` descriptors at `tableGpa`, every one a `piece`-byte
   * slice of one buffer at `bufGpa` (the first covers the header).
   */
  txIndirect(head: number, tableGpa: number, bufGpa: number, n: number, piece: number, publish = true): void {
    writeFrame(this.mem, bufGpa, Math.max(60, piece * n - NET_HDR_V1));
    for (let i = 0; i < n; i++) {
      this.mem.writeDesc(tableGpa, i, bufGpa + i * piece, piece, i + 1 < n ? DESC_F_NEXT : 0, i + 1);
    }
    this.setDesc(head, tableGpa, 16 * n, DESC_F_INDIRECT);
    this.pushAvail(head, publish);
  }
}

/** A zero header and an Ethernet frame (broadcast, a made-up source, EtherType 0x88b5). */
export function writeFrame(mem: GuestMemory, gpa: number, frameLen: number): void {
  mem.u8.fill(0, gpa, gpa + NET_HDR_V1);
  const f = gpa + NET_HDR_V1;
  mem.u8.fill(0xff, f, f + 6);
  mem.u8.set([0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0xb5], f + 6);
  for (let i = 14; i < frameLen; i++) mem.u8[f + i] = i & 0xff;
}

/** Sleeps `ms` without blocking the event loop. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until true or `ms` pass; returns the last value. */
export async function until(f: () => boolean, ms: number, step = 5): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (f()) return true;
    if (Date.now() > end) return false;
    await sleep(step);
  }
}
