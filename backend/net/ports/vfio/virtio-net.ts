/**
 * Poll-mode driver for a modern virtio-net PCI device (QEMU `-device virtio-net-pci,disable-legacy=on,
 * iommu_platform=on`, PCI 1af4:1041) driven from user space through VFIO: virtio v1.2 §3.1.1 initialization
 * over the PCI transport (virtio-pci.ts), §5.1 network device, one RX queue (0) and one TX queue (1).
 *
 * The rings are driven by OUR virtqueue engine's driver half (virtqueue/split-driver.ts for split rings,
 * packed-driver.ts for packed rings, §2.7 / §2.8) over a GuestMemory view of the DMA pool whose
 * addresses are the IOVAs the device uses. Every chain is one 2 KiB buffer from the pool holding the
 * 12-byte virtio_net_hdr (§5.1.6: VERSION_1 always has num_buffers) followed by the frame; all buffers and
 * rings are allocated in init(), rxBurst/txCommit only move preallocated buffers around.
 *
 * Features: VERSION_1 and ACCESS_PLATFORM are required (§6.1: without ACCESS_PLATFORM the device would
 * treat our IOVAs as guest-physical addresses and bypass the vIOMMU); MAC and STATUS when offered;
 * RING_PACKED when asked (or, by default, when offered); MRG_RXBUF only when asked (a 1514-byte frame fits
 * one buffer anyway). No offloads: the port completes checksums and segments in software.
 */
import createDebug from 'debug';
import { FlatMemory } from '../../../../virtqueue/memory.ts';
import { SplitDriver } from '../../../../virtqueue/split-driver.ts';
import { PackedDriver } from '../../../../virtqueue/packed-driver.ts';
import type { DmaAllocator, RxVerdict } from './e1000e.ts';
import { STATUS, VirtioPciTransport, type VirtioQueueNotify } from './virtio-pci.ts';

const log = createDebug('vhost:vfio:virtio-net');

/** Feature bits (§5.1.3, §6). */
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
/** §5.1.4 virtio_net_config.status bit. */
export const VIRTIO_NET_S_LINK_UP = 1;

/** §5.1.6: struct virtio_net_hdr with num_buffers, always 12 bytes with VERSION_1. */
export const NET_HDR_BYTES = 12;
export const VIRTIO_BUF_BYTES = 2048;
/** The largest frame one buffer carries after its header. */
export const VIRTIO_MAX_FRAME = VIRTIO_BUF_BYTES - NET_HDR_BYTES;

export const RX_QUEUE = 0;
export const TX_QUEUE = 1;

const bit = (b: number) => 1n << BigInt(b);

/** The DMA pool as the driver needs it: an allocator plus the whole pool's bytes and device address. */
export interface DmaMemory extends DmaAllocator {
  readonly bytes: Uint8Array;
  readonly iovaBase: number;
}

export interface VirtioNetOptions {
  /** Descriptors per ring (split: a power of two); capped by the device's queue_size. Default 256. */
  rxRing?: number;
  txRing?: number;
  /** true: require RING_PACKED; false: split rings; undefined: packed when the device offers it. */
  packed?: boolean;
  /** Negotiate MRG_RXBUF when offered (default false). */
  mrgRxbuf?: boolean;
}

export interface VirtioNetStats {
  /** Counted by the driver (virtio-net has no hardware counters). */
  rxPackets: number;
  txPackets: number;
  rxOctets: number;
  txOctets: number;
  /** Frames dropped by the driver: too short, or spread over several buffers (MRG_RXBUF). */
  rxErrors: number;
  /** Notifications written (TX and RX refills). */
  notifies: number;
}

/** The part of SplitDriver / PackedDriver a real driver uses (the allocation-free fast path). */
interface RingDriver {
  readonly size: number;
  readonly poppedLen: number;
  readonly hasUsed: boolean;
  readonly freeDescCount: number;
  addBuffer(addr: number, byteLen: number, write: boolean, publish?: boolean): number;
  popUsed(): number;
  publish(): void;
  kick(): boolean;
}

interface Queue {
  ring: RingDriver;
  notify: VirtioQueueNotify;
  /** Buffer index of each id in flight. */
  bufOf: Int32Array;
  iova: number[];
  /** Whole buffers, and frame views (the bytes after the header). */
  buf: Uint8Array[];
  frame: Uint8Array[];
  setInterrupts(on: boolean): void;
}

export class VirtioNet {
  mac = new Uint8Array(6);
  features = 0n;
  packed = false;
  mrg = false;
  readonly stats: VirtioNetStats = { rxPackets: 0, txPackets: 0, rxOctets: 0, txOctets: 0, rxErrors: 0, notifies: 0 };
  readonly maxFrame = VIRTIO_MAX_FRAME;
  private readonly mem: FlatMemory;
  private rx!: Queue;
  private tx!: Queue;
  /** An RX element refused with 'busy': handed out again first next time. */
  private heldId = -1;
  private heldLen = 0;
  /** Free TX buffers (a stack of buffer indices). */
  private txStack!: Int32Array;
  private txTop = 0;
  private txPending = 0;
  private started = false;

  constructor(
    readonly t: VirtioPciTransport,
    private readonly dma: DmaMemory,
    private readonly opts: VirtioNetOptions = {},
  ) {
    // Ring addresses are IOVAs: the view's base is the pool's IOVA, so the driver half writes exactly
    // the addresses the device (behind the IOMMU) will use.
    this.mem = new FlatMemory(dma.bytes, dma.iovaBase);
  }

  /** DMA bytes init() may allocate (for sizing the pool). */
  static dmaBytes(rxRing = 256, txRing = 256): number {
    let n = 0;
    for (const q of [rxRing, txRing]) {
      const ring = Math.max(SplitDriver.layout(q).end, PackedDriver.layout(q).end);
      n += Math.ceil(ring / 4096) * 4096 + q * VIRTIO_BUF_BYTES;
    }
    return n + 4096;
  }

  /** §3.1.1 device initialization; the caller has enabled bus mastering (PCI command register) before. */
  init(): void {
    const t = this.t;
    t.reset();
    t.addStatus(STATUS.ACKNOWLEDGE);
    t.addStatus(STATUS.DRIVER);
    const offered = t.deviceFeatures();
    let wanted = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS);
    let required = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM);
    if (this.opts.packed === true) required |= bit(VIRTIO_F_RING_PACKED);
    if (this.opts.packed !== false && offered & bit(VIRTIO_F_RING_PACKED)) wanted |= bit(VIRTIO_F_RING_PACKED);
    if (this.opts.mrgRxbuf) wanted |= bit(VIRTIO_NET_F_MRG_RXBUF);
    this.features = t.negotiate(wanted | required, required);
    this.packed = this.has(VIRTIO_F_RING_PACKED);
    this.mrg = this.has(VIRTIO_NET_F_MRG_RXBUF);
    if (t.numQueues < 2) {
      t.fail();
      throw new Error(`virtio-net: the device has ${t.numQueues} queue(s), need RX and TX`);
    }
    t.noConfigVector();
    if (this.has(VIRTIO_NET_F_MAC)) {
      // §5.1.4: mac is valid only with VIRTIO_NET_F_MAC; byte accesses are the natural width of u8 fields.
      t.readDeviceConfig((d) => {
        for (let i = 0; i < 6; i++) this.mac[i] = d.r8(i);
      });
    }
    this.rx = this.setupQueue(RX_QUEUE, this.opts.rxRing ?? 256);
    this.tx = this.setupQueue(TX_QUEUE, this.opts.txRing ?? 256);
    // §5.1.5 "fill the receive queues with buffers": every RX buffer is posted.
    for (let b = 0; b < this.rx.iova.length; b++) this.post(this.rx, b, VIRTIO_BUF_BYTES, true);
    this.rx.ring.publish();
    this.txStack = new Int32Array(this.tx.iova.length);
    for (let b = this.tx.iova.length - 1; b >= 0; b--) this.txStack[this.txTop++] = b;
    t.addStatus(STATUS.DRIVER_OK);
    if ((t.status & STATUS.DEVICE_NEEDS_RESET) !== 0) throw new Error('virtio-net: DEVICE_NEEDS_RESET right after DRIVER_OK');
    this.started = true;
    // Buffers made available before DRIVER_OK: tell the device now (it may have queued frames).
    this.rx.ring.kick();
    this.notify(this.rx);
    log('init: mac %s, %s rings rx %d tx %d, features 0x%s', formatMac(this.mac), this.packed ? 'packed' : 'split', this.rx.ring.size, this.tx.ring.size, this.features.toString(16));
  }

  has(b: number): boolean {
    return (this.features & bit(b)) !== 0n;
  }

  private setupQueue(index: number, want: number): Queue {
    const max = this.t.maxQueueSize(index);
    if (max === 0) throw new Error(`virtio-net: queue ${index} does not exist`);
    let size = Math.min(want, max);
    // §2.7: split queue sizes are powers of two (packed ones need not be).
    if (!this.packed) size = 2 ** Math.floor(Math.log2(size));
    let ring: RingDriver;
    let setInterrupts: (on: boolean) => void;
    let addrs: { desc: number; driver: number; device: number };
    if (this.packed) {
      const l = PackedDriver.layout(size);
      const chunk = this.dma.alloc(l.end, 4096);
      const d = new PackedDriver(this.mem, { size, base: chunk.iova, heapByteLen: 0 });
      ring = d;
      setInterrupts = (on) => (on ? d.enableInterrupts() : d.disableInterrupts());
      addrs = { desc: d.descAddr, driver: d.driverEventAddr, device: d.deviceEventAddr };
    } else {
      const l = SplitDriver.layout(size);
      const chunk = this.dma.alloc(l.end, 4096);
      const d = new SplitDriver(this.mem, { size, base: chunk.iova, heapByteLen: 0 });
      ring = d;
      setInterrupts = (on) => d.setNoInterrupt(!on);
      addrs = { desc: d.descAddr, driver: d.availAddr, device: d.usedAddr };
    }
    // Polling: no used-buffer notifications (§2.7.10 / §2.8.10 driver-side suppression).
    setInterrupts(false);
    const iova: number[] = [];
    const buf: Uint8Array[] = [];
    const frame: Uint8Array[] = [];
    for (let i = 0; i < size; i++) {
      const b = this.dma.alloc(VIRTIO_BUF_BYTES, VIRTIO_BUF_BYTES);
      b.bytes.fill(0);
      iova.push(b.iova);
      buf.push(b.bytes);
      frame.push(b.bytes.subarray(NET_HDR_BYTES));
    }
    const notify = this.t.setupQueue(index, size, addrs);
    return { ring, notify, bufOf: new Int32Array(size).fill(-1), iova, buf, frame, setInterrupts };
  }

  /** Makes buffer `b` of `q` available with `len` bytes (no publish). */
  private post(q: Queue, b: number, len: number, write: boolean): void {
    const id = q.ring.addBuffer(q.iova[b]!, len, write, false);
    if (id < 0) throw new Error('virtio-net: no free descriptor for a free buffer (ring bookkeeping broken)');
    q.bufOf[id] = b;
  }

  private notify(q: Queue): void {
    this.t.notify(q.notify);
    this.stats.notifies++;
  }

  /** Link state (§5.1.4.2: without VIRTIO_NET_F_STATUS the driver assumes the link is up). */
  get linkUp(): boolean {
    if (!this.has(VIRTIO_NET_F_STATUS)) return true;
    return (this.t.readDeviceConfig((d) => d.r16(6)) & VIRTIO_NET_S_LINK_UP) !== 0;
  }

  get rxPending(): boolean {
    return this.heldId >= 0 || this.rx.ring.hasUsed;
  }

  get rxSize(): number {
    return this.rx.ring.size;
  }
  get txSize(): number {
    return this.tx.ring.size;
  }

  /**
   * Hands up to `max` received frames to `handler` (frame = buf[0, len), valid during the call; the header
   * is stripped). A 'busy' answer keeps that frame for the next burst. Returns the frames consumed.
   */
  rxBurst(handler: (buf: Uint8Array, len: number) => RxVerdict, max = 32): number {
    const q = this.rx;
    const ring = q.ring;
    let n = 0;
    let reposted = 0;
    for (; n < max; n++) {
      let id: number;
      let len: number;
      if (this.heldId >= 0) {
        id = this.heldId;
        len = this.heldLen;
      } else {
        id = ring.popUsed();
        if (id < 0) break;
        len = ring.poppedLen;
      }
      const b = q.bufOf[id] ?? -1;
      if (b < 0) throw new Error(`virtio-net: device returned unknown RX id ${id}`);
      const frameLen = len - NET_HDR_BYTES;
      // num_buffers: le16 at header offset 10 (§5.1.6); without MRG_RXBUF every frame is one buffer.
      const hdr = q.buf[b]!;
      const numBuffers = this.mrg ? hdr[10]! | (hdr[11]! << 8) : 1;
      if (frameLen < 14 || frameLen > VIRTIO_MAX_FRAME || numBuffers !== 1) {
        this.stats.rxErrors++;
        if (numBuffers > 1) this.dropRest(numBuffers - 1);
      } else if (handler(q.frame[b]!, frameLen) === 'busy') {
        this.heldId = id;
        this.heldLen = len;
        break;
      } else {
        this.stats.rxPackets++;
        this.stats.rxOctets += frameLen;
      }
      this.heldId = -1;
      q.bufOf[id] = -1;
      this.post(q, b, VIRTIO_BUF_BYTES, true);
      reposted++;
    }
    if (reposted > 0) {
      ring.publish();
      if (ring.kick()) this.notify(q);
    }
    return n;
  }

  /** MRG_RXBUF: the remaining buffers of a frame we do not take (it spans several buffers) go back. */
  private dropRest(count: number): void {
    const q = this.rx;
    for (let i = 0; i < count; i++) {
      const id = q.ring.popUsed();
      if (id < 0) return;
      const b = q.bufOf[id]!;
      q.bufOf[id] = -1;
      this.post(q, b, VIRTIO_BUF_BYTES, true);
    }
  }

  /** Frees the TX buffers the device has used. Returns the free buffer count. */
  txReclaim(): number {
    const q = this.tx;
    for (;;) {
      const id = q.ring.popUsed();
      if (id < 0) break;
      const b = q.bufOf[id]!;
      q.bufOf[id] = -1;
      this.txStack[this.txTop++] = b;
    }
    return this.txTop;
  }

  get txFree(): number {
    return this.txTop;
  }

  /** The frame area of the next TX buffer (fill it, then txCommit(len)), or null when all are in flight. */
  txBuffer(): Uint8Array | null {
    if (this.txTop === 0 && this.txReclaim() === 0) return null;
    return this.tx.frame[this.txStack[this.txTop - 1]!]!;
  }

  /**
   * Queues the frame in txBuffer()[0, len) behind its header. The header stays all zero (no offloads, no
   * GSO, §5.1.6.2): it was zeroed at init and the device never writes TX buffers.
   */
  txCommit(len: number): void {
    const b = this.txStack[--this.txTop]!;
    this.post(this.tx, b, NET_HDR_BYTES + len, false);
    this.txPending++;
    this.stats.txPackets++;
    this.stats.txOctets += len;
  }

  /** Copies one frame into a TX buffer; false when none is free. */
  txFrame(frame: Uint8Array, len: number): boolean {
    if (len > VIRTIO_MAX_FRAME) throw new RangeError(`frame of ${len} bytes exceeds the ${VIRTIO_MAX_FRAME}-byte TX buffer`);
    const buf = this.txBuffer();
    if (buf === null) return false;
    buf.set(len === frame.length ? frame : frame.subarray(0, len));
    this.txCommit(len);
    return true;
  }

  /** Publishes queued frames and notifies the device unless it asked not to be (§2.7.10 / §2.8.10). */
  txFlush(): void {
    if (this.txPending === 0) return;
    this.txPending = 0;
    this.tx.ring.publish();
    if (this.tx.ring.kick()) this.notify(this.tx);
  }

  readStats(): VirtioNetStats {
    return this.stats;
  }

  /** Resets the device (§4.1.4.3.2): it stops using the rings, so the DMA memory may be released. */
  stop(): void {
    if (!this.started) return;
    this.started = false;
    this.t.reset();
  }
}

export function formatMac(m: Uint8Array): string {
  return Array.from(m, (b) => b.toString(16).padStart(2, '0')).join(':');
}
