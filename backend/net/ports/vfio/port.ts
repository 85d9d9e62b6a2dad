/**
 * VFIO port: frames go out of and come in from a PCI NIC that we drive from user space: an e1000e (82574L,
 * e1000e.ts) or a modern virtio-net PCI device (virtio-net.ts over virtio-pci.ts), chosen by PCI vendor/device id.
 *
 *   device TX -> deliver() -> copy into a preallocated TX buffer (offloads done in software) -> TDT
 *   NIC RX    -> rxBurst over the RX ring -> device.deliver(buffer view) -> descriptor recycled -> RDT
 *
 * Two ways to learn about received frames:
 *   - 'irq' (default when the device has MSI or INTx): VFIO_DEVICE_SET_IRQS wires the interrupt to an eventfd
 *     watched by a Poller on Node's loop; the handler reads ICR (clears the causes), then drains the ring;
 *   - 'poll': a timer/immediate loop that checks the next descriptor's DD bit (DMA memory, no MMIO): busy
 *     (setImmediate) while frames keep coming, a 1 ms timer once idle, so an idle port costs little.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding, Poller } from '../../../../native/types.ts';
import { POLL_READABLE, VFIO_PCI_IRQ } from '../../../../native/types.ts';
import { GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, NET_HDR_F_NEEDS_CSUM, NetHdr } from '../../frame/net-hdr.ts';
import { completeChecksum, segmentTcp } from '../../frame/offload.ts';
import { emptyStats, type Delivery, type FrameSink, type Port, type PortStats } from '../port.ts';
import { BUF_BYTES, BarRegs, E1000e, ICR_LSC, formatMac } from './e1000e.ts';
import { DmaPool } from './dma.ts';
import { enableBusMaster } from './pci.ts';
import { capBars, findVirtioCaps, VirtioPciTransport, windowsFor } from './virtio-pci.ts';
import { VirtioNet } from './virtio-net.ts';
import { VfioDevice, VfioError, type VfioSys } from './vfio.ts';

const log = createDebug('vhost:vfio');

/** PCI IDs we have a driver for. */
export const E1000E_IDS = [{ vendor: 0x8086, device: 0x10d3 }]; // 82574L
/** Modern (non-transitional) virtio-net: 0x1040 + device id 1 (virtio v1.2 §4.1.2.1). */
export const VIRTIO_NET_IDS = [{ vendor: 0x1af4, device: 0x1041 }];

export type VfioNicKind = 'e1000e' | 'virtio-net';

/** The driver for a PCI vendor/device id, or null. */
export function nicKindFor(vendor: number, device: number): VfioNicKind | null {
  const is = (ids: { vendor: number; device: number }[]) => ids.some((d) => d.vendor === vendor && d.device === device);
  return is(E1000E_IDS) ? 'e1000e' : is(VIRTIO_NET_IDS) ? 'virtio-net' : null;
}

export type VfioMode = 'irq' | 'poll';

export interface VfioPortOptions {
  mode?: VfioMode;
  rxRing?: number;
  txRing?: number;
  /** hugetlbfs mount for the DMA pool (default: a memfd). */
  hugetlbfs?: string;
  /** virtio-net only: true requires packed rings, false forces split; default: packed when the device offers it. */
  packed?: boolean;
  /** For tests: a fake /sys. */
  sysfs?: string;
}

export type VfioPortSys = VfioSys & Pick<NativeBinding, 'memfdCreate' | 'ftruncate' | 'eventfd' | 'eventfdRead' | 'Poller'>;

/** Frames taken from the NIC per turn of the event loop. */
const RX_BUDGET = 64;
/** Idle poll period in 'poll' mode, and TX-ring-full retry period. */
const IDLE_POLL_MS = 1;
/** Polls in a row without a frame before the poll loop drops from setImmediate to the idle timer. */
const SPIN_POLLS = 64;

export class VfioPort implements Port {
  readonly name: string;
  readonly stats: PortStats = emptyStats();
  readonly nic: E1000e | VirtioNet;
  readonly kind: VfioNicKind;
  /** Largest frame one TX buffer holds (e1000e 2048, virtio-net 2048 - the 12-byte header). */
  private readonly maxFrame: number;
  readonly mode: VfioMode;
  readonly mac: string;
  private readonly dev: VfioDevice;
  private readonly pool: DmaPool;
  private device: FrameSink | null = null;
  private readonly rxHdr = new NetHdr();
  private readonly segScratch = new Uint8Array(BUF_BYTES);
  private irqFd: Fd | null = null;
  private irqIndex = -1;
  private poller: Poller | null = null;
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private idlePolls = 0;
  private waitingSpace = false;
  private spaceWaiters: (() => void)[] = [];
  private inBurst = false;
  private lastLink = false;
  private closed = false;
  private readonly onRxFrame = (buf: Uint8Array, len: number) => {
    const res = this.device!.deliver(buf, this.rxHdr, len);
    if (res === 'busy') return 'busy' as const;
    if (res === 'ok') {
      this.stats.rxFrames++;
      this.stats.rxBytes += len;
      return 'ok' as const;
    }
    this.stats.rxDropped++;
    return 'drop' as const;
  };

  constructor(
    private readonly sys: VfioPortSys,
    address: string,
    opts: VfioPortOptions = {},
  ) {
    this.dev = VfioDevice.open(sys, address, opts.sysfs);
    this.name = `vfio:${this.dev.bdf}`;
    let pool: DmaPool | null = null;
    try {
      const { vendor, device } = this.dev.info;
      const kind = nicKindFor(vendor, device);
      if (kind === null) {
        throw new VfioError(
          'VFIO_UNSUPPORTED',
          `${this.dev.bdf}: no driver for PCI device ${vendor.toString(16)}:${device.toString(16)} (supported: 8086:10d3 e1000e, 1af4:1041 virtio-net)`,
        );
      }
      this.kind = kind;
      const rxRing = opts.rxRing ?? 256;
      const txRing = opts.txRing ?? 256;
      const dmaBytes = kind === 'e1000e' ? E1000e.dmaBytes(rxRing, txRing) : VirtioNet.dmaBytes(rxRing, txRing);
      pool = DmaPool.create(sys, { byteLen: dmaBytes, ...(opts.hugetlbfs ? { hugetlbfs: opts.hugetlbfs } : {}) });
      pool.mapInto(this.dev.container);
      if (kind === 'e1000e') {
        const bar0 = this.dev.mapBar(0);
        enableBusMaster(this.dev);
        this.nic = new E1000e(new BarRegs(bar0.ab), pool, { rxRing, txRing });
        this.maxFrame = BUF_BYTES;
      } else {
        // virtio v1.2 §4.1.4: the vendor capabilities say which BARs hold the structures; map those.
        const caps = findVirtioCaps(this.dev);
        const bars = new Map(capBars(caps).map((i) => [i, this.dev.mapBar(i).ab] as const));
        enableBusMaster(this.dev);
        this.nic = new VirtioNet(new VirtioPciTransport(windowsFor(caps, bars)), pool, {
          rxRing,
          txRing,
          ...(opts.packed !== undefined ? { packed: opts.packed } : {}),
        });
        this.maxFrame = this.nic.maxFrame;
        // Polling only: virtio-pci interrupts are MSI-X (not wired here) or INTx.
        if (opts.mode === 'irq') throw new VfioError('VFIO_UNSUPPORTED', `${this.dev.bdf}: virtio-net runs in poll mode only (drop ,irq)`);
      }
      this.nic.init();
      this.pool = pool;
      this.mac = formatMac(this.nic.mac);
      this.mode = opts.mode ?? (kind === 'e1000e' && this.setupIrq() ? 'irq' : 'poll');
      if (opts.mode === 'irq' && this.irqFd === null && !this.setupIrq()) {
        throw new VfioError('VFIO_UNSUPPORTED', `${this.dev.bdf}: no MSI or INTx interrupt to use (try ,poll)`);
      }
    } catch (e) {
      this.teardownIrq();
      pool?.close();
      this.dev.close();
      throw e;
    }
    this.lastLink = this.nic.linkUp;
    log(
      '%s: %s mac %s, link %s, %s mode%s',
      this.name,
      this.kind,
      this.mac,
      this.lastLink ? 'up' : 'down',
      this.mode,
      this.nic instanceof VirtioNet ? `, ${this.nic.packed ? 'packed' : 'split'} rings` : '',
    );
  }

  /** MSI (one vector) if the device has it, else INTx (auto-masked by VFIO, unmasked after each interrupt). */
  private setupIrq(): boolean {
    for (const index of [VFIO_PCI_IRQ.msi, VFIO_PCI_IRQ.intx]) {
      const info = this.sys.vfioDeviceGetIrqInfo(this.dev.fd, index);
      if (info.count === 0 || (info.flags & 1) === 0) continue; // VFIO_IRQ_INFO_EVENTFD
      const fd = this.sys.eventfd(0);
      try {
        this.sys.vfioDeviceSetIrqs(this.dev.fd, index, 'trigger', 0, [fd]);
      } catch (e) {
        log('%s: SET_IRQS index %d: %s', this.name, index, (e as Error).message);
        this.sys.close(fd);
        continue;
      }
      this.irqFd = fd;
      this.irqIndex = index;
      log('%s: interrupts via %s', this.name, index === VFIO_PCI_IRQ.msi ? 'MSI' : 'INTx');
      return true;
    }
    return false;
  }

  private teardownIrq(): void {
    if (this.irqFd === null) return;
    try {
      this.sys.vfioDeviceSetIrqs(this.dev.fd, this.irqIndex, 'trigger', 0, null, 0);
    } catch {
      /* device going away */
    }
    this.sys.close(this.irqFd);
    this.irqFd = null;
  }

  connect(device: FrameSink): void {
    this.device = device;
    if (this.mode === 'irq') {
      this.poller = new this.sys.Poller(this.irqFd!, (err) => {
        if (err) return log('%s: irq poll error %s', this.name, err.message);
        this.onIrq();
      });
      this.poller.start(POLL_READABLE);
      if (this.nic instanceof E1000e) this.nic.enableInterrupts();
    }
    // Frames may already be waiting (or the link state changed) before the first interrupt.
    this.schedulePoll(true);
  }

  private onIrq(): void {
    if (this.closed) return;
    this.sys.eventfdRead(this.irqFd!);
    if (!(this.nic instanceof E1000e)) return; // virtio-net: poll mode only
    const icr = this.nic.readIcr();
    if (this.irqIndex === VFIO_PCI_IRQ.intx) this.sys.vfioDeviceSetIrqs(this.dev.fd, VFIO_PCI_IRQ.intx, 'unmask', 0, null, 1);
    if (icr & ICR_LSC) this.checkLink();
    this.pump();
  }

  private checkLink(): void {
    const up = this.nic.linkUp;
    if (up !== this.lastLink) {
      this.lastLink = up;
      log('%s: link %s', this.name, up ? 'up' : 'down');
    }
  }

  /** Drains up to RX_BUDGET frames; reschedules itself while the ring has more (or, in poll mode, always). */
  private pump(): void {
    this.immediate = null;
    this.timer = null;
    const dev = this.device;
    if (!dev || this.closed || this.waitingSpace) return;
    let n = 0;
    dev.beginBurst?.();
    try {
      n = this.nic.rxBurst(this.onRxFrame, RX_BUDGET);
    } finally {
      dev.endBurst?.();
    }
    if (this.nic.rxPending) {
      if (!this.waitingSpace && this.onRxBusy()) return;
      this.schedulePoll(true);
      return;
    }
    if (this.mode === 'poll') {
      this.idlePolls = n > 0 ? 0 : this.idlePolls + 1;
      this.schedulePoll(this.idlePolls < SPIN_POLLS);
    }
  }

  /** True when the device is busy (the frame at the head was refused): wait for its onSpace. */
  private onRxBusy(): boolean {
    // rxBurst stops early either on budget or on 'busy'; try one frame to tell which without losing it.
    const took = this.nic.rxBurst(this.onRxFrame, 1);
    if (took > 0) return false;
    this.waitingSpace = true;
    this.device!.onSpace(() => {
      this.waitingSpace = false;
      if (!this.closed) this.schedulePoll(true);
    });
    return true;
  }

  private schedulePoll(soon: boolean): void {
    if (this.closed || this.immediate || this.timer) return;
    if (soon) this.immediate = setImmediate(() => this.pump());
    else this.timer = setTimeout(() => this.pump(), IDLE_POLL_MS);
  }

  // ---- TX: the device transmits through us ----

  beginBurst(): void {
    this.inBurst = true;
  }

  endBurst(): void {
    this.inBurst = false;
    this.nic.txFlush();
  }

  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    if (this.closed) return 'dropped';
    const gso = hdr.gsoType & ~GSO_ECN;
    let res: Delivery;
    if (gso === GSO_NONE) {
      res = this.sendOne(frame, hdr, byteLen);
    } else if ((gso === GSO_TCPV4 || gso === GSO_TCPV6) && hdr.gsoSize > 0) {
      // TSO in software (offload.ts): each segment fully checksummed, copied straight into a TX buffer.
      if (this.nic.txReclaim() < Math.ceil(byteLen / hdr.gsoSize) + 1) res = this.busy();
      else {
        let segs = 0;
        const n = segmentTcp(frame, byteLen, Math.min(hdr.gsoSize, this.maxFrame - 128), this.segScratch, (seg, segLen) => {
          if (!this.nic.txFrame(seg, segLen)) return false;
          segs++;
          this.stats.txBytes += segLen;
          return true;
        });
        if (n < 0) res = this.drop();
        else {
          this.stats.txFrames += segs;
          res = 'ok';
        }
      }
    } else {
      res = this.drop(); // UFO is never offered by the net device
    }
    if (!this.inBurst) this.nic.txFlush();
    return res;
  }

  private sendOne(frame: Uint8Array, hdr: NetHdr, byteLen: number): Delivery {
    if (byteLen > this.maxFrame || byteLen < 14) return this.drop();
    const buf = this.nic.txBuffer();
    if (buf === null) return this.busy();
    buf.set(byteLen === frame.length ? frame : frame.subarray(0, byteLen));
    // virtio v1.2 §5.1.6.2: NEEDS_CSUM leaves the checksum at csum_start+csum_offset to whoever sends the
    // frame on the wire: that is us (no TX checksum context on the NIC).
    if (hdr.flags & NET_HDR_F_NEEDS_CSUM && !completeChecksum(buf, byteLen, hdr.csumStart, hdr.csumOffset)) return this.drop();
    this.nic.txCommit(byteLen);
    this.stats.txFrames++;
    this.stats.txBytes += byteLen;
    return 'ok';
  }

  private drop(): Delivery {
    this.stats.txDropped++;
    return 'dropped';
  }

  /** TX ring full: the sender keeps its chain and waits for onSpace (the NIC always drains eventually). */
  private busy(): Delivery {
    this.nic.txFlush();
    return 'busy';
  }

  onSpace(cb: () => void): void {
    this.spaceWaiters.push(cb);
    if (this.spaceWaiters.length === 1) this.waitTxSpace();
  }

  private waitTxSpace(): void {
    setTimeout(() => {
      if (this.closed) return;
      if (this.nic.txReclaim() === 0) return this.waitTxSpace();
      for (const cb of this.spaceWaiters.splice(0)) cb();
    }, IDLE_POLL_MS);
  }

  /** Device counters (clear-on-read registers accumulated). */
  readNicStats() {
    return this.nic.readStats();
  }

  get linkUp(): boolean {
    return this.nic.linkUp;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.immediate) clearImmediate(this.immediate);
    if (this.timer) clearTimeout(this.timer);
    this.poller?.close();
    // Stop DMA before the memory goes away: disable RX/TX, then unmap.
    try {
      this.nic.stop();
    } catch (e) {
      log('%s: stop: %s', this.name, (e as Error).message);
    }
    this.teardownIrq();
    this.pool.close();
    this.dev.close();
  }
}
