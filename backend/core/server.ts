/**
 * A vhost-user endpoint on one socket path: server mode (we listen, QEMU `-chardev socket,path=`
 * connects) or client mode (QEMU `server=on`, DPDK virtio-user `server=1`: we connect and reconnect).
 * One frontend at a time (vhost-user.rst: one connection per device); when it goes away every fd and
 * mapping of its session is released and the next frontend is accepted.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import createDebug from 'debug';
import type { NativeBinding, Fd, Poller } from '../../native/types.ts';
import { POLL_READABLE } from '../../native/types.ts';
import { Connection } from './connection.ts';
import { Session, type SessionOptions } from './session.ts';
import { REQUEST_HANDLERS } from './handlers/index.ts';
import type { Device } from './device.ts';

const log = createDebug('vhost:server');
const RECONNECT_MS = 500;

export interface EndpointOptions {
  path: string;
  /** Connect to the frontend instead of listening. */
  client?: boolean;
  device: Device;
  native: NativeBinding;
  protocolFeatures?: bigint;
  trace?: SessionOptions['trace'];
  label?: string;
}

export declare interface VhostUserEndpoint {
  on(ev: 'session', cb: (s: Session) => void): this;
  on(ev: 'disconnect', cb: (reason: string) => void): this;
}

export class VhostUserEndpoint extends EventEmitter {
  private listenFd: Fd | null = null;
  private listenPoller: Poller | null = null;
  private conn: Connection | null = null;
  session: Session | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** Sessions served so far (tests and diagnostics). */
  sessions = 0;

  constructor(private readonly opts: EndpointOptions) {
    super();
  }

  get label(): string {
    return this.opts.label ?? this.opts.path;
  }

  start(): void {
    if (this.opts.client) return this.tryConnect();
    const { path } = this.opts;
    // A stale socket from a previous run would make bind fail with EADDRINUSE; anything that is not
    // a socket is left alone (we never delete a user's file).
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
    this.listenFd = this.opts.native.unixListen(path, 4);
    this.listenPoller = new this.opts.native.Poller(this.listenFd, (err) => {
      if (err) return log('listen poll error: %s', err.message);
      this.acceptAll();
    });
    this.listenPoller.start(POLL_READABLE);
    log('%s: listening', this.label);
  }

  private acceptAll(): void {
    for (;;) {
      let fd: Fd | null;
      try {
        fd = this.opts.native.unixAccept(this.listenFd!);
      } catch (e) {
        return log('accept failed: %s', (e as Error).message);
      }
      if (fd === null) return;
      if (this.conn?.isOpen) {
        log('%s: refusing a second frontend while one is connected', this.label);
        this.opts.native.close(fd);
        continue;
      }
      this.attach(fd);
    }
  }

  private tryConnect(): void {
    if (this.stopped) return;
    try {
      const fd = this.opts.native.unixConnect(this.opts.path);
      this.attach(fd);
    } catch (e) {
      log('%s: connect failed (%s), retrying', this.label, (e as { code?: string }).code ?? (e as Error).message);
      this.timer = setTimeout(() => this.tryConnect(), RECONNECT_MS);
    }
  }

  private attach(fd: Fd): void {
    const n = this.opts.native;
    this.sessions++;
    const session = new Session({
      device: this.opts.device,
      handlers: REQUEST_HANDLERS,
      native: n,
      send: (bytes, fds) => conn.send(bytes, fds),
      ...(this.opts.protocolFeatures !== undefined ? { protocolFeatures: this.opts.protocolFeatures } : {}),
      ...(this.opts.trace ? { trace: this.opts.trace } : {}),
      label: `${this.label}#${this.sessions}`,
    });
    const conn: Connection = new Connection(fd, n, {
      message: (frame) => session.handleFrame(frame),
      closed: (reason) => {
        session.close();
        if (this.session === session) this.session = null;
        this.emit('disconnect', reason);
        if (this.opts.client && !this.stopped) this.timer = setTimeout(() => this.tryConnect(), RECONNECT_MS);
      },
    });
    this.conn = conn;
    this.session = session;
    log('%s: frontend connected (fd %d)', this.label, fd);
    this.emit('session', session);
  }

  close(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.conn?.close('endpoint closed');
    this.listenPoller?.close();
    if (this.listenFd !== null) {
      this.opts.native.close(this.listenFd);
      this.listenFd = null;
      if (!this.opts.client && existsSync(this.opts.path)) unlinkSync(this.opts.path);
    }
  }
}
