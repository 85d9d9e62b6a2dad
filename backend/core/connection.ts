/**
 * The imperative shell of one frontend connection: a polled socket (recvmsg with SCM_RIGHTS,
 * sendmsg queued while the socket is full) feeding the incremental framer, whose frames go to the
 * session; replies go out through the same socket. The fds a session sends stay the session's.
 *
 * vhost-user.rst "Communication": each message is one sendmsg with its fds; the framer binds fds
 * to the frame whose header arrived in the same recvmsg (Linux never merges data across skbs that
 * carry fds).
 */
import createDebug from 'debug';
import type { Fd } from '../../native/types.ts';
import { Framer, ProtocolError, type RawFrame } from '../../protocol/index.ts';
import { PolledSocket, type PolledSocketNative } from './polled-socket.ts';

const log = createDebug('vhost:conn');

export interface ConnectionSink {
  message(frame: RawFrame): void;
  closed(reason: string): void;
}

export class Connection {
  private readonly sock: PolledSocket;
  private readonly framer = new Framer();

  constructor(
    readonly fd: Fd,
    private readonly sys: PolledSocketNative,
    private readonly sink: ConnectionSink,
  ) {
    this.sock = new PolledSocket(fd, sys, {
      name: `fd ${fd}`,
      log,
      ownsFds: false,
      eofReason: 'frontend closed the connection',
      readable: () => this.readAll(),
      closed: (reason) => {
        for (const pending of this.framer.pendingFds()) this.sys.close(pending);
        this.sink.closed(reason);
      },
    });
  }

  get isOpen(): boolean {
    return this.sock.isOpen;
  }

  private readAll(): void {
    for (let got = this.sock.receive(); got; got = this.sock.receive()) {
      try {
        this.framer.push(got.bytes, got.fds);
        for (let f = this.framer.next(); f && this.sock.isOpen; f = this.framer.next()) this.sink.message(f);
      } catch (e) {
        // A bad header loses framing: nothing after it can be trusted, so the connection ends. Any
        // other exception is a session bug a frontend found: it ends this connection, never the
        // process (the poller that called us is native code).
        if (e instanceof ProtocolError) return this.sock.close(`unrecoverable framing error [${e.code}]: ${e.message}`);
        log('%s: exception from the session: %O', this.fd, e);
        return this.sock.close(`session failed: ${(e as Error).message}`);
      }
    }
  }

  /** Queues one message; its fds stay the caller's. */
  send(bytes: Uint8Array, fds: readonly Fd[]): void {
    this.sock.send(bytes, fds);
  }

  close(reason: string): void {
    this.sock.close(reason);
  }
}
