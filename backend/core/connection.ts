/**
 * The imperative shell of one frontend connection: a uv_poll watcher on the socket, recvmsg with
 * SCM_RIGHTS into the incremental framer, decode through the table, hand to the session; replies go
 * out with sendmsg (queued if the socket is full).
 *
 * vhost-user.rst "Communication": each message is one sendmsg with its fds; the framer binds fds
 * to the frame whose header arrived in the same recvmsg (Linux never merges data across skbs that
 * carry fds).
 */
import createDebug from 'debug';
import type { NativeBinding, Fd, Poller } from '../../native/types.ts';
import { POLL_READABLE, POLL_WRITABLE, POLL_DISCONNECT } from '../../native/types.ts';
import { Framer, ProtocolError, type RawFrame } from '../../protocol/index.ts';

const log = createDebug('vhost:conn');
/** Enough for any vhost-user message; the framer caps single messages well below this. */
const RECV_BUF_BYTES = 64 * 1024;
/** SET_MEM_TABLE carries at most VHOST_MEMORY_BASELINE_NREGIONS (8) fds; leave room for misbehaviour. */
const MAX_FDS_PER_RECV = 32;

export interface ConnectionSink {
  message(frame: RawFrame): void;
  closed(reason: string): void;
}

interface Pending {
  bytes: Uint8Array;
  offset: number;
  fds: readonly Fd[];
}

export class Connection {
  private readonly poller: Poller;
  private readonly framer = new Framer();
  private readonly buf = new Uint8Array(RECV_BUF_BYTES);
  private readonly queue: Pending[] = [];
  private open = true;

  constructor(
    readonly fd: Fd,
    private readonly sys: Pick<NativeBinding, 'recvmsg' | 'sendmsg' | 'close' | 'Poller'>,
    private readonly sink: ConnectionSink,
  ) {
    this.poller = new sys.Poller(fd, (err, events) => this.onEvents(err, events));
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  get isOpen(): boolean {
    return this.open;
  }

  private onEvents(err: Error | null, events: number): void {
    if (!this.open) return;
    if (err) return this.close(`poll error: ${err.message}`);
    if (events & POLL_WRITABLE) this.flush();
    if (events & (POLL_READABLE | POLL_DISCONNECT)) this.readAll();
  }

  private readAll(): void {
    while (this.open) {
      let res;
      try {
        res = this.sys.recvmsg(this.fd, this.buf, 0, this.buf.length, MAX_FDS_PER_RECV);
      } catch (e) {
        return this.close(`recvmsg: ${(e as Error).message}`);
      }
      if (res === null) return;
      if (res.byteLen === 0) {
        for (const fd of res.fds) this.sys.close(fd);
        return this.close('frontend closed the connection');
      }
      if (res.fdsTruncated) log('fd %d: control data truncated (too many fds in one message)', this.fd);
      try {
        this.framer.push(this.buf.subarray(0, res.byteLen), res.fds);
        for (let f = this.framer.next(); f && this.open; f = this.framer.next()) this.sink.message(f);
      } catch (e) {
        // A bad header loses framing: nothing after it can be trusted, so the connection ends.
        const code = e instanceof ProtocolError ? e.code : 'ERROR';
        return this.close(`unrecoverable framing error [${code}]: ${(e as Error).message}`);
      }
    }
  }

  send(bytes: Uint8Array, fds: readonly Fd[]): void {
    if (!this.open) return;
    this.queue.push({ bytes, offset: 0, fds });
    if (this.queue.length === 1) this.flush();
  }

  private flush(): void {
    while (this.open && this.queue.length > 0) {
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
      p.fds = []; // fds travel with the first byte only
      if (p.offset === p.bytes.length) this.queue.shift();
    }
    if (this.open) this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  close(reason: string): void {
    if (!this.open) return;
    this.open = false;
    log('fd %d closed: %s', this.fd, reason);
    this.poller.close();
    for (const fd of this.framer.pendingFds()) this.sys.close(fd);
    this.sys.close(this.fd);
    this.sink.closed(reason);
  }
}

