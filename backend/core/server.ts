/**
 * A vhost-user endpoint on one socket path: server mode (we listen, QEMU `-chardev socket,path=`
 * connects) or client mode (QEMU `server=on`, DPDK virtio-user `server=1`: we connect and reconnect).
 * One frontend at a time (vhost-user.rst: one connection per device); when it goes away every fd and
 * mapping of its session is released and the next frontend is accepted.
 */
import { EventEmitter } from 'node:events';
import createDebug from 'debug';
import type { NativeBinding, Fd } from '../../native/types.ts';
import { Connection } from './connection.ts';
import { FrontendSocket } from './frontend-socket.ts';
import { Session, type SessionOptions } from './session.ts';
import { REQUEST_HANDLERS } from './handlers/index.ts';
import type { Device } from './device.ts';

const log = createDebug('vhost:server');

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
  private readonly socket: FrontendSocket;
  private conn: Connection | null = null;
  session: Session | null = null;
  /** Sessions served so far (tests and diagnostics). */
  sessions = 0;

  constructor(private readonly opts: EndpointOptions) {
    super();
    this.socket = new FrontendSocket({
      native: opts.native,
      path: opts.path,
      ...(opts.client ? { client: true } : {}),
      label: this.label,
      log,
      attach: (fd) => {
        if (this.conn?.isOpen) {
          log('%s: refusing a second frontend while one is connected', this.label);
          this.opts.native.close(fd);
        } else this.attach(fd);
        return true;
      },
    });
  }

  get label(): string {
    return this.opts.label ?? this.opts.path;
  }

  start(): void {
    this.socket.start();
    if (!this.opts.client) log('%s: listening', this.label);
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
        this.socket.reconnectLater();
      },
    });
    session.onFatal = (reason) => conn.close(`session broken: ${reason}`);
    this.conn = conn;
    this.session = session;
    log('%s: frontend connected (fd %d)', this.label, fd);
    this.emit('session', session);
  }

  close(): void {
    this.socket.close();
    this.conn?.close('endpoint closed');
  }
}
