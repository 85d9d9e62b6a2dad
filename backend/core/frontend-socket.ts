/**
 * Where frontends come from: a socket path we listen on, accepting each frontend that connects (QEMU
 * `-chardev socket,path=`), or, in client mode, a path where the frontend listens (QEMU `server=on`,
 * DPDK virtio-user `server=1`) that we connect to, and connect to again RECONNECT_MS after a failed
 * attempt or when told the connection ended. The served endpoint and the proxy's frontend side both
 * stand on it; what to do with a frontend's fd is theirs.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import type { Debugger } from 'debug';
import type { Fd, NativeBinding, Poller } from '../../native/types.ts';
import { POLL_READABLE } from '../../native/types.ts';

const RECONNECT_MS = 500;
const LISTEN_BACKLOG = 4;

export type FrontendSocketNative = Pick<NativeBinding, 'unixListen' | 'unixAccept' | 'unixConnect' | 'close' | 'Poller'>;

export interface FrontendSocketOptions {
  native: FrontendSocketNative;
  path: string;
  /** Connect to a frontend listening at `path` instead of listening there. */
  client?: boolean;
  /** Names the endpoint in log lines. */
  label: string;
  /** The owner's debug namespace. */
  log: Debugger;
  /**
   * A frontend's fd, now the owner's. False (client mode): it could not be served, so the socket
   * tries again later; an accepted fd the owner cannot serve it closes itself.
   */
  attach(fd: Fd): boolean;
}

export class FrontendSocket {
  private listenFd: Fd | null = null;
  private listenPoller: Poller | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly opts: FrontendSocketOptions) {}

  /** Listens (throws what bind/listen throw) or starts connecting. */
  start(): void {
    if (this.opts.client) return this.tryConnect();
    const { path, native } = this.opts;
    // A stale socket from a previous run would make bind fail with EADDRINUSE; anything that is not
    // a socket is left alone (we never delete a user's file).
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
    this.listenFd = native.unixListen(path, LISTEN_BACKLOG);
    this.listenPoller = new native.Poller(this.listenFd, (err) => {
      if (err) return this.opts.log('%s: listen poll error: %s', this.opts.label, err.message);
      this.acceptAll();
    });
    this.listenPoller.start(POLL_READABLE);
  }

  private acceptAll(): void {
    for (;;) {
      let fd: Fd | null;
      try {
        fd = this.opts.native.unixAccept(this.listenFd!);
      } catch (e) {
        return this.opts.log('%s: accept failed: %s', this.opts.label, (e as Error).message);
      }
      if (fd === null) return;
      this.opts.attach(fd);
    }
  }

  private tryConnect(): void {
    if (this.stopped) return;
    let fd: Fd;
    try {
      fd = this.opts.native.unixConnect(this.opts.path);
    } catch (e) {
      const why = (e as { code?: string }).code ?? (e as Error).message;
      this.opts.log('%s: connect to frontend %s failed (%s), retrying', this.opts.label, this.opts.path, why);
      return this.reconnectLater();
    }
    if (!this.opts.attach(fd)) this.reconnectLater();
  }

  /** Client mode: the connection ended, connect again in RECONNECT_MS (not once closed; nothing when listening). */
  reconnectLater(): void {
    if (!this.opts.client || this.stopped) return;
    this.timer = setTimeout(() => this.tryConnect(), RECONNECT_MS);
  }

  /** Stops listening (and removes our socket) or reconnecting; connections already made are the owner's. */
  close(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.listenPoller?.close();
    if (this.listenFd !== null) {
      this.opts.native.close(this.listenFd);
      this.listenFd = null;
      if (!this.opts.client && existsSync(this.opts.path)) unlinkSync(this.opts.path);
    }
  }
}
