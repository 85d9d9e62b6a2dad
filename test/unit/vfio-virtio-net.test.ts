/**
 * The virtio-net modern PCI driver (backend/net/ports/vfio/virtio-pci.ts + virtio-net.ts) on fake hardware:
 * a config space with the virtio vendor capabilities, a common-cfg register file that behaves like
 * QEMU's virtio-pci (selectors, per-queue registers, status, FEATURES_OK check, reset) and records every
 * access with its width, a notify structure that records writes, a device cfg with MAC and status. The
 * device half of the rings is our own virtqueue engine (SplitQueue / PackedQueue) built from the queue
 * registers the driver programmed, over the same fake DMA memory at the same IOVAs.
 */
import test, { type ExecutionContext } from 'ava';
import type { DmaChunk } from '../../backend/net/ports/vfio/dma.ts';
import type { ConfigSpace } from '../../backend/net/ports/vfio/pci.ts';
import {
  BarWindow,
  COMMON,
  STATUS,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPciError,
  VirtioPciTransport,
  capBars,
  findVirtioCaps,
  windowsFor,
  type Mmio,
} from '../../backend/net/ports/vfio/virtio-pci.ts';
import {
  NET_HDR_BYTES,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_MAX_FRAME,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
  VirtioNet,
} from '../../backend/net/ports/vfio/virtio-net.ts';
import { nicKindFor } from '../../backend/net/ports/vfio/port.ts';
import { Chain, ChainReader, ChainWriter, FlatMemory, PackedQueue, SplitQueue, type Virtqueue } from '../../virtqueue/index.ts';

const IOVA_BASE = 0x10000000;
const bit = (b: number) => 1n << BigInt(b);

// ---- fake config space with the capability list QEMU 7.2 builds for virtio-net-pci,disable-legacy=on ----

class FakeConfig implements ConfigSpace {
  readonly b = new Uint8Array(256);
  private readonly dv = new DataView(this.b.buffer);
  constructor() {
    this.dv.setUint16(0, 0x1af4, true);
    this.dv.setUint16(2, 0x1041, true);
    this.dv.setUint16(6, 0x10, true); // status: capability list
  }
  cfgRead(off: number, width: 1 | 2 | 4): number {
    return width === 1 ? this.b[off]! : width === 2 ? this.dv.getUint16(off, true) : this.dv.getUint32(off, true);
  }
  cfgWrite(off: number, width: 1 | 2 | 4, v: number): void {
    if (width === 1) this.b[off] = v;
    else if (width === 2) this.dv.setUint16(off, v, true);
    else this.dv.setUint32(off, v, true);
  }
  /** Appends capabilities in order: [id, bytes after the 2-byte header]. */
  caps(list: [number, number[]][]): this {
    let at = 0x40;
    this.b[0x34] = at;
    list.forEach(([id, body], i) => {
      this.b[at] = id;
      const next = i + 1 < list.length ? at + 2 + body.length + ((4 - ((2 + body.length) % 4)) % 4) : 0;
      this.b[at + 1] = next;
      this.b.set(body, at + 2);
      at = next;
    });
    return this;
  }
}

const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
/** struct virtio_pci_cap body after cap_vndr/cap_next: cap_len, cfg_type, bar, id, pad[2], offset, length [, extra]. */
const vcap = (type: number, bar: number, offset: number, length: number, extra: number[] = []) => [
  16 + extra.length,
  type,
  bar,
  0,
  0,
  0,
  ...le32(offset),
  ...le32(length),
  ...extra,
];

/** QEMU's layout: MSI-X (id 0x11) first, then common/ISR/device/notify in BAR4 and the PCI-cfg window. */
function qemuConfig(): FakeConfig {
  return new FakeConfig().caps([
    [0x11, [0, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0]],
    [0x09, vcap(1, 4, 0x0000, 0x1000)],
    [0x09, vcap(3, 4, 0x1000, 0x1000)],
    [0x09, vcap(4, 4, 0x2000, 0x1000)],
    [0x09, vcap(2, 4, 0x3000, 0x1000, le32(4))],
    [0x09, vcap(5, 0, 0, 0, le32(0))],
  ]);
}

// ---- fake registers ----

type Access = { op: 'r' | 'w'; off: number; width: number; v: number };

class FakeQueueRegs {
  size: number;
  vector = 0;
  enable = 0;
  desc = [0, 0];
  driver = [0, 0];
  device = [0, 0];
  constructor(readonly max: number, readonly notifyOff: number) {
    this.size = max;
  }
  addr(p: number[]): number {
    return p[0]! + p[1]! * 2 ** 32;
  }
}

/** The common configuration as QEMU's virtio_pci_common_read/write implement it (widths checked). */
class FakeCommon implements Mmio {
  readonly byteLen = 0x1000;
  readonly log: Access[] = [];
  status = 0;
  statusWrites: number[] = [];
  generation = 0;
  dfSelect = 0;
  gfSelect = 0;
  driverFeatures = [0, 0];
  queueSelect = 0;
  configVector = 0;
  /** Feature sets the device refuses at FEATURES_OK. */
  refuse: (f: bigint) => boolean = () => false;
  readonly queues: FakeQueueRegs[];
  onDriverOk: () => void = () => {};
  constructor(
    public offered: bigint,
    queueMax = [256, 256, 64],
  ) {
    this.queues = queueMax.map((m, i) => new FakeQueueRegs(m, i));
  }
  get negotiated(): bigint {
    return BigInt(this.driverFeatures[0]!) | (BigInt(this.driverFeatures[1]!) << 32n);
  }
  private q(): FakeQueueRegs | undefined {
    return this.queues[this.queueSelect];
  }
  private width(off: number): number {
    if (off === COMMON.DEVICE_STATUS || off === COMMON.CONFIG_GENERATION) return 1;
    if (off < COMMON.CONFIG_MSIX_VECTOR || off >= COMMON.QUEUE_DESC) return 4;
    return 2;
  }
  private read(off: number, width: number): number {
    if (this.width(off) !== width) throw new Error(`${width}-byte access to common cfg +${off} (natural width ${this.width(off)})`);
    const q = this.q();
    switch (off) {
      case COMMON.DEVICE_FEATURE_SELECT:
        return this.dfSelect;
      case COMMON.DEVICE_FEATURE:
        return this.dfSelect < 2 ? Number((this.offered >> BigInt(32 * this.dfSelect)) & 0xffffffffn) : 0;
      case COMMON.DRIVER_FEATURE_SELECT:
        return this.gfSelect;
      case COMMON.DRIVER_FEATURE:
        return this.driverFeatures[this.gfSelect] ?? 0;
      case COMMON.CONFIG_MSIX_VECTOR:
        return this.configVector;
      case COMMON.NUM_QUEUES:
        return this.queues.length;
      case COMMON.DEVICE_STATUS:
        return this.status;
      case COMMON.CONFIG_GENERATION:
        return this.generation;
      case COMMON.QUEUE_SELECT:
        return this.queueSelect;
      case COMMON.QUEUE_SIZE:
        return q?.size ?? 0;
      case COMMON.QUEUE_MSIX_VECTOR:
        return q?.vector ?? 0;
      case COMMON.QUEUE_ENABLE:
        return q?.enable ?? 0;
      case COMMON.QUEUE_NOTIFY_OFF:
        return q?.notifyOff ?? 0;
      default:
        return 0;
    }
  }
  private write(off: number, width: number, v: number): void {
    if (this.width(off) !== width) throw new Error(`${width}-byte write to common cfg +${off} (natural width ${this.width(off)})`);
    const q = this.q();
    switch (off) {
      case COMMON.DEVICE_FEATURE_SELECT:
        this.dfSelect = v;
        break;
      case COMMON.DRIVER_FEATURE_SELECT:
        this.gfSelect = v;
        break;
      case COMMON.DRIVER_FEATURE:
        if (this.gfSelect < 2) this.driverFeatures[this.gfSelect] = v >>> 0;
        break;
      case COMMON.CONFIG_MSIX_VECTOR:
        this.configVector = v;
        break;
      case COMMON.DEVICE_STATUS:
        this.statusWrites.push(v);
        if (v === 0) {
          // Reset: everything back to defaults (QEMU resets synchronously).
          this.status = 0;
          this.driverFeatures = [0, 0];
          for (const x of this.queues) Object.assign(x, { size: x.max, enable: 0, vector: 0, desc: [0, 0], driver: [0, 0], device: [0, 0] });
          break;
        }
        if (v & STATUS.FEATURES_OK && !(this.status & STATUS.FEATURES_OK)) {
          const f = this.negotiated;
          if ((f & ~this.offered) !== 0n || this.refuse(f)) v &= ~STATUS.FEATURES_OK;
        }
        if (v & STATUS.DRIVER_OK && !(this.status & STATUS.DRIVER_OK)) {
          this.status = v;
          this.onDriverOk();
        }
        this.status = v;
        break;
      case COMMON.QUEUE_SELECT:
        this.queueSelect = v;
        break;
      case COMMON.QUEUE_SIZE:
        if (q) q.size = v;
        break;
      case COMMON.QUEUE_MSIX_VECTOR:
        if (q) q.vector = v;
        break;
      case COMMON.QUEUE_ENABLE:
        if (q) q.enable = v;
        break;
      default:
        if (q && off >= COMMON.QUEUE_DESC && off < COMMON.QUEUE_DEVICE + 8) {
          const field = [q.desc, q.driver, q.device][(off - COMMON.QUEUE_DESC) >> 3]!;
          field[(off >> 2) & 1] = v >>> 0;
        }
    }
  }
  r8(off: number) {
    const v = this.read(off, 1);
    this.log.push({ op: 'r', off, width: 1, v });
    return v;
  }
  r16(off: number) {
    const v = this.read(off, 2);
    this.log.push({ op: 'r', off, width: 2, v });
    return v;
  }
  r32(off: number) {
    const v = this.read(off, 4);
    this.log.push({ op: 'r', off, width: 4, v });
    return v;
  }
  w8(off: number, v: number) {
    this.log.push({ op: 'w', off, width: 1, v });
    this.write(off, 1, v);
  }
  w16(off: number, v: number) {
    this.log.push({ op: 'w', off, width: 2, v });
    this.write(off, 2, v);
  }
  w32(off: number, v: number) {
    this.log.push({ op: 'w', off, width: 4, v });
    this.write(off, 4, v);
  }
}

/** A structure that only records writes (notify) or holds bytes (ISR, device cfg). */
class FakeBytes implements Mmio {
  readonly b: Uint8Array;
  readonly dv: DataView;
  readonly writes: Access[] = [];
  readonly byteLen: number;
  constructor(n: number) {
    this.b = new Uint8Array(n);
    this.dv = new DataView(this.b.buffer);
    this.byteLen = n;
  }
  r8(off: number) {
    return this.b[off]!;
  }
  r16(off: number) {
    return this.dv.getUint16(off, true);
  }
  r32(off: number) {
    return this.dv.getUint32(off, true);
  }
  w8(off: number, v: number) {
    this.writes.push({ op: 'w', off, width: 1, v });
    this.b[off] = v;
  }
  w16(off: number, v: number) {
    this.writes.push({ op: 'w', off, width: 2, v });
    this.dv.setUint16(off, v, true);
  }
  w32(off: number, v: number) {
    this.writes.push({ op: 'w', off, width: 4, v });
    this.dv.setUint32(off, v, true);
  }
}

class FakeDma {
  readonly bytes = new Uint8Array(4 << 20);
  readonly iovaBase = IOVA_BASE;
  private next = 0;
  alloc(byteLen: number, align = 64): DmaChunk {
    const offset = Math.ceil(this.next / align) * align;
    this.next = offset + byteLen;
    if (this.next > this.bytes.length) throw new RangeError('fake dma full');
    return { offset, iova: IOVA_BASE + offset, byteLen, bytes: this.bytes.subarray(offset, offset + byteLen) };
  }
}

const DEFAULT_OFFER =
  bit(VIRTIO_F_VERSION_1) |
  bit(VIRTIO_F_ACCESS_PLATFORM) |
  bit(VIRTIO_NET_F_MAC) |
  bit(VIRTIO_NET_F_STATUS) |
  bit(VIRTIO_NET_F_MRG_RXBUF) |
  bit(0) /* CSUM: never taken */;

function setup(o: { offered?: bigint; packed?: boolean; rx?: number; tx?: number; linkUp?: boolean; queueMax?: number[] } = {}) {
  const common = new FakeCommon(o.offered ?? DEFAULT_OFFER, o.queueMax);
  const notify = new FakeBytes(0x1000);
  const isr = new FakeBytes(0x1000);
  const device = new FakeBytes(0x1000);
  device.b.set([0x52, 0x54, 0x00, 0x12, 0x34, 0x57], 0);
  device.dv.setUint16(6, o.linkUp === false ? 0 : 1, true);
  const transport = new VirtioPciTransport({ common, notify, notifyOffMultiplier: 4, isr, device });
  const dma = new FakeDma();
  const mem = new FlatMemory(dma.bytes, IOVA_BASE);
  const nic = new VirtioNet(transport, dma, {
    rxRing: o.rx ?? 16,
    txRing: o.tx ?? 8,
    ...(o.packed !== undefined ? { packed: o.packed } : {}),
  });
  /** The device half of queue i, built from the registers the driver programmed (like QEMU at DRIVER_OK). */
  const queues: Virtqueue[] = [];
  common.onDriverOk = () => {
    const packed = (common.negotiated & bit(VIRTIO_F_RING_PACKED)) !== 0n;
    for (const q of common.queues.slice(0, 2)) {
      if (!q.enable) continue;
      queues.push(
        packed
          ? new PackedQueue({ size: q.size, descAddr: q.addr(q.desc), driverEventAddr: q.addr(q.driver), deviceEventAddr: q.addr(q.device), eventIdx: false, indirect: false }, mem)
          : new SplitQueue({ size: q.size, descAddr: q.addr(q.desc), availAddr: q.addr(q.driver), usedAddr: q.addr(q.device), eventIdx: false, indirect: false }, mem),
      );
    }
  };
  const chain = new Chain();
  const reader = new ChainReader();
  const writer = new ChainWriter();
  /** Device RX: fills the next RX chain with header + frame. False when the driver posted nothing. */
  const deviceRx = (frame: Uint8Array, hdr = new Uint8Array(NET_HDR_BYTES)): boolean => {
    const q = queues[0]!;
    if (!q.pop(chain)) return false;
    writer.reset(chain);
    if (hdr[10] === 0 && hdr[11] === 0) hdr[10] = 1; // num_buffers = 1
    writer.write(hdr);
    writer.write(frame);
    q.pushUsed(chain.head, writer.written);
    q.flushUsed();
    return true;
  };
  /** Device TX: takes every TX chain, returns [header, frame] of each. */
  const deviceTx = (): { hdr: Uint8Array; frame: Uint8Array }[] => {
    const q = queues[1]!;
    const out: { hdr: Uint8Array; frame: Uint8Array }[] = [];
    while (q.pop(chain)) {
      reader.reset(chain);
      const all = new Uint8Array(chain.readByteLen);
      reader.read(all);
      out.push({ hdr: all.subarray(0, NET_HDR_BYTES), frame: all.subarray(NET_HDR_BYTES) });
      q.pushUsed(chain.head, 0);
    }
    q.flushUsed();
    return out;
  };
  return { common, notify, isr, device, transport, dma, mem, nic, queues, deviceRx, deviceTx };
}

const frame = (len: number, seed: number) => Uint8Array.from({ length: len }, (_, i) => (i * 7 + seed * 13) & 0xff);

// ---- capabilities ----

test('capabilities: common/notify/ISR/device found as QEMU lays them out, PCI-cfg and MSI-X skipped', (t) => {
  const caps = findVirtioCaps(qemuConfig());
  t.deepEqual(caps.common, { capOffset: 0x4c, bar: 4, offset: 0, length: 0x1000 });
  t.deepEqual(caps.isr, { capOffset: 0x5c, bar: 4, offset: 0x1000, length: 0x1000 });
  t.deepEqual(caps.device, { capOffset: 0x6c, bar: 4, offset: 0x2000, length: 0x1000 });
  t.deepEqual(caps.notify, { capOffset: 0x7c, bar: 4, offset: 0x3000, length: 0x1000, notifyOffMultiplier: 4 });
  t.deepEqual(capBars(caps), [4]);
});

test('capabilities: the first of each type wins, reserved types and BARs are ignored, missing ones are named', (t) => {
  const cfg = new FakeConfig().caps([
    [0x09, vcap(1, 7, 0, 0x1000)], // reserved BAR: ignored
    [0x09, vcap(42, 0, 0, 0x1000)], // reserved type: ignored
    [0x09, vcap(1, 2, 0x100, 0x100)],
    [0x09, vcap(1, 4, 0, 0x1000)], // a second common: not used
    [0x09, vcap(3, 2, 0x200, 4)],
    [0x09, vcap(2, 0, 0x400, 0x400, le32(2))],
  ]);
  const caps = findVirtioCaps(cfg);
  t.is(caps.common.bar, 2);
  t.is(caps.common.offset, 0x100);
  t.is(caps.notify.notifyOffMultiplier, 2);
  t.is(caps.device, null);
  t.deepEqual(capBars(caps), [0, 2]);

  const noNotify = new FakeConfig().caps([
    [0x09, vcap(1, 4, 0, 0x1000)],
    [0x09, vcap(3, 4, 0x1000, 0x1000)],
  ]);
  const e = t.throws(() => findVirtioCaps(noNotify), { instanceOf: VirtioPciError });
  t.is(e.code, 'VIRTIO_PCI_CAPS');
  t.regex(e.message, /notification capability .*disable-legacy=on/);
  // A legacy-only device has no vendor caps at all.
  t.throws(() => findVirtioCaps(new FakeConfig().caps([[0x11, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]])), { message: /common configuration/ });
});

test('BarWindow: structure windows over one BAR, natural-width typed accesses at the right bytes', (t) => {
  const ab = new ArrayBuffer(0x4000);
  const caps = findVirtioCaps(qemuConfig());
  const w = windowsFor(caps, new Map([[4, ab]]));
  w.common.w16(COMMON.QUEUE_SELECT, 0x0201);
  w.common.w32(COMMON.QUEUE_DESC, 0xdeadbeef);
  w.notify.w16(8, 1);
  w.isr.w8(0, 3);
  const b = new Uint8Array(ab);
  t.deepEqual([...b.subarray(22, 24)], [0x01, 0x02]);
  t.deepEqual([...b.subarray(32, 36)], [0xef, 0xbe, 0xad, 0xde]);
  t.deepEqual([...b.subarray(0x3008, 0x300a)], [1, 0]);
  t.is(b[0x1000], 3);
  t.throws(() => windowsFor(caps, new Map()), { message: /BAR4 is not mapped/ });
  t.throws(() => new BarWindow(ab, 0x3f00, 0x200), { instanceOf: RangeError });
  // An odd offset (allowed for the ISR) has byte access only.
  const odd = new BarWindow(ab, 0x1001, 4);
  odd.w8(0, 9);
  t.is(b[0x1001], 9);
  t.throws(() => odd.r16(0));
});

// ---- initialization ----

test('init: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK in §3.1.1 order', (t) => {
  const { common, nic } = setup();
  nic.init();
  t.deepEqual(common.statusWrites, [0, 1, 1 | 2, 1 | 2 | 8, 1 | 2 | 8 | 4]);
  t.is(common.status, 0x0f);
  // Negotiated: the four we want that are offered; never CSUM (no offloads), no MRG_RXBUF unless asked.
  t.is(common.negotiated, bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_ACCESS_PLATFORM) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS));
  t.is(nic.features, common.negotiated);
  t.false(nic.packed);
  t.is(Array.from(nic.mac, (x) => x.toString(16).padStart(2, '0')).join(':'), '52:54:00:12:34:57');
  t.true(nic.linkUp);
  t.is(common.configVector, VIRTIO_MSI_NO_VECTOR);
  // Every common-cfg access used the field's natural width (FakeCommon throws otherwise).
  t.true(common.log.length > 20);
  // The features were written after being read, and FEATURES_OK re-read (§3.1.1 step 6).
  const i = (pred: (a: Access) => boolean) => common.log.findIndex(pred);
  const fo = i((a) => a.op === 'w' && a.off === COMMON.DEVICE_STATUS && a.v === 0x0b);
  t.true(i((a) => a.op === 'w' && a.off === COMMON.DRIVER_FEATURE) < fo);
  t.true(common.log.slice(fo + 1).some((a) => a.op === 'r' && a.off === COMMON.DEVICE_STATUS));
});

test('init: queue registers: sizes, NO_VECTOR, area addresses in the DMA pool (IOVAs), enable last; queue 2 untouched', (t) => {
  const { common, nic, dma } = setup({ rx: 16, tx: 8 });
  nic.init();
  const [rx, tx, ctrl] = common.queues;
  t.is(rx!.size, 16);
  t.is(tx!.size, 8);
  for (const q of [rx!, tx!]) {
    t.is(q.enable, 1);
    t.is(q.vector, VIRTIO_MSI_NO_VECTOR);
    for (const a of [q.addr(q.desc), q.addr(q.driver), q.addr(q.device)]) {
      t.true(a >= IOVA_BASE && a < IOVA_BASE + dma.bytes.length, `0x${a.toString(16)} inside the pool`);
    }
    t.is(q.addr(q.desc) % 16, 0);
    t.is(q.addr(q.device) % 4, 0);
  }
  t.is(ctrl!.enable, 0);
  // Per queue: select, size, vector, 3 x 64-bit addresses as 32-bit halves, then queue_enable.
  const writes = common.log.filter((a) => a.op === 'w' && a.off >= COMMON.QUEUE_SELECT).map((a) => a.off);
  const perQueue = [
    COMMON.QUEUE_SELECT,
    COMMON.QUEUE_SIZE,
    COMMON.QUEUE_MSIX_VECTOR,
    COMMON.QUEUE_DESC,
    COMMON.QUEUE_DESC + 4,
    COMMON.QUEUE_DRIVER,
    COMMON.QUEUE_DRIVER + 4,
    COMMON.QUEUE_DEVICE,
    COMMON.QUEUE_DEVICE + 4,
    COMMON.QUEUE_ENABLE,
  ];
  // maxQueueSize() selects each queue once before its setup.
  t.deepEqual(writes, [COMMON.QUEUE_SELECT, ...perQueue, COMMON.QUEUE_SELECT, ...perQueue]);
  t.is(nic.rxSize, 16);
  t.is(nic.txSize, 8);
});

test('init: ring size is capped by the device and rounded to a power of two for split rings', (t) => {
  const { common, nic } = setup({ rx: 1000, tx: 100, queueMax: [256, 128, 64] });
  nic.init();
  t.is(common.queues[0]!.size, 256);
  t.is(common.queues[1]!.size, 64);
});

test('init: missing ACCESS_PLATFORM or VERSION_1 fails with FAILED set; a refused feature set too', (t) => {
  for (const missing of [VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1]) {
    const { common, nic } = setup({ offered: DEFAULT_OFFER & ~bit(missing) });
    const e = t.throws(() => nic.init(), { instanceOf: VirtioPciError });
    t.is(e.code, 'VIRTIO_PCI_FEATURES');
    t.regex(e.message, new RegExp(`required feature bit\\(s\\) ${missing}`));
    t.truthy(common.status & STATUS.FAILED);
    t.falsy(common.status & STATUS.FEATURES_OK);
  }
  const { common, nic } = setup();
  common.refuse = () => true;
  t.throws(() => nic.init(), { message: /FEATURES_OK not kept/ });
  t.truthy(common.status & STATUS.FAILED);
  t.falsy(common.status & STATUS.DRIVER_OK);
});

test('init: packed rings when offered (default) or required (packed: true); split when packed: false', (t) => {
  const offered = DEFAULT_OFFER | bit(VIRTIO_F_RING_PACKED);
  const a = setup({ offered });
  a.nic.init();
  t.true(a.nic.packed);
  t.truthy(a.common.negotiated & bit(VIRTIO_F_RING_PACKED));
  const b = setup({ offered, packed: false });
  b.nic.init();
  t.false(b.nic.packed);
  t.falsy(b.common.negotiated & bit(VIRTIO_F_RING_PACKED));
  const c = setup({ packed: true });
  t.throws(() => c.nic.init(), { message: /required feature bit\(s\) 34/ });
});

test('link status: STATUS bit read from the device cfg; without VIRTIO_NET_F_STATUS the link is assumed up', (t) => {
  const down = setup({ linkUp: false });
  down.nic.init();
  t.false(down.nic.linkUp);
  down.device.dv.setUint16(6, 1, true);
  t.true(down.nic.linkUp);
  const noStatus = setup({ linkUp: false, offered: DEFAULT_OFFER & ~bit(VIRTIO_NET_F_STATUS) });
  noStatus.nic.init();
  t.true(noStatus.nic.linkUp);
});

test('stop: resets the device (status 0)', (t) => {
  const { common, nic } = setup();
  nic.init();
  nic.stop();
  t.is(common.status, 0);
  t.is(common.queues[0]!.enable, 0);
});

// ---- data path against our own device-side engine ----

async function datapath(t: ExecutionContext, packed: boolean) {
  const s = setup({ packed, offered: DEFAULT_OFFER | bit(VIRTIO_F_RING_PACKED), rx: 16, tx: 8 });
  const { nic, notify, deviceRx, deviceTx } = s;
  nic.init();
  t.is(nic.packed, packed);
  t.is(s.queues.length, 2);
  // After DRIVER_OK the RX queue (index 0) was notified at queue_notify_off(0) * 4 = 0.
  t.deepEqual(notify.writes.map((w) => [w.off, w.width, w.v]), [[0, 2, 0]]);

  // TX: 20 frames through an 8-entry ring, in bursts; each with an all-zero 12-byte header.
  const sent: Uint8Array[] = [];
  const got: Uint8Array[] = [];
  for (let i = 0; i < 20; ) {
    let burst = 0;
    while (i < 20 && burst < 5) {
      const f = frame(60 + i * 50, i);
      if (!nic.txFrame(f, f.length)) break;
      sent.push(f);
      i++;
      burst++;
    }
    nic.txFlush();
    for (const x of deviceTx()) {
      t.deepEqual([...x.hdr], new Array(NET_HDR_BYTES).fill(0));
      got.push(x.frame.slice());
    }
  }
  t.deepEqual(got, sent);
  // TX notifications: queue index 1 at queue_notify_off(1) * 4.
  t.true(notify.writes.some((w) => w.off === 4 && w.v === 1 && w.width === 2));
  t.is(nic.txReclaim(), 8, 'all TX buffers back');
  t.is(nic.stats.txPackets, 20);

  // TX ring full: txBuffer() is null until the device uses something.
  for (let i = 0; i < 8; i++) t.true(nic.txFrame(frame(64, i), 64));
  t.is(nic.txBuffer(), null);
  t.false(nic.txFrame(frame(64, 9), 64));
  nic.txFlush();
  t.is(deviceTx().length, 8);
  t.not(nic.txBuffer(), null);

  // RX: 40 frames through a 16-buffer ring; buffers are reposted, so the device never runs dry.
  const rxGot: Uint8Array[] = [];
  const rxSent: Uint8Array[] = [];
  for (let i = 0; i < 40; i++) {
    const f = frame(60 + ((i * 37) % 1455), 100 + i);
    t.true(deviceRx(f), `device found an RX buffer for frame ${i}`);
    rxSent.push(f);
    if (i % 3 === 2) nic.rxBurst((b, len) => (rxGot.push(b.slice(0, len)), 'ok'));
  }
  t.true(nic.rxPending);
  nic.rxBurst((b, len) => (rxGot.push(b.slice(0, len)), 'ok'));
  t.false(nic.rxPending);
  t.deepEqual(rxGot, rxSent);
  t.is(nic.stats.rxPackets, 40);

  // 'busy': the frame stays and comes again first; 'drop' still recycles the buffer.
  deviceRx(frame(100, 1));
  deviceRx(frame(101, 2));
  let calls = 0;
  t.is(nic.rxBurst(() => (calls++, 'busy')), 0);
  t.true(nic.rxPending);
  const lens: number[] = [];
  t.is(nic.rxBurst((_b, len) => (lens.push(len), lens.length === 1 ? 'drop' : 'ok')), 2);
  t.deepEqual(lens, [100, 101]);
  // A runt (shorter than an Ethernet header) is counted, not delivered.
  deviceRx(new Uint8Array(4));
  t.is(nic.rxBurst(() => t.fail('runt delivered') as never), 1);
  t.is(nic.stats.rxErrors, 1);
  // All 16 buffers are posted again: the device can fill 16 without a burst, not 17.
  for (let i = 0; i < 16; i++) t.true(deviceRx(frame(60, i)));
  t.false(deviceRx(frame(60, 99)));
  t.throws(() => nic.txFrame(new Uint8Array(VIRTIO_MAX_FRAME + 1), VIRTIO_MAX_FRAME + 1), { instanceOf: RangeError });
}

test('data path, split rings: TX frames reach the device with a zero header, RX frames reach the handler', (t) => datapath(t, false));
test('data path, packed rings: same over the packed ring driver', (t) => datapath(t, true));

test('MRG_RXBUF when asked: num_buffers 1 frames delivered, a frame spread over 2 buffers dropped whole', (t) => {
  const common = new FakeCommon(DEFAULT_OFFER);
  const notify = new FakeBytes(0x1000);
  const device = new FakeBytes(0x1000);
  const dma = new FakeDma();
  const mem = new FlatMemory(dma.bytes, IOVA_BASE);
  let q: SplitQueue | null = null;
  common.onDriverOk = () => {
    const r = common.queues[0]!;
    q = new SplitQueue({ size: r.size, descAddr: r.addr(r.desc), availAddr: r.addr(r.driver), usedAddr: r.addr(r.device), eventIdx: false, indirect: false }, mem);
  };
  const nic = new VirtioNet(new VirtioPciTransport({ common, notify, notifyOffMultiplier: 4, isr: new FakeBytes(4), device }), dma, {
    rxRing: 8,
    txRing: 8,
    mrgRxbuf: true,
  });
  nic.init();
  t.truthy(common.negotiated & bit(VIRTIO_NET_F_MRG_RXBUF));
  const chain = new Chain();
  const writer = new ChainWriter();
  const put = (numBuffers: number, body: Uint8Array) => {
    t.true(q!.pop(chain));
    writer.reset(chain);
    const hdr = new Uint8Array(NET_HDR_BYTES);
    hdr[10] = numBuffers;
    writer.write(hdr);
    writer.write(body);
    q!.pushUsed(chain.head, writer.written);
  };
  put(2, frame(2036, 1)); // first buffer of a 2-buffer frame
  put(1, frame(500, 2)); // (its continuation: device writes no header there, any bytes will do)
  put(1, frame(300, 3));
  q!.flushUsed();
  const lens: number[] = [];
  nic.rxBurst((_b, len) => (lens.push(len), 'ok'));
  t.deepEqual(lens, [300]);
  t.is(nic.stats.rxErrors, 1);
});

test('port: PCI ids select the driver', (t) => {
  t.is(nicKindFor(0x8086, 0x10d3), 'e1000e');
  t.is(nicKindFor(0x1af4, 0x1041), 'virtio-net');
  t.is(nicKindFor(0x1af4, 0x1000), null, 'transitional virtio-net (legacy interface) is not driven');
});
