/**
 * One non-blocking unix stream socket on the event loop: a uv_poll watcher, recvmsg with SCM_RIGHTS,
 * and a send queue for sendmsg with fds that waits for POLL_WRITABLE while the socket is full. What
 * the bytes mean is the owner's business: Connection frames vhost-user messages for a session, the
 * proxy forwards them as they came.
 *
 * fds handed to send(): with `ownsFds` they are the socket's, closed once the sendmsg that carried
 * them succeeded (the kernel holds its own references then), or when the socket closes (or is closed)
 * before they went; without it they stay the caller's (a session keeps the fds it sends).
 * fds received are the owner's from the moment receive() returns them.
 */
import type { Debugger } from 'debug';
import type { Fd, NativeBinding, Poller } from '../../native/types.ts';
import { POLL_DISCONNECT, POLL_READABLE, POLL_WRITABLE } from '../../native/types.ts';

/** Enough for any vhost-user message; the framer caps single messages well below this. */
const RECV_BUF_BYTES = 64 * 1024;
/** SET_MEM_TABLE carries at most VHOST_MEMORY_BASELINE_NREGIONS (8) fds; leave room for misbehaviour. */
const MAX_FDS_PER_RECV = 32;
/**
 * Messages (or bytes) queued for a peer that does not read them: beyond either it is closed. A
 * vhost-user peer reads each reply before it sends the next request that wants one, so a handful wait
 * at most; one that floods requests and reads nothing would otherwise grow our memory without bound
 * (a queued reply costs about 200 bytes of heap, whatever its size).
 */
export const MAX_QUEUED_MESSAGES = 1024;
export const MAX_QUEUED_BYTES = 1 << 20;

export type PolledSocketNative = Pick<NativeBinding, 'recvmsg' | 'sendmsg' | 'close' | 'Poller'>;

export interface PolledSocketOptions {
  /** Names the socket in log lines (`fd 12`, `proxy#1 frontend`). */
  name: string;
  /** The owner's debug namespace. */
  log: Debugger;
  /** fds given to send() are ours to close (see above). */
  ownsFds: boolean;
  /** Why the socket closed when the peer closed its end (EOF). */
  eofReason: string;
  /** Data or a hang-up is waiting: call receive() until it returns null. */
  readable(): void;
  /** The socket is closed (the fd too): release what came with it and tell whoever needs to know. */
  closed(reason: string): void;
}

export interface Received {
  /** A view into the socket's receive buffer: valid until the next receive(). */
  bytes: Uint8Array;
  /** Ours now. */
  fds: Fd[];
}

interface Pending {
  bytes: Uint8Array;
  offset: number;
  fds: readonly Fd[];
}

export class PolledSocket {
  private readonly poller: Poller;
  private readonly buf = new Uint8Array(RECV_BUF_BYTES);
  private readonly queue: Pending[] = [];
  private queuedBytes = 0;
  private overflowed = false;
  private open = true;
  /** closeAfterFlush() was called: no more reading, close once the queue is empty. */
  private closing = false;

  constructor(
    readonly fd: Fd,
    private readonly sys: PolledSocketNative,
    private readonly opts: PolledSocketOptions,
  ) {
    // The socket is ours from here: one that cannot be watched (not pollable: a memfd, /dev/null)
    // is closed before the refusal goes up, or nobody would close it.
    try {
      this.poller = new sys.Poller(fd, (err, events) => this.onEvents(err, events));
      this.poller.start(POLL_READABLE | POLL_DISCONNECT);
    } catch (e) {
      this.open = false;
      sys.close(fd);
      throw e;
    }
  }

  get isOpen(): boolean {
    return this.open;
  }

  private onEvents(err: Error | null, events: number): void {
    if (!this.open) return;
    if (err) return this.close(`poll error: ${err.message}`);
    if (events & POLL_WRITABLE) this.flush();
    if (events & (POLL_READABLE | POLL_DISCONNECT) && this.open && !this.closing) this.opts.readable();
  }

  /**
   * One recvmsg. Null when nothing is waiting, and when the socket is closed or closing: at EOF (fds
   * that came with it are closed) and on an error it closes itself first.
   */
  receive(): Received | null {
    if (!this.open || this.closing) return null;
    let res;
    try {
      res = this.sys.recvmsg(this.fd, this.buf, 0, this.buf.length, MAX_FDS_PER_RECV);
    } catch (e) {
      this.close(`recvmsg: ${(e as Error).message}`);
      return null;
    }
    if (res === null) return null;
    if (res.byteLen === 0) {
      for (const fd of res.fds) this.sys.close(fd);
      this.close(this.opts.eofReason);
      return null;
    }
    if (res.fdsTruncated) this.opts.log('%s: control data truncated (more than %d fds in one message)', this.opts.name, MAX_FDS_PER_RECV);
    return { bytes: this.buf.subarray(0, res.byteLen), fds: res.fds };
  }

  /** Queue one message (one sendmsg where the socket takes it whole; its fds go with the first byte). */
  send(bytes: Uint8Array, fds: readonly Fd[]): void {
    if (!this.open || this.overflowed) {
      if (this.opts.ownsFds) for (const fd of fds) this.sys.close(fd);
      return;
    }
    this.queue.push({ bytes, offset: 0, fds });
    this.queuedBytes += bytes.length;
    if (this.queue.length === 1) this.flush();
    else if (this.queue.length > MAX_QUEUED_MESSAGES || this.queuedBytes > MAX_QUEUED_BYTES) {
      // Closed after the current turn (the caller is in the middle of a message); nothing more is queued.
      this.overflowed = true;
      queueMicrotask(() => {
        try {
          this.close(`the peer reads nothing: ${this.queue.length} messages (${this.queuedBytes} bytes) queued for it`);
        } catch (e) {
          this.opts.log('%s: closing failed: %O', this.opts.name, e);
        }
      });
    }
  }

  private flush(): void {
    while (this.queue.length > 0) {
      const p = this.queue[0]!;
      let n: number | null;
      try {
        n = this.sys.sendmsg(this.fd, p.bytes, p.offset, p.bytes.length - p.offset, p.fds);
      } catch (e) {
        return this.close(`sendmsg: ${(e as Error).message}`);
      }
      if (n === null) {
        this.poller.start(POLL_READABLE | POLL_DISCONNECT | POLL_WRITABLE);
        return;
      }
      p.offset += n;
      this.queuedBytes -= n;
      if (this.opts.ownsFds) for (const fd of p.fds) this.sys.close(fd);
      p.fds = []; // fds travel with the first byte only
      if (p.offset === p.bytes.length) this.queue.shift();
    }
    if (this.closing) return this.close('closed after flush');
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  /** Close once everything queued is sent (the peer on the other side went away); read no more. */
  closeAfterFlush(reason: string): void {
    if (!this.open) return;
    if (this.queue.length === 0) return this.close(reason);
    this.closing = true;
  }

  close(reason: string): void {
    if (!this.open) return;
    this.open = false;
    this.opts.log('%s closed: %s', this.opts.name, reason);
    // The poller goes before the fd (native/types.ts Poller: the number may be reused at once).
    this.poller.close();
    if (this.opts.ownsFds) for (const p of this.queue) for (const fd of p.fds) this.sys.close(fd);
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.sys.close(this.fd);
    this.opts.closed(reason);
  }
}
