/**
 * The frontend's end of the back-end channel (vhost-user.rst "Back-end communication") for tests: a
 * socketpair whose other end is handed to the backend with SET_BACKEND_REQ_FD. Decodes every back-end
 * request through the codec table and answers NEED_REPLY requests with `answer(msg)` (default 0).
 */
import { native } from '../../native/index.ts';
import { POLL_READABLE, POLL_DISCONNECT, type Poller } from '../../native/types.ts';
import { Framer, decode, encodeReply, type VhostMessage } from '../../protocol/index.ts';

export class BackendPeer {
  /** The end to send with SET_BACKEND_REQ_FD (the backend owns it once sent; we close our copy). */
  readonly remote: number;
  private readonly local: number;
  private readonly poller: Poller;
  private readonly framer = new Framer();
  private readonly buf = new Uint8Array(65536);
  readonly messages: VhostMessage[] = [];
  readonly errors: string[] = [];
  /** The u64 to answer a NEED_REPLY request with; null: do not answer (a frontend that hangs). */
  answer: (msg: VhostMessage) => bigint | null = () => 0n;
  private open = true;

  constructor() {
    [this.local, this.remote] = native.socketpair();
    this.poller = new native.Poller(this.local, () => this.read());
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  private read(): void {
    for (;;) {
      const r = native.recvmsg(this.local, this.buf, 0, this.buf.length, 8);
      if (r === null) return;
      if (r.byteLen === 0) return this.close();
      this.framer.push(this.buf.slice(0, r.byteLen), r.fds);
      for (let f = this.framer.next(); f; f = this.framer.next()) {
        try {
          const msg = decode('backend', f);
          this.messages.push(msg);
          if (msg.needReply) {
            const v = this.answer(msg);
            if (v !== null) this.reply(msg, v);
            else this.unanswered.push(msg);
          }
        } catch (e) {
          this.errors.push((e as Error).message);
        }
      }
    }
  }

  /** NEED_REPLY requests held back because `answer` returned null. */
  readonly unanswered: VhostMessage[] = [];

  /** Sends the u64 reply to `msg`. */
  reply(msg: VhostMessage, value: bigint): void {
    const out = encodeReply(msg, value);
    native.sendmsg(this.local, out.bytes, 0, out.bytes.length, []);
  }

  named(name: string): VhostMessage[] {
    return this.messages.filter((m) => m.name === name);
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    this.poller.close();
    native.close(this.local);
  }
}

/**
 * Requests a test sends from inside `answer` (QEMU's way with an IOTLB miss: the UPDATE goes out on
 * the main channel while the miss is acked). Such a reply can still be on its way when the test ends;
 * left alone, a connection closed meanwhile rejects it as an unhandled rejection that fails the run.
 * `add` keeps each one (without letting it reject unhandled); `settled` waits for all and throws the
 * first failure, so the test awaits it before the connection closes.
 */
export class PendingRequests {
  private readonly list: Promise<unknown>[] = [];
  add(p: Promise<unknown>): void {
    p.catch(() => undefined);
    this.list.push(p);
  }
  async settled(): Promise<void> {
    await Promise.all(this.list);
  }
}
