/**
 * TAP port: a kernel tap device, so the host (or a network namespace the tap is moved into) talks
 * to the guest. The tap is opened with IFF_VNET_HDR (12-byte header, TUNSETVNETHDRSZ), so offload
 * metadata passes straight through: the kernel accepts partial checksums and GSO frames from us, and
 * sends partial-checksum / GSO frames to us only for the offloads the guest acked (TUNSETOFFLOAD).
 */
import createDebug from 'debug';
import type { NativeBinding, Fd, Poller } from '../../../native/types.ts';
import { POLL_READABLE } from '../../../native/types.ts';
import { VirtioF, has } from '../../../protocol/index.ts';
import { NET_HDR_MRG_BYTES, NetHdr } from '../frame/net-hdr.ts';
import { emptyStats, type Delivery, type FrameSink, type Port, type PortStats } from './port.ts';

const log = createDebug('vhost:tap');
/** Header + largest frame a tap hands us (a 64 KiB GSO frame). */
const MAX_FRAME = NET_HDR_MRG_BYTES + 65536;
const VNET_HDR_BYTES = NET_HDR_MRG_BYTES;
/** linux/if_tun.h TUN_F_* offload flags for TUNSETOFFLOAD. */
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;
/** Frames read per readiness event before yielding to the loop. */
const READ_BUDGET = 64;

export class TapPort implements Port {
  readonly stats: PortStats = emptyStats();
  readonly name: string;
  private readonly fd: Fd;
  private readonly poller: Poller;
  private device: FrameSink | null = null;
  private readonly buf = new Uint8Array(MAX_FRAME);
  private readonly rxHdr = new NetHdr();
  private readonly rxHdrBytes = new Uint8Array(VNET_HDR_BYTES);
  private readonly rxBufs: Uint8Array[] = [this.rxHdrBytes, this.buf];
  private readonly rxOffs = [0, 0];
  private readonly rxLens = [VNET_HDR_BYTES, MAX_FRAME];
  private readonly txHdr = new Uint8Array(VNET_HDR_BYTES);
  private readonly txBufs: Uint8Array[] = [this.txHdr, this.txHdr];
  private readonly txOffs = [0, 0];
  private readonly txLens = [VNET_HDR_BYTES, 0];
  /** Length of a frame (in buf, header in rxHdrBytes) read but not yet accepted ('busy'), 0 if none. */
  private pendingLen = 0;
  private closed = false;

  constructor(
    private readonly sys: Pick<NativeBinding, 'tapOpen' | 'tapSetOffload' | 'linkSetUp' | 'readv' | 'writev' | 'close' | 'Poller'>,
    ifname: string,
  ) {
    const tap = sys.tapOpen(ifname, VNET_HDR_BYTES);
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

  /** Enables the receive offloads the guest accepts (the kernel requires CSUM for any TSO flag). */
  configure(guestFeatures: bigint): void {
    let f = 0;
    if (has(guestFeatures, VirtioF.NET_F_GUEST_CSUM)) {
      f |= TUN_F_CSUM;
      if (has(guestFeatures, VirtioF.NET_F_GUEST_TSO4)) f |= TUN_F_TSO4;
      if (has(guestFeatures, VirtioF.NET_F_GUEST_TSO6)) f |= TUN_F_TSO6;
      if (has(guestFeatures, VirtioF.NET_F_GUEST_ECN) && f & (TUN_F_TSO4 | TUN_F_TSO6)) f |= TUN_F_TSO_ECN;
    }
    try {
      this.sys.tapSetOffload(this.fd, f);
      log('%s: offloads 0x%s', this.name, f.toString(16));
    } catch (e) {
      log('%s: TUNSETOFFLOAD 0x%s failed: %s', this.name, f.toString(16), (e as Error).message);
    }
  }

  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    return this.deliverSpan(frame, 0, byteLen, hdr);
  }

  /**
   * The frame bytes[offset, offset + byteLen), e.g. a guest's one-descriptor TX buffer in place: one
   * writev of our vnet header and the frame straight from guest memory, no copy in between. The
   * header was parsed from the guest first (hdr), so the kernel sees our copy of it; if the guest
   * rewrites the frame meanwhile it only garbles its own frame.
   */
  deliverSpan(bytes: Uint8Array, offset: number, byteLen: number, hdr: NetHdr): Delivery {
    if (this.closed) return 'dropped';
    let n: number | null;
    try {
      hdr.write(this.txHdr, 0, VNET_HDR_BYTES, 0);
      this.txBufs[1] = bytes;
      this.txOffs[1] = offset;
      this.txLens[1] = byteLen;
      n = this.sys.writev(this.fd, this.txBufs, this.txOffs, this.txLens);
    } catch (e) {
      // EIO while the link is down, EINVAL for a runt: the kernel refused this frame only.
      log('%s: write failed: %s', this.name, (e as Error).message);
      this.stats.lastTxError = (e as Error).message;
      n = null;
    }
    if (n === null) {
      this.stats.txDropped++;
      return 'dropped';
    }
    this.stats.txFrames++;
    this.stats.txBytes += byteLen;
    return 'ok';
  }

  onSpace(cb: () => void): void {
    // The kernel queue never asks us to wait: a full queue drops (see deliver).
    queueMicrotask(cb);
  }

  private pump(): void {
    const dev = this.device;
    if (!dev || this.closed) return;
    dev.beginBurst?.();
    try {
      this.pumpBurst(dev);
    } finally {
      dev.endBurst?.();
    }
  }

  private pumpBurst(dev: FrameSink): void {
    for (let i = 0; i < READ_BUDGET; i++) {
      if (this.pendingLen === 0) {
        let n: number | null;
        try {
          // The vnet header and the frame go to separate buffers: the frame starts at 0, no view per frame.
          n = this.sys.readv(this.fd, this.rxBufs, this.rxOffs, this.rxLens);
        } catch (e) {
          log('%s: read failed: %s', this.name, (e as Error).message);
          return;
        }
        if (n === null || n === 0) return;
        if (n <= VNET_HDR_BYTES) continue; // not a frame
        this.pendingLen = n - VNET_HDR_BYTES;
      }
      this.rxHdr.read(this.rxHdrBytes, 0);
      const res = dev.deliver(this.buf, this.rxHdr, this.pendingLen);
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
