/**
 * A scripted vhost-user FRONT-END (the QEMU side), for loopback/integration tests of the back-end
 * (rust-vmm tests its backend with its own Frontend; DPDK with virtio-user). Transport-agnostic:
 * give it `send` and `onData`; socket glue lives with the caller.
 *
 * Replies are matched in order: vhost-user is strictly request/reply on a channel, so the k-th
 * reply answers the k-th request that expects one. Requests that expect no reply resolve with null
 * as soon as they are sent (like QEMU, we may send several of those before the next reply).
 */
import { VHOST_USER_VERSION } from './constants.ts';
import { ProtocolError } from './errors.ts';
import { decode, encode, type VhostMessage } from './codec.ts';
import { Framer, type RawFrame } from './framer.ts';
import { expectsReply, messageDef } from './messages.ts';

export interface FrontendIo {
  send(bytes: Uint8Array, fds: number[]): void;
  onData(cb: (chunk: Uint8Array, fds: number[]) => void): void;
}

export interface RequestOptions {
  /** Set NEED_REPLY (REPLY_ACK): the back-end answers with a u64 (0 = success) if no body reply. */
  needReply?: boolean;
  fds?: number[];
  /**
   * Force waiting (or not) for a reply: for rows whose body reply is conditional (`replyWhen`:
   * SET_MEM_TABLE/ADD_MEM_REG in postcopy, SET_LOG_BASE with LOG_SHMFD). Default: wait when the
   * table says a body reply always comes, or when needReply is set.
   */
  expectReply?: boolean;
  /** Extra header flag bits / a different base (tests). */
  flags?: number;
  /** Skip payload/fd validation before sending (to feed the back-end invalid requests). */
  unchecked?: boolean;
}

interface Pending {
  id: number;
  resolve(m: VhostMessage): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout> | null;
}

export interface ScriptedFrontendOptions {
  /** Reject a request whose reply has not arrived after this many ms (default 10000; 0 = never). */
  timeoutMs?: number;
  /** Called with every decoded reply (tracing in tests). */
  onReply?: (msg: VhostMessage) => void;
}

export class ScriptedFrontend {
  private readonly framer = new Framer();
  private readonly pending: Pending[] = [];
  private readonly timeoutMs: number;
  private failure: Error | null = null;
  /** Replies/frames that matched no request (tests can assert this stays empty). */
  readonly unexpected: RawFrame[] = [];

  constructor(
    private readonly io: FrontendIo,
    private readonly opts: ScriptedFrontendOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    io.onData((chunk, fds) => this.onData(chunk, fds));
  }

  /**
   * Send request `id` (FrontendReq) with `payload` (the row's layout value; a bigint for u64 rows).
   * Resolves with the reply (body or REPLY_ACK) when one is expected, otherwise null once sent.
   */
  request(id: number, payload?: unknown, opts: RequestOptions = {}): Promise<VhostMessage | null> {
    if (this.failure) return Promise.reject(this.failure);
    const def = messageDef('frontend', id);
    const needReply = opts.needReply ?? false;
    const enc = encode('frontend', id, {
      flags: opts.flags ?? VHOST_USER_VERSION,
      needReply,
      payload: payload ?? null,
      fds: opts.fds ?? [],
      ...(opts.unchecked ? { unchecked: true } : {}),
    });
    const wait = opts.expectReply ?? (def ? expectsReply(def, needReply, def.replyWhen === undefined) : needReply);
    if (!wait) {
      this.io.send(enc.bytes, enc.fds);
      return Promise.resolve(null);
    }
    return new Promise<VhostMessage>((resolve, reject) => {
      const p: Pending = { id, resolve, reject, timer: null };
      if (this.timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.fail(new ProtocolError('PROTO_TIMEOUT', `no reply to ${def?.name ?? id} within ${this.timeoutMs} ms`, { requestId: id }));
        }, this.timeoutMs);
      }
      this.pending.push(p);
      this.io.send(enc.bytes, enc.fds);
    });
  }

  /** Send pre-built bytes (e.g. a header the codec would refuse to build). No reply is awaited. */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    this.io.send(bytes, fds);
  }

  /** Number of requests still waiting for a reply. */
  get outstanding(): number {
    return this.pending.length;
  }

  /** Fail every outstanding request (call when the transport closes). */
  close(reason = 'transport closed'): void {
    this.fail(new ProtocolError('PROTO_CLOSED', reason));
  }

  /** Fds received but not yet delivered with a reply (close them in test teardown). */
  pendingFds(): number[] {
    return this.framer.pendingFds();
  }

  private onData(chunk: Uint8Array, fds: number[]): void {
    if (this.failure) return;
    try {
      this.framer.push(chunk, fds);
      for (let f = this.framer.next(); f; f = this.framer.next()) this.onFrame(f);
    } catch (e) {
      this.fail(e as Error);
    }
  }

  private onFrame(frame: RawFrame): void {
    const p = this.pending[0];
    if (!p || frame.request !== p.id || (frame.flags & 0x4) === 0) {
      this.unexpected.push(frame);
      if (p) {
        this.fail(
          new ProtocolError('PROTO_UNEXPECTED_REPLY', `expected a reply to request ${p.id}, got request ${frame.request} flags 0x${frame.flags.toString(16)}`, {
            requestId: frame.request,
            flags: frame.flags,
          }),
        );
      }
      return;
    }
    this.pending.shift();
    if (p.timer) clearTimeout(p.timer);
    let msg: VhostMessage;
    try {
      msg = decode('frontend', frame);
    } catch (e) {
      p.reject(e as Error);
      return;
    }
    this.opts.onReply?.(msg);
    p.resolve(msg);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.splice(0)) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(e);
    }
  }
}
