/**
 * Incremental framer: byte chunks (as recvmsg returns them on the stream socket) in, whole
 * vhost-user messages out, each with the fds that belong to it.
 *
 * The SCM_RIGHTS rule. vhost-user senders (QEMU, DPDK virtio-user, rust-vmm) send each message,
 * header + payload + fds, with ONE sendmsg; the kernel attaches the fds to the first byte of that
 * write. On receive, Linux (unix_stream_read_generic) may glue the tail of earlier writes in front
 * of the write that carries fds, but stops right after a write with fds: fds are never followed, in
 * the same recvmsg, by bytes of a later message. Hence:
 *
 *   the fds of a chunk belong to the LAST message whose first byte lies in that chunk;
 *   if no message starts in the chunk (a sender that wrote fds with a later piece of the message),
 *   they belong to the message in progress.
 *
 * Both cases reduce to one test: a message occupying stream bytes [s, e) takes every pending fd
 * group whose chunk ends at or before e (earlier messages already took the groups ending at or
 * before their own end). Fds wait in the framer until their message is complete; `pendingFds()`
 * hands them back for closing when the connection goes away.
 *
 * A header error (bad version, oversize) loses framing for good: the framer stays failed and
 * rethrows; the caller must close the connection (and the pending fds).
 */
import { HEADER_SIZE, MAX_PAYLOAD } from './constants.ts';
import { ProtocolError } from './errors.ts';
import { checkHeader, readHeader } from './header.ts';

/** One complete message as read off the socket, not yet checked against the table. */
export interface RawFrame {
  request: number;
  flags: number;
  /** The payload, copied (it does not alias the framer's buffer). */
  payload: Uint8Array;
  /** The fds that arrived with this message; the receiver owns them. */
  fds: number[];
}

interface FdGroup {
  /** Stream position one past the last byte of the chunk that carried these fds. */
  end: number;
  fds: number[];
}

export interface FramerOptions {
  /** Largest payload accepted (default MAX_PAYLOAD). */
  maxPayload?: number;
}

export class Framer {
  private buf = new Uint8Array(4096);
  private start = 0;
  private end = 0;
  /** Stream position of buf[start]. */
  private consumed = 0;
  private readonly groups: FdGroup[] = [];
  private failed: ProtocolError | null = null;
  private readonly maxPayload: number;

  constructor(opts: FramerOptions = {}) {
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
  }

  /** Append a received chunk; `fds` are the descriptors that came in the same recvmsg. */
  push(chunk: Uint8Array, fds: readonly number[] = []): void {
    const len = chunk.length;
    if (this.end + len > this.buf.length) this.makeRoom(len);
    this.buf.set(chunk, this.end);
    this.end += len;
    if (fds.length > 0) this.groups.push({ end: this.consumed + (this.end - this.start), fds: [...fds] });
  }

  /** The next complete message, or null if more bytes are needed. Throws on a bad header. */
  next(): RawFrame | null {
    if (this.failed) throw this.failed;
    const avail = this.end - this.start;
    if (avail < HEADER_SIZE) return null;
    const h = readHeader(this.buf, this.start);
    try {
      checkHeader(h, this.maxPayload);
    } catch (e) {
      this.failed = e as ProtocolError;
      throw e;
    }
    const total = HEADER_SIZE + h.size;
    if (avail < total) return null;
    const payload = this.buf.slice(this.start + HEADER_SIZE, this.start + total);
    const frameEnd = this.consumed + total;
    const fds: number[] = [];
    while (this.groups.length > 0 && this.groups[0]!.end <= frameEnd) fds.push(...this.groups.shift()!.fds);
    this.start += total;
    this.consumed = frameEnd;
    if (this.start === this.end) this.start = this.end = 0;
    return { request: h.request, flags: h.flags, payload, fds };
  }

  /** Drain every complete message. */
  drain(): RawFrame[] {
    const out: RawFrame[] = [];
    for (let f = this.next(); f; f = this.next()) out.push(f);
    return out;
  }

  /** Fds received but not yet handed out with a message (close them on disconnect). */
  pendingFds(): number[] {
    return this.groups.flatMap((g) => g.fds);
  }

  /** The pending fds, handed over: the framer forgets them (a caller that forwards them owns them now). */
  takePendingFds(): number[] {
    const fds = this.pendingFds();
    for (const g of this.groups) g.fds = [];
    return fds;
  }

  /** Bytes buffered but not yet returned as a message. */
  get bufferedBytes(): number {
    return this.end - this.start;
  }

  private makeRoom(extra: number): void {
    const live = this.end - this.start;
    const need = live + extra;
    if (need <= this.buf.length && this.start > 0) {
      this.buf.copyWithin(0, this.start, this.end);
    } else {
      let cap = this.buf.length;
      while (cap < need) cap *= 2;
      const nb = new Uint8Array(cap);
      nb.set(this.buf.subarray(this.start, this.end));
      this.buf = nb;
    }
    this.start = 0;
    this.end = live;
  }
}
