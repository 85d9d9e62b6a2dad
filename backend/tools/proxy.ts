/**
 * A transparent vhost-user proxy: sits between any frontend (QEMU, DPDK virtio-user) and any backend
 * and records both directions of the conversation into a trace, without changing it.
 *
 *   frontend --A--> [proxy] --B--> backend
 *
 * - One upstream connection to B per frontend connection on A: a frontend that reconnects (QEMU
 *   `reconnect=`) gets a fresh upstream connection, so the backend sees the reconnect too.
 * - Forwarding is per message and byte-exact: each complete message (header + payload, as received)
 *   goes out with ONE sendmsg carrying the fds that came with it, which is how every sender writes
 *   (vhost-user.rst "Communication"), so the receiver binds the fds to the same message. Our copies
 *   of the fds are closed once sent. Decoding is for the trace only and never changes what is sent:
 *   a frame the codec refuses is forwarded untouched and recorded raw. A header that breaks framing
 *   (bad version, oversize) switches that direction to raw pass-through of whatever arrives.
 * - The back-end channel: SET_BACKEND_REQ_FD carries a socket that the backend uses to send its own
 *   requests to the frontend. To record that channel too, the proxy keeps the frontend's socket and
 *   forwards its own socketpair end instead, relaying (and recording) between the two. This is the
 *   one place where the fd the backend receives is not the frontend's; the bytes are the same.
 * - Ring events are not seen here (kicks and calls are eventfd writes between the peers); record
 *   them in our backend (`net --trace --trace-rings`).
 *
 * Directions in the trace follow the backend's convention: 'rx' = sent by the frontend, 'tx' = sent
 * by the backend, on either channel. Each record carries the connection's label as `endpoint` and
 * the kinds of the attached fds (`fdKinds`), which replay uses to create fresh fds of the same kind.
 */
import { EventEmitter } from 'node:events';
import { readlinkSync } from 'node:fs';
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../native/types.ts';
import { FrontendSocket } from '../core/frontend-socket.ts';
import { PolledSocket } from '../core/polled-socket.ts';
import {
  FrontendReq,
  Framer,
  ProtocolError,
  decode,
  encodeRaw,
  messageRecord,
  rawRecord,
  type Channel,
  type RawFrame,
  type TraceMessageRecord,
} from '../../protocol/index.ts';

const log = createDebug('vhost:proxy');

export type ProxyNative = Pick<
  NativeBinding,
  'unixListen' | 'unixAccept' | 'unixConnect' | 'socketpair' | 'recvmsg' | 'sendmsg' | 'close' | 'Poller'
>;

export interface ProxyOptions {
  native: ProxyNative;
  /** Frontend side (A): we listen here, or with `client` connect to a frontend listening here. */
  frontend: string;
  client?: boolean;
  /** Backend side (B): we connect here, once per frontend connection. */
  backend: string;
  /** Receives every message of both channels, both directions. */
  trace?: (rec: TraceMessageRecord) => void;
  label?: string;
}

/** What an fd is, from /proc/self/fd (control path only): memfd, eventfd, socket, file, ... */
export function fdKind(fd: Fd): string {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'other';
  }
  if (target.startsWith('/memfd:')) return 'memfd';
  if (target.startsWith('socket:')) return 'socket';
  if (target.startsWith('pipe:')) return 'pipe';
  if (target === 'anon_inode:[eventfd]') return 'eventfd';
  if (target === 'anon_inode:[userfaultfd]') return 'userfaultfd';
  if (target.startsWith('anon_inode:')) return `anon:${target.slice('anon_inode:'.length).replace(/[[\]]/g, '')}`;
  if (target.startsWith('/')) return 'file';
  return 'other';
}

/**
 * One socket of the proxy: receives whole frames (or raw chunks once framing is lost) and sends
 * queued messages; the fds it is given to send are its own, closed once they are on their way.
 */
class Link {
  private readonly sock: PolledSocket;
  private readonly framer = new Framer();
  /** Bytes received but not yet returned as a frame, kept to forward raw if framing is lost. */
  private unframed = new Uint8Array(0);
  private raw = false;

  constructor(
    fd: Fd,
    sys: ProxyNative,
    name: string,
    private readonly sink: {
      frame(f: RawFrame, t: bigint): void;
      /** Framing lost: forward these bytes as they are. */
      raw(bytes: Uint8Array, fds: Fd[], why: string | null, t: bigint): void;
      closed(reason: string): void;
    },
  ) {
    this.sock = new PolledSocket(fd, sys, {
      name,
      log,
      ownsFds: true,
      eofReason: 'peer closed the connection',
      readable: () => this.readAll(),
      closed: (reason) => {
        for (const pending of this.framer.pendingFds()) sys.close(pending);
        this.sink.closed(reason);
      },
    });
  }

  private readAll(): void {
    for (let got = this.sock.receive(); got; got = this.sock.receive()) {
      const t = process.hrtime.bigint();
      const chunk = got.bytes.slice();
      if (this.raw) {
        this.sink.raw(chunk, got.fds, null, t);
        continue;
      }
      this.framer.push(chunk, got.fds);
      const all = new Uint8Array(this.unframed.length + chunk.length);
      all.set(this.unframed);
      all.set(chunk, this.unframed.length);
      try {
        for (let f = this.framer.next(); f && this.sock.isOpen; f = this.framer.next()) this.sink.frame(f, t);
      } catch (e) {
        // Header error: the stream cannot be framed any more. Forward what is buffered as it is and
        // pass the rest through unframed; the receiver will judge it as it would without us.
        this.raw = true;
        const code = e instanceof ProtocolError ? e.code : 'ERROR';
        const rest = all.subarray(all.length - this.framer.bufferedBytes);
        this.sink.raw(rest, this.framer.takePendingFds(), `framing lost [${code}]: ${(e as Error).message}`, t);
        this.unframed = new Uint8Array(0);
        continue;
      }
      this.unframed = all.slice(all.length - this.framer.bufferedBytes);
    }
  }

  /** Queue bytes with fds (ours: closed once sent, or when the link closes). */
  send(bytes: Uint8Array, fds: Fd[]): void {
    this.sock.send(bytes, fds);
  }

  /** Close once everything queued is sent (the peer on the other side went away). */
  closeAfterFlush(reason: string): void {
    this.sock.closeAfterFlush(reason);
  }

  close(reason: string): void {
    this.sock.close(reason);
  }
}

/** One frontend connection and its upstream connection (plus the relayed back-end channel, if any). */
class ProxyPair {
  private readonly fe: Link;
  private readonly be: Link;
  /** Back-end channel: the frontend's socket and our socketpair end given to the backend. */
  private chanFe: Link | null = null;
  private chanBe: Link | null = null;
  private done = false;
  messages = 0;

  constructor(
    feFd: Fd,
    beFd: Fd,
    private readonly sys: ProxyNative,
    readonly label: string,
    private readonly trace: ((rec: TraceMessageRecord) => void) | undefined,
    private readonly onClosed: (reason: string) => void,
  ) {
    this.fe = new Link(feFd, sys, `${label} frontend`, {
      frame: (f, t) => this.fromFrontend(f, t),
      raw: (b, fds, why, t) => this.rawForward('frontend', 'rx', b, fds, why, t, this.be),
      closed: (r) => this.shutdown(`frontend: ${r}`),
    });
    this.be = new Link(beFd, sys, `${label} backend`, {
      frame: (f, t) => this.forward('frontend', 'tx', f, t, this.fe),
      raw: (b, fds, why, t) => this.rawForward('frontend', 'tx', b, fds, why, t, this.fe),
      closed: (r) => this.shutdown(`backend: ${r}`),
    });
  }

  private record(channel: Channel, dir: 'rx' | 'tx', f: RawFrame, t: bigint): void {
    const trace = this.trace;
    if (!trace) return;
    const fdKinds = f.fds.map(fdKind);
    let rec: TraceMessageRecord;
    try {
      rec = messageRecord(dir, decode(channel, f), t);
    } catch (e) {
      const code = e instanceof ProtocolError ? e.code : 'ERROR';
      rec = rawRecord(dir, channel, { ...f, fdCount: f.fds.length }, `${code}: ${(e as Error).message}`, t);
    }
    trace({ ...rec, endpoint: this.label, ...(fdKinds.length ? { fdKinds } : {}) });
  }

  /** Record, then send the frame as it came (header + payload) with its fds. */
  private forward(channel: Channel, dir: 'rx' | 'tx', f: RawFrame, t: bigint, to: Link): void {
    this.messages++;
    this.record(channel, dir, f, t);
    to.send(encodeRaw(f.request, f.flags, f.payload), f.fds);
  }

  private rawForward(channel: Channel, dir: 'rx' | 'tx', bytes: Uint8Array, fds: Fd[], why: string | null, t: bigint, to: Link): void {
    if (why !== null) {
      log('%s: %s', this.label, why);
      this.trace?.({
        ...rawRecord(dir, channel, { request: -1, flags: 0, payload: bytes, fdCount: fds.length }, why, t),
        endpoint: this.label,
      });
    } else if (this.trace) {
      this.trace({ ...rawRecord(dir, channel, { request: -1, flags: 0, payload: bytes, fdCount: fds.length }, 'unframed bytes', t), endpoint: this.label });
    }
    to.send(bytes, fds);
  }

  private fromFrontend(f: RawFrame, t: bigint): void {
    // SET_BACKEND_REQ_FD (vhost-user.rst): substitute our socketpair end so the channel is relayed.
    const isChannel =
      f.request === FrontendReq.SET_BACKEND_REQ_FD && (f.flags & 0x4) === 0 && f.fds.length === 1 && f.payload.length === 0;
    if (!isChannel) return this.forward('frontend', 'rx', f, t, this.be);
    this.messages++;
    this.record('frontend', 'rx', f, t);
    let pair: [Fd, Fd];
    try {
      pair = this.sys.socketpair();
    } catch (e) {
      log('%s: socketpair failed (%s): forwarding the frontend channel unrecorded', this.label, (e as Error).message);
      this.be.send(encodeRaw(f.request, f.flags, f.payload), f.fds);
      return;
    }
    const [ours, theirs] = pair;
    this.chanFe?.close('replaced by a new SET_BACKEND_REQ_FD');
    this.chanBe?.close('replaced by a new SET_BACKEND_REQ_FD');
    const chanFe: Link = new Link(f.fds[0]!, this.sys, `${this.label} backend-channel frontend`, {
      frame: (g, tt) => this.forward('backend', 'rx', g, tt, chanBe),
      raw: (b, fds, why, tt) => this.rawForward('backend', 'rx', b, fds, why, tt, chanBe),
      closed: () => chanBe.closeAfterFlush('frontend side of the back-end channel closed'),
    });
    const chanBe: Link = new Link(ours, this.sys, `${this.label} backend-channel backend`, {
      frame: (g, tt) => this.forward('backend', 'tx', g, tt, chanFe),
      raw: (b, fds, why, tt) => this.rawForward('backend', 'tx', b, fds, why, tt, chanFe),
      closed: () => chanFe.closeAfterFlush('backend side of the back-end channel closed'),
    });
    this.chanFe = chanFe;
    this.chanBe = chanBe;
    this.be.send(encodeRaw(f.request, f.flags, f.payload), [theirs]);
  }

  private shutdown(reason: string): void {
    if (this.done) return;
    this.done = true;
    // Whatever one side said last still reaches the other before it sees the close.
    this.fe.closeAfterFlush(reason);
    this.be.closeAfterFlush(reason);
    this.chanFe?.closeAfterFlush(reason);
    this.chanBe?.closeAfterFlush(reason);
    this.onClosed(reason);
  }

  close(reason: string): void {
    this.done = true;
    this.fe.close(reason);
    this.be.close(reason);
    this.chanFe?.close(reason);
    this.chanBe?.close(reason);
  }
}

export declare interface VhostUserProxy {
  on(ev: 'connect', cb: (label: string) => void): this;
  on(ev: 'disconnect', cb: (label: string, reason: string) => void): this;
}

export class VhostUserProxy extends EventEmitter {
  private readonly socket: FrontendSocket;
  private readonly pairs = new Set<ProxyPair>();
  /** Frontend connections served so far. */
  connections = 0;

  constructor(private readonly opts: ProxyOptions) {
    super();
    this.socket = new FrontendSocket({
      native: opts.native,
      path: opts.frontend,
      ...(opts.client ? { client: true } : {}),
      label: this.label,
      log,
      attach: (fd) => this.attach(fd),
    });
  }

  get label(): string {
    return this.opts.label ?? 'proxy';
  }

  /** Connection pairs currently open. */
  get active(): number {
    return this.pairs.size;
  }

  start(): void {
    this.socket.start();
    if (!this.opts.client) log('%s: listening on %s, backend %s', this.label, this.opts.frontend, this.opts.backend);
  }

  /** Pairs a new frontend connection with a new backend connection; false if the backend is not there. */
  private attach(feFd: Fd): boolean {
    const n = this.opts.native;
    let beFd: Fd;
    try {
      beFd = n.unixConnect(this.opts.backend);
    } catch (e) {
      // No backend: the frontend sees the connection close, as it would without the proxy.
      log('%s: backend %s unreachable: %s', this.label, this.opts.backend, (e as Error).message);
      n.close(feFd);
      this.emit('disconnect', `${this.label}#-`, `backend unreachable: ${(e as Error).message}`);
      return false;
    }
    this.connections++;
    const label = `${this.label}#${this.connections}`;
    const pair: ProxyPair = new ProxyPair(feFd, beFd, n, label, this.opts.trace, (reason) => {
      this.pairs.delete(pair);
      this.emit('disconnect', label, reason);
      this.socket.reconnectLater();
    });
    this.pairs.add(pair);
    log('%s: frontend connected, backend connected', label);
    this.emit('connect', label);
    return true;
  }

  close(): void {
    this.socket.close();
    for (const p of this.pairs) p.close('proxy closed');
    this.pairs.clear();
  }
}
