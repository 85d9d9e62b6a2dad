/**
 * Handlers of the requests that reach into the device rather than the rings: the configuration
 * space (GET_CONFIG / SET_CONFIG, protocol feature CONFIG), NET_SET_MTU (NET_MTU) and the transfer
 * of the device's internal state (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, DEVICE_STATE;
 * vhost-user.rst "Migrating back-end state"). The session merges this table into its own.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding, Poller } from '../../native/types.ts';
import { POLL_READABLE, POLL_DISCONNECT } from '../../native/types.ts';
import { FrontendReq, TransferDirection, type DeviceConfig, type VhostMessage } from '../../protocol/index.ts';
import { fail } from './errors.ts';
import { MAX_DEVICE_STATE_BYTES } from './device.ts';
import type { Handler, Session } from './session.ts';

const log = createDebug('vhost:device-state');

/** vhost-user.rst SET_CONFIG flags: "VHOST_SET_CONFIG_TYPE_MIGRATION 1". */
const SET_CONFIG_TYPE_MIGRATION = 1;
/** SET_DEVICE_STATE_FD reply: "bit 8 ... no file descriptor is passed back" (we use the frontend's). */
const STATE_FD_NO_FD = 0x100n;
/** Our failure value in those results (bits 0-7 non-zero). */
const STATE_FAILED = 1n;

export type StateNative = Pick<NativeBinding, 'read' | 'write' | 'close' | 'Poller'>;

/**
 * One SET_DEVICE_STATE_FD transfer. SAVE: the serialized state is written to the frontend's pipe
 * and the pipe closed (EOF ends the transfer). LOAD: the pipe is read, as it becomes readable, until
 * EOF; the state is applied then. CHECK_DEVICE_STATE reports the outcome.
 */
export class DeviceStateTransfer {
  private poller: Poller | null = null;
  private chunks: Uint8Array[] = [];
  private received = 0;
  private fd: Fd | null;
  /** null while in progress; '' when done well; the error otherwise. */
  result: string | null = null;

  constructor(
    private readonly sys: StateNative,
    fd: Fd,
    direction: number,
    private readonly session: Session,
  ) {
    this.fd = fd;
    if (direction === TransferDirection.SAVE) this.save();
    else this.startLoad();
  }

  private save(): void {
    const dev = this.session.device;
    try {
      if (!dev.saveState) fail('SESSION_UNSUPPORTED', `the ${dev.kind} device has no internal state to save`);
      const bytes = dev.saveState();
      let off = 0;
      // The state is small (< PIPE_BUF is typical): a few writes at most; EAGAIN means the frontend
      // gave us a full non-blocking pipe it does not drain, which we report instead of spinning.
      while (off < bytes.length) {
        const n = this.sys.write(this.fd!, bytes, off, bytes.length - off);
        if (n === null) fail('SESSION_BAD_STATE', 'device state pipe is full');
        off += n;
      }
      log('%s: saved %d bytes of device state', this.session.label, bytes.length);
      this.finish('');
    } catch (e) {
      this.finish((e as Error).message);
    }
  }

  private startLoad(): void {
    const fd = this.fd!;
    this.poller = new this.sys.Poller(fd, (err) => {
      if (err) return this.finish(`device state pipe: ${err.message}`);
      this.drain();
    });
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  /** Reads what is there; on EOF applies the state. Safe to call at any time (never blocks: only after readability). */
  private drain(): void {
    if (this.fd === null) return;
    const buf = new Uint8Array(4096);
    for (;;) {
      let n: number | null;
      try {
        n = this.sys.read(this.fd, buf, 0, buf.length);
      } catch (e) {
        return this.finish(`device state read: ${(e as Error).message}`);
      }
      if (n === null) return; // EAGAIN: more later
      if (n === 0) return this.apply();
      this.received += n;
      if (this.received > MAX_DEVICE_STATE_BYTES) return this.finish(`device state larger than ${MAX_DEVICE_STATE_BYTES} bytes`);
      this.chunks.push(buf.slice(0, n));
      // One read per readable event: the pipe may be blocking, and a second read could wait.
      return;
    }
  }

  private apply(): void {
    const dev = this.session.device;
    const all = new Uint8Array(this.received);
    let off = 0;
    for (const c of this.chunks) {
      all.set(c, off);
      off += c.length;
    }
    try {
      if (!dev.loadState) fail('SESSION_UNSUPPORTED', `the ${dev.kind} device cannot load state`);
      dev.loadState(all);
      log('%s: loaded %d bytes of device state', this.session.label, all.length);
      this.finish('');
    } catch (e) {
      this.finish((e as Error).message);
    }
  }

  private finish(result: string): void {
    if (this.result === null) this.result = result;
    if (result) log('%s: device state transfer failed: %s', this.session.label, result);
    this.close();
  }

  close(): void {
    this.poller?.close();
    this.poller = null;
    if (this.fd !== null) this.sys.close(this.fd);
    this.fd = null;
  }
}

export const DEVICE_HANDLERS: Partial<Record<number, Handler>> = {
  [FrontendReq.GET_CONFIG](msg: VhostMessage) {
    const p = msg.payload as DeviceConfig;
    const cfg = this.device.config;
    if (!cfg) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no config space`);
    return { payload: { ...p, payload: cfg.read(p.offset, p.size) } };
  },
  [FrontendReq.SET_CONFIG](msg: VhostMessage) {
    const p = msg.payload as DeviceConfig;
    const cfg = this.device.config;
    if (!cfg) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no config space`);
    if (p.size !== p.payload.length) fail('SESSION_BAD_CONFIG', `SET_CONFIG size ${p.size} but ${p.payload.length} bytes`);
    cfg.write(p.offset, p.payload, (p.flags & SET_CONFIG_TYPE_MIGRATION) !== 0);
  },
  [FrontendReq.NET_SET_MTU](msg: VhostMessage) {
    const mtu = (msg.payload as { value: bigint }).value;
    const cfg = this.device.config;
    if (!cfg?.setMtu) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no MTU`);
    if (mtu > 0xffffn) fail('SESSION_BAD_CONFIG', `MTU ${mtu} is not a 16-bit value`);
    cfg.setMtu(Number(mtu));
  },
  // Both replies are u64 results (vhost-user.rst): a failure is a non-zero value, not a refused
  // request, so these handlers answer instead of throwing.
  [FrontendReq.SET_DEVICE_STATE_FD](msg: VhostMessage, fds) {
    const p = msg.payload as { transferDirection: number; migrationPhase: number };
    const fd = fds.take(0);
    // "the back-end ... must stop all rings" before the state is transferred (phase STOPPED only,
    // the codec checked it).
    if (this.rings.some((r) => r.queue !== null)) {
      this.sys.close(fd);
      log('%s: SET_DEVICE_STATE_FD while rings run', this.label);
      return { payload: { value: STATE_FAILED | STATE_FD_NO_FD } };
    }
    this.stateTransfer?.close();
    this.stateTransfer = new DeviceStateTransfer(this.sys, fd, p.transferDirection, this);
    return { payload: { value: STATE_FD_NO_FD } };
  },
  [FrontendReq.CHECK_DEVICE_STATE]() {
    const t = this.stateTransfer;
    // "The front-end ... has to wait until the back-end closes the fd (SAVE) / closes its end (LOAD)
    // before checking": a LOAD whose EOF we have not seen yet is incomplete.
    let error: string | null;
    if (t === null) error = 'CHECK_DEVICE_STATE without a transfer';
    else if (t.result === null) error = 'device state transfer not finished (no EOF yet)';
    else error = t.result === '' ? null : t.result;
    if (t !== null && t.result !== null) this.stateTransfer = null;
    if (error !== null) log('%s: CHECK_DEVICE_STATE: %s', this.label, error);
    return { payload: { value: error === null ? 0n : STATE_FAILED } };
  },
};
