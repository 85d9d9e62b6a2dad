/**
 * The virtio PCI transport from the DRIVER side (virtio v1.2 §4.1), for a modern device (disable-legacy=on)
 * that we drive from user space through VFIO: the vendor capabilities that locate the structures (§4.1.4),
 * the common configuration (§4.1.4.3: status, feature negotiation, queue registers), queue notification
 * (§4.1.4.4), the ISR (§4.1.4.5) and the device-specific configuration (§4.1.4.6).
 *
 * Pure logic over `Mmio` windows (the mmap()ed BARs in production, fake register files in unit tests).
 *
 * Access widths matter: §4.1.3.1 "the driver MUST access each field using the natural access method",
 * and QEMU's handlers decode by offset, so a 16-bit field written as two bytes would be lost. Windows
 * therefore use Uint8/16/32Array element accesses (one load/store of that width); DataView is avoided
 * because V8 implements its multi-byte accessors with byte loads.
 */
import createDebug from 'debug';
import { PCI_CAP_ID_VNDR, listCapabilities, type ConfigSpace } from './pci.ts';

const log = createDebug('vhost:vfio:virtio');

export type VirtioPciErrorCode = 'VIRTIO_PCI_CAPS' | 'VIRTIO_PCI_FEATURES' | 'VIRTIO_PCI_QUEUE' | 'VIRTIO_PCI_RESET';

export class VirtioPciError extends Error {
  readonly code: VirtioPciErrorCode;
  constructor(code: VirtioPciErrorCode, message: string) {
    super(message);
    this.name = 'VirtioPciError';
    this.code = code;
  }
}

/** §4.1.4 cfg_type values. */
export const VIRTIO_PCI_CAP = {
  COMMON: 1,
  NOTIFY: 2,
  ISR: 3,
  DEVICE: 4,
  PCI_CFG: 5,
  SHARED_MEMORY: 8,
  VENDOR: 9,
} as const;

/** Device status bits (§2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Common configuration layout (§4.1.4.3, struct virtio_pci_common_cfg). */
export const COMMON = {
  DEVICE_FEATURE_SELECT: 0,
  DEVICE_FEATURE: 4,
  DRIVER_FEATURE_SELECT: 8,
  DRIVER_FEATURE: 12,
  CONFIG_MSIX_VECTOR: 16,
  NUM_QUEUES: 18,
  DEVICE_STATUS: 20,
  CONFIG_GENERATION: 21,
  QUEUE_SELECT: 22,
  QUEUE_SIZE: 24,
  QUEUE_MSIX_VECTOR: 26,
  QUEUE_ENABLE: 28,
  QUEUE_NOTIFY_OFF: 30,
  QUEUE_DESC: 32,
  QUEUE_DRIVER: 40,
  QUEUE_DEVICE: 48,
  /** Minimum length of the common structure the driver needs (up to queue_device). */
  MIN_LENGTH: 56,
} as const;

/** §4.1.5.1.2: "no vector" for config_msix_vector / queue_msix_vector. */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** Register access to one structure inside a BAR (offsets relative to the structure). */
export interface Mmio {
  readonly byteLen: number;
  r8(off: number): number;
  r16(off: number): number;
  r32(off: number): number;
  w8(off: number, v: number): void;
  w16(off: number, v: number): void;
  w32(off: number, v: number): void;
}

/**
 * A window [offset, offset + length) of an mmap()ed BAR. Wider views exist only when the window start is
 * aligned for them (§4.1.4: common and device cfg are 4-aligned, notify 2-aligned, the ISR need not be).
 */
export class BarWindow implements Mmio {
  readonly byteLen: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array | null;
  private readonly u32: Uint32Array | null;
  constructor(ab: ArrayBuffer, offset: number, length: number) {
    if (offset < 0 || length <= 0 || offset + length > ab.byteLength) {
      throw new RangeError(`window ${offset}+${length} outside a ${ab.byteLength}-byte BAR`);
    }
    this.byteLen = length;
    this.u8 = new Uint8Array(ab, offset, length);
    this.u16 = offset % 2 === 0 ? new Uint16Array(ab, offset, length >>> 1) : null;
    this.u32 = offset % 4 === 0 ? new Uint32Array(ab, offset, length >>> 2) : null;
  }
  r8(off: number): number {
    return this.u8[off]!;
  }
  r16(off: number): number {
    return this.u16![off >>> 1]!;
  }
  r32(off: number): number {
    return this.u32![off >>> 2]!;
  }
  w8(off: number, v: number): void {
    this.u8[off] = v;
  }
  w16(off: number, v: number): void {
    this.u16![off >>> 1] = v;
  }
  w32(off: number, v: number): void {
    this.u32![off >>> 2] = v;
  }
}

/** Where one structure lives (§4.1.4 struct virtio_pci_cap). */
export interface VirtioCapLoc {
  /** Offset of the capability in config space (for messages). */
  capOffset: number;
  bar: number;
  offset: number;
  length: number;
}

export interface VirtioPciCaps {
  common: VirtioCapLoc;
  notify: VirtioCapLoc & { notifyOffMultiplier: number };
  isr: VirtioCapLoc;
  /** Absent for devices without device-specific configuration. */
  device: VirtioCapLoc | null;
}

/**
 * Walks the vendor-specific capabilities (§4.1.4). The layout is cap_vndr, cap_next, cap_len, cfg_type,
 * bar, id, padding[2], offset (le32), length (le32), plus notify_off_multiplier (le32) for NOTIFY.
 * §4.1.4.1: "The driver SHOULD use the first instance of each virtio structure type it can support" and
 * "MUST ignore any vendor-specific capability structure which has a reserved cfg_type value" and any
 * whose BAR is reserved (bar > 5).
 */
export function findVirtioCaps(cfg: ConfigSpace): VirtioPciCaps {
  const found = new Map<number, VirtioCapLoc & { notifyOffMultiplier: number }>();
  for (const cap of listCapabilities(cfg)) {
    if (cap.id !== PCI_CAP_ID_VNDR) continue;
    const at = cap.offset;
    const capLen = cfg.cfgRead(at + 2, 1);
    const type = cfg.cfgRead(at + 3, 1);
    const bar = cfg.cfgRead(at + 4, 1);
    if (capLen < 16 || bar > 5 || found.has(type)) continue;
    if (type < VIRTIO_PCI_CAP.COMMON || type > VIRTIO_PCI_CAP.DEVICE) continue; // PCI_CFG, SHARED_MEMORY, ...: not used
    if (type === VIRTIO_PCI_CAP.NOTIFY && capLen < 20) continue;
    found.set(type, {
      capOffset: at,
      bar,
      offset: cfg.cfgRead(at + 8, 4) >>> 0,
      length: cfg.cfgRead(at + 12, 4) >>> 0,
      notifyOffMultiplier: type === VIRTIO_PCI_CAP.NOTIFY ? cfg.cfgRead(at + 16, 4) >>> 0 : 0,
    });
  }
  const need = (type: number, name: string) => {
    const c = found.get(type);
    if (!c) {
      throw new VirtioPciError(
        'VIRTIO_PCI_CAPS',
        `no virtio ${name} capability (cfg_type ${type}): not a modern virtio PCI device (use disable-legacy=on or a non-transitional device)`,
      );
    }
    return c;
  };
  const common = need(VIRTIO_PCI_CAP.COMMON, 'common configuration');
  const notify = need(VIRTIO_PCI_CAP.NOTIFY, 'notification');
  const isr = need(VIRTIO_PCI_CAP.ISR, 'ISR');
  if (common.length < COMMON.MIN_LENGTH) {
    throw new VirtioPciError('VIRTIO_PCI_CAPS', `common configuration of ${common.length} bytes (need ${COMMON.MIN_LENGTH})`);
  }
  if (common.offset % 4 !== 0) throw new VirtioPciError('VIRTIO_PCI_CAPS', `common configuration at unaligned offset 0x${common.offset.toString(16)}`);
  // §4.1.4.4: the multiplier is 0 or an even power of two... at least even; the offset 2-aligned.
  if (notify.offset % 2 !== 0 || (notify.notifyOffMultiplier !== 0 && notify.notifyOffMultiplier % 2 !== 0)) {
    throw new VirtioPciError('VIRTIO_PCI_CAPS', `bad notify capability (offset 0x${notify.offset.toString(16)}, multiplier ${notify.notifyOffMultiplier})`);
  }
  const { notifyOffMultiplier: _c, ...c } = common;
  const { notifyOffMultiplier: _i, ...i } = isr;
  const dev = found.get(VIRTIO_PCI_CAP.DEVICE);
  let device: VirtioCapLoc | null = null;
  if (dev) {
    const { notifyOffMultiplier: _d, ...d } = dev;
    device = d;
  }
  return { common: c, notify, isr: i, device };
}

/** The BARs the capabilities point into (to be mapped). */
export function capBars(caps: VirtioPciCaps): number[] {
  const s = new Set([caps.common.bar, caps.notify.bar, caps.isr.bar]);
  if (caps.device) s.add(caps.device.bar);
  return [...s].sort();
}

export interface VirtioQueueAddrs {
  /** Descriptor area, driver area (avail ring / driver event suppression), device area (used ring / device event suppression). */
  desc: number;
  driver: number;
  device: number;
}

export interface VirtioPciWindows {
  common: Mmio;
  /** The whole notify structure; queue q is notified at queue_notify_off(q) * multiplier inside it. */
  notify: Mmio;
  notifyOffMultiplier: number;
  isr: Mmio;
  device: Mmio | null;
}

/** Windows over mapped BARs (`bars[i]` = the ArrayBuffer of BAR i) for the located structures. */
export function windowsFor(caps: VirtioPciCaps, bars: ReadonlyMap<number, ArrayBuffer>): VirtioPciWindows {
  const win = (c: VirtioCapLoc) => {
    const ab = bars.get(c.bar);
    if (!ab) throw new VirtioPciError('VIRTIO_PCI_CAPS', `BAR${c.bar} is not mapped`);
    // QEMU sizes each structure's region generously (4 KiB); never look past the BAR.
    return new BarWindow(ab, c.offset, Math.min(c.length, ab.byteLength - c.offset));
  };
  return {
    common: win(caps.common),
    notify: win(caps.notify),
    notifyOffMultiplier: caps.notify.notifyOffMultiplier,
    isr: win(caps.isr),
    device: caps.device ? win(caps.device) : null,
  };
}

/** One enabled queue's notification address (an offset into the notify window). */
export interface VirtioQueueNotify {
  index: number;
  size: number;
  notifyAt: number;
}

/**
 * The driver side of the common configuration. Methods follow §3.1.1 "Driver Requirements: Device
 * Initialization" in order: reset(), addStatus(ACKNOWLEDGE), addStatus(DRIVER), negotiate(),
 * setupQueue()..., addStatus(DRIVER_OK).
 */
export class VirtioPciTransport {
  constructor(
    readonly w: VirtioPciWindows,
    private readonly timeoutMs = 500,
  ) {}

  get status(): number {
    return this.w.common.r8(COMMON.DEVICE_STATUS);
  }

  /** §4.1.4.3.2: write 0, then wait until device_status reads back 0 (the reset is complete). */
  reset(): void {
    this.w.common.w8(COMMON.DEVICE_STATUS, 0);
    const end = Date.now() + this.timeoutMs;
    while (this.status !== 0) {
      if (Date.now() > end) throw new VirtioPciError('VIRTIO_PCI_RESET', `device_status still 0x${this.status.toString(16)} after reset`);
    }
  }

  /** Sets `bits` on top of the current status (§3.1.1 steps 2, 3, 5, 8). */
  addStatus(bits: number): void {
    this.w.common.w8(COMMON.DEVICE_STATUS, this.status | bits);
  }

  /** §3.1.1 step 5/6 failure path: FAILED tells the device the driver gave up. */
  fail(): void {
    try {
      this.addStatus(STATUS.FAILED);
    } catch {
      /* best effort */
    }
  }

  get numQueues(): number {
    return this.w.common.r16(COMMON.NUM_QUEUES);
  }

  /** All 64 device feature bits (two 32-bit windows through device_feature_select). */
  deviceFeatures(): bigint {
    const c = this.w.common;
    c.w32(COMMON.DEVICE_FEATURE_SELECT, 0);
    const lo = c.r32(COMMON.DEVICE_FEATURE) >>> 0;
    c.w32(COMMON.DEVICE_FEATURE_SELECT, 1);
    const hi = c.r32(COMMON.DEVICE_FEATURE) >>> 0;
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  writeDriverFeatures(f: bigint): void {
    const c = this.w.common;
    c.w32(COMMON.DRIVER_FEATURE_SELECT, 0);
    c.w32(COMMON.DRIVER_FEATURE, Number(f & 0xffffffffn));
    c.w32(COMMON.DRIVER_FEATURE_SELECT, 1);
    c.w32(COMMON.DRIVER_FEATURE, Number((f >> 32n) & 0xffffffffn));
  }

  /**
   * §3.1.1 steps 4-6: accepts `wanted & offered`, throws VIRTIO_PCI_FEATURES (after setting FAILED) when a
   * `required` bit is not offered or the device does not keep FEATURES_OK. Returns the negotiated set.
   */
  negotiate(wanted: bigint, required: bigint): bigint {
    const offered = this.deviceFeatures();
    const missing = required & ~offered;
    if (missing !== 0n) {
      this.fail();
      throw new VirtioPciError(
        'VIRTIO_PCI_FEATURES',
        `device does not offer required feature bit(s) ${bitList(missing)} (offered 0x${offered.toString(16)})`,
      );
    }
    const accepted = wanted & offered;
    this.writeDriverFeatures(accepted);
    this.addStatus(STATUS.FEATURES_OK);
    // §3.1.1 step 6: re-read; a device that cannot work with this subset clears FEATURES_OK.
    if ((this.status & STATUS.FEATURES_OK) === 0) {
      this.fail();
      throw new VirtioPciError('VIRTIO_PCI_FEATURES', `device refused features 0x${accepted.toString(16)} (FEATURES_OK not kept)`);
    }
    log('features: offered 0x%s, accepted 0x%s', offered.toString(16), accepted.toString(16));
    return accepted;
  }

  /** queue_size of queue `index` as the device offers it (0 = the queue does not exist). */
  maxQueueSize(index: number): number {
    this.w.common.w16(COMMON.QUEUE_SELECT, index);
    return this.w.common.r16(COMMON.QUEUE_SIZE);
  }

  /**
   * §4.1.5.1.3 "Virtqueue Configuration": select, size, no MSI-X vector (polling), the three area
   * addresses (64-bit fields as two 32-bit writes, low half first), then queue_enable = 1.
   */
  setupQueue(index: number, size: number, a: VirtioQueueAddrs): VirtioQueueNotify {
    const c = this.w.common;
    c.w16(COMMON.QUEUE_SELECT, index);
    const max = c.r16(COMMON.QUEUE_SIZE);
    if (max === 0) throw new VirtioPciError('VIRTIO_PCI_QUEUE', `queue ${index} does not exist (queue_size 0)`);
    if (size > max) throw new VirtioPciError('VIRTIO_PCI_QUEUE', `queue ${index}: size ${size} exceeds the device's ${max}`);
    if (c.r16(COMMON.QUEUE_ENABLE) !== 0) throw new VirtioPciError('VIRTIO_PCI_QUEUE', `queue ${index} is already enabled`);
    c.w16(COMMON.QUEUE_SIZE, size);
    c.w16(COMMON.QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
    const w64 = (off: number, v: number) => {
      c.w32(off, v >>> 0);
      c.w32(off + 4, Math.floor(v / 2 ** 32));
    };
    w64(COMMON.QUEUE_DESC, a.desc);
    w64(COMMON.QUEUE_DRIVER, a.driver);
    w64(COMMON.QUEUE_DEVICE, a.device);
    const notifyOff = c.r16(COMMON.QUEUE_NOTIFY_OFF);
    const notifyAt = notifyOff * this.w.notifyOffMultiplier;
    // §4.1.4.4: "cap.offset + queue_notify_off * notify_off_multiplier" must lie inside the structure.
    if (notifyAt + 2 > this.w.notify.byteLen) {
      throw new VirtioPciError('VIRTIO_PCI_QUEUE', `queue ${index}: notify offset ${notifyAt} outside the ${this.w.notify.byteLen}-byte notify structure`);
    }
    c.w16(COMMON.QUEUE_ENABLE, 1);
    log('queue %d: size %d, desc 0x%s driver 0x%s device 0x%s, notify at +%d', index, size, a.desc.toString(16), a.driver.toString(16), a.device.toString(16), notifyAt);
    return { index, size, notifyAt };
  }

  /** config_msix_vector = NO_VECTOR: configuration changes are polled (link status), not signalled. */
  noConfigVector(): void {
    this.w.common.w16(COMMON.CONFIG_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
  }

  /** §4.1.4.4.1 without VIRTIO_F_NOTIFICATION_DATA: a 16-bit write of the queue index to its notify address. */
  notify(q: VirtioQueueNotify): void {
    this.w.notify.w16(q.notifyAt, q.index);
  }

  /** §4.1.4.5: reading the ISR clears it (bit 0 queue interrupt, bit 1 configuration change). */
  readIsr(): number {
    return this.w.isr.r8(0);
  }

  /**
   * Reads device-specific configuration consistently (§2.5.1, §4.1.4.3.1 config_generation): `read` runs
   * again until the generation is the same before and after it.
   */
  readDeviceConfig<T>(read: (dev: Mmio) => T): T {
    const dev = this.w.device;
    if (!dev) throw new VirtioPciError('VIRTIO_PCI_CAPS', 'the device has no device-specific configuration');
    for (let tries = 0; ; tries++) {
      const g0 = this.w.common.r8(COMMON.CONFIG_GENERATION);
      const v = read(dev);
      if (this.w.common.r8(COMMON.CONFIG_GENERATION) === g0 || tries > 100) return v;
    }
  }
}

function bitList(f: bigint): string {
  const out: number[] = [];
  for (let b = 0; b < 64; b++) if ((f >> BigInt(b)) & 1n) out.push(b);
  return out.join(',');
}
