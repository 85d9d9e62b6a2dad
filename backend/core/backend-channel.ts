/**
 * The back-end's own channel to the frontend (vhost-user.rst "Back-end communication",
 * SET_BACKEND_REQ_FD with BACKEND_REQ): we send back-end requests (IOTLB misses, config changes,
 * in-band calls) and read the frontend's replies. Requests and replies go strictly in order on
 * the channel, so replies are matched to the oldest request that asked for one.
 *
 * REPLY_ACK: with it negotiated every request may carry NEED_REPLY and the frontend answers a u64
 * (0 = success). Without it nothing is answered: `request` then resolves with null once sent.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../native/types.ts';
import {
  decode,
  describe,
  encode,
  messageDef,
  messageRecord,
  rawRecord,
  type RawFrame,
  type TraceMessageRecord,
} from '../../protocol/index.ts';
import { Connection } from './connection.ts';
import { BackendError } from './errors.ts';

const log = createDebug('vhost:backend-req');

/** How long we wait for the frontend's ack before giving up on that request. */
const REPLY_TIMEOUT_MS = 5000;

export type BackendChannelNative = Pick<NativeBinding, 'recvmsg' | 'sendmsg' | 'close' | 'Poller'>;

interface Waiter {
  id: number;
  resolve(v: bigint): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class BackendChannel {
  private readonly conn: Connection;
  private readonly waiting: Waiter[] = [];
  /** Requests sent, replies received: diagnostics and tests. */
  sent = 0;
  acked = 0;

  constructor(
    fd: Fd,
    private readonly sys: BackendChannelNative,
    private readonly opts: { replyAck: () => boolean; trace?: (rec: TraceMessageRecord) => void; label: string },
  ) {
    this.conn = new Connection(fd, sys, {
      message: (frame) => this.onReply(frame),
      closed: (reason) => this.failAll(new BackendError('SESSION_BAD_STATE', `backend channel closed: ${reason}`)),
    });
  }

  get isOpen(): boolean {
    return this.conn.isOpen;
  }

  /**
   * Sends back-end request `id`. With `needReply` (and REPLY_ACK negotiated) resolves with the
   * frontend's u64 (0 = success); otherwise with null once queued.
   */
  request(id: number, payload: unknown, opts: { needReply?: boolean; fds?: Fd[] } = {}): Promise<bigint | null> {
    if (!this.conn.isOpen) return Promise.reject(new BackendError('SESSION_BAD_STATE', 'backend channel is closed'));
    const needReply = (opts.needReply ?? false) && this.opts.replyAck();
    const enc = encode('backend', id, { needReply, payload: payload ?? null, fds: opts.fds ?? [] });
    const trace = this.opts.trace;
    if (trace) trace(messageRecord('tx', decode('backend', { request: id, flags: flagsOf(enc.bytes), payload: enc.bytes.subarray(12), fds: enc.fds })));
    log('%s -> %s%s', this.opts.label, messageDef('backend', id)?.name ?? id, needReply ? ' (need reply)' : '');
    this.sent++;
    const p = needReply
      ? new Promise<bigint>((resolve, reject) => {
          const timer = setTimeout(() => {
            const i = this.waiting.findIndex((w) => w.timer === timer);
            if (i >= 0) this.waiting.splice(i, 1);
            reject(new BackendError('SESSION_BAD_STATE', `no reply to back-end request ${id} within ${REPLY_TIMEOUT_MS} ms`));
          }, REPLY_TIMEOUT_MS);
          this.waiting.push({ id, resolve, reject, timer });
        })
      : Promise.resolve(null);
    this.conn.send(enc.bytes, enc.fds);
    return p;
  }

  private onReply(frame: RawFrame): void {
    for (const fd of frame.fds) this.sys.close(fd); // acks carry no fds; never keep stray ones
    let value: bigint;
    try {
      const msg = decode('backend', frame);
      this.opts.trace?.(messageRecord('rx', msg));
      if (!msg.isReply) throw new Error(`${msg.name} is not a reply`);
      log('%s <- %s', this.opts.label, describe(msg));
      value = (msg.payload as { value: bigint }).value;
    } catch (e) {
      log('%s: bad message on the backend channel: %s', this.opts.label, (e as Error).message);
      this.opts.trace?.(rawRecord('rx', 'backend', { ...frame, fdCount: frame.fds.length }, (e as Error).message));
      return;
    }
    const w = this.waiting.shift();
    if (!w) return log('%s: unexpected reply %d on the backend channel', this.opts.label, frame.request);
    clearTimeout(w.timer);
    if (w.id !== frame.request) {
      w.reject(new BackendError('SESSION_BAD_STATE', `reply to ${frame.request} while waiting for ${w.id}`));
      return;
    }
    this.acked++;
    w.resolve(value);
  }

  private failAll(e: Error): void {
    for (const w of this.waiting.splice(0)) {
      clearTimeout(w.timer);
      w.reject(e);
    }
  }

  close(): void {
    this.conn.close('session closed');
    this.failAll(new BackendError('SESSION_BAD_STATE', 'backend channel closed'));
  }
}

function flagsOf(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true);
}
