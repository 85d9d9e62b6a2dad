/**
 * TAP port: a kernel tap device, so the host (or a network namespace the tap is moved into) talks
 * to the guest. The tap is opened without IFF_VNET_HDR for now: frames are plain Ethernet and no
 * offloads are negotiated (offloads pass through the vnet header in a later step).
 */
import createDebug from 'debug';
import type { NativeBinding, Fd, Poller } from '../../native/types.ts';
import { POLL_READABLE } from '../../native/types.ts';
import { emptyStats, type Delivery, type FrameSink, type Port, type PortStats } from './port.ts';

const log = createDebug('vhost:tap');
/** Largest frame a tap hands us without offloads (64 KiB covers any MTU). */
const MAX_FRAME = 65536;
/** Frames read per readiness event before yielding to the loop. */
const READ_BUDGET = 64;

export class TapPort implements Port {
  readonly stats: PortStats = emptyStats();
  readonly name: string;
  private readonly fd: Fd;
  private readonly poller: Poller;
  private device: FrameSink | null = null;
  private readonly buf = new Uint8Array(MAX_FRAME);
  /** Length of a frame read but not yet accepted by the device ('busy'), 0 if none. */
  private pendingLen = 0;
  private closed = false;

  constructor(
    private readonly sys: Pick<NativeBinding, 'tapOpen' | 'linkSetUp' | 'read' | 'write' | 'close' | 'Poller'>,
    ifname: string,
  ) {
    const tap = sys.tapOpen(ifname, 0);
    this.fd = tap.fd;
    this.name = tap.name;
    try {
      sys.linkSetUp(tap.name);
    } catch (e) {
      sys.close(tap.fd);
      throw e;
    }
    this.poller = new sys.Poller(this.fd, (err) => {
      if (err) return log('%s: poll error %s', this.name, err.message);
      this.pump();
    });
    log('tap %s open (fd %d)', this.name, this.fd);
  }

  connect(device: FrameSink): void {
    this.device = device;
    this.poller.start(POLL_READABLE);
  }

  deliver(frame: Uint8Array): Delivery {
    if (this.closed) return 'dropped';
    let n: number | null;
    try {
      n = this.sys.write(this.fd, frame, 0, frame.length);
    } catch (e) {
      // EIO while the link is down, EINVAL for a runt: the kernel refused this frame only.
      log('%s: write failed: %s', this.name, (e as Error).message);
      n = null;
    }
    if (n === null) {
      this.stats.txDropped++;
      return 'dropped';
    }
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
    return 'ok';
  }

  onSpace(cb: () => void): void {
    // The kernel queue never asks us to wait: a full queue drops (see deliver).
    queueMicrotask(cb);
  }

  private pump(): void {
    const dev = this.device;
    if (!dev || this.closed) return;
    for (let i = 0; i < READ_BUDGET; i++) {
      if (this.pendingLen === 0) {
        let n: number | null;
        try {
          n = this.sys.read(this.fd, this.buf, 0, this.buf.length);
        } catch (e) {
          log('%s: read failed: %s', this.name, (e as Error).message);
          return;
        }
        if (n === null || n === 0) return;
        this.pendingLen = n;
      }
      const frame = this.buf.subarray(0, this.pendingLen);
      const res = dev.deliver(frame);
      if (res === 'busy') {
        // Keep the frame, stop reading (the kernel queues behind us) until the guest posts buffers.
        this.poller.stop();
        dev.onSpace(() => {
          if (this.closed) return;
          this.poller.start(POLL_READABLE);
          this.pump();
        });
        return;
      }
      if (res === 'ok') {
        this.stats.rxFrames++;
        this.stats.rxBytes += this.pendingLen;
      } else this.stats.rxDropped++;
      this.pendingLen = 0;
    }
    // Budget used up: let other fds run, then continue.
    setImmediate(() => this.pump());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    this.sys.close(this.fd);
  }
}
