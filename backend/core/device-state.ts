/**
 * One transfer of the device's internal state (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, protocol
 * feature DEVICE_STATE; vhost-user.rst "Migrating back-end state") over the pipe the frontend gave us.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding, Poller } from '../../native/types.ts';
import { POLL_READABLE, POLL_DISCONNECT } from '../../native/types.ts';
import { TransferDirection } from '../../protocol/index.ts';
import { fail } from './errors.ts';
import { MAX_DEVICE_STATE_BYTES, type Device } from './device.ts';

const log = createDebug('vhost:device-state');

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
    private readonly device: Device,
    private readonly label: string,
  ) {
    this.fd = fd;
    if (direction === TransferDirection.SAVE) this.save();
    else this.startLoad();
  }

  private save(): void {
    const dev = this.device;
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
      log('%s: saved %d bytes of device state', this.label, bytes.length);
      this.finish('');
    } catch (e) {
      this.finish((e as Error).message);
    }
  }

  private startLoad(): void {
    const fd = this.fd!;
    try {
      this.poller = new this.sys.Poller(fd, (err) => {
        if (err) return this.finish(`device state pipe: ${err.message}`);
        this.drain();
      });
      this.poller.start(POLL_READABLE | POLL_DISCONNECT);
    } catch (e) {
      // Not pollable (a memfd, a regular file): the transfer fails now, and its fd is closed.
      this.finish(`device state fd cannot be watched: ${(e as Error).message}`);
    }
  }

  /** The transfer already failed (it cannot start, or a SAVE could not be written). */
  get failed(): boolean {
    return this.result !== null && this.result !== '';
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
    const dev = this.device;
    const all = new Uint8Array(this.received);
    let off = 0;
    for (const c of this.chunks) {
      all.set(c, off);
      off += c.length;
    }
    try {
      if (!dev.loadState) fail('SESSION_UNSUPPORTED', `the ${dev.kind} device cannot load state`);
      dev.loadState(all);
      log('%s: loaded %d bytes of device state', this.label, all.length);
      this.finish('');
    } catch (e) {
      this.finish((e as Error).message);
    }
  }

  private finish(result: string): void {
    if (this.result === null) this.result = result;
    if (result) log('%s: device state transfer failed: %s', this.label, result);
    this.close();
  }

  close(): void {
    this.poller?.close();
    this.poller = null;
    if (this.fd !== null) this.sys.close(this.fd);
    this.fd = null;
  }
}
