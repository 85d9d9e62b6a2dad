/**
 * Opening a PCI device through VFIO (Documentation/driver-api/vfio.rst "VFIO Usage Example"): sysfs checks
 * first, so the user gets a clear reason instead of a bare errno, then container -> group -> type1 IOMMU ->
 * device fd. One container per device (ixy's model): the DMA pool of that device is mapped into it.
 *
 * Error codes (VfioError.code):
 *   VFIO_BAD_ADDRESS        the PCI address is not DDDD:BB:DD.F (or BB:DD.F)
 *   VFIO_NO_DEVICE          no such device in /sys/bus/pci/devices
 *   VFIO_NOT_BOUND          the device is bound to another driver (or none): run qemu-scripts/vfio-bind.sh
 *   VFIO_NO_IOMMU           no IOMMU group / no type1 IOMMU (boot with intel_iommu=on, QEMU -device intel-iommu)
 *   VFIO_UNAVAILABLE        /dev/vfio/vfio missing (vfio-pci not loaded) or the API version is not ours
 *   VFIO_GROUP_NOT_VIABLE   another device of the IOMMU group is bound to a host driver
 *   VFIO_DEVICE             a VFIO ioctl on the group/device failed (cause: the SysError)
 */
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import createDebug from 'debug';
import type { Fd, NativeBinding, VfioRegionInfo } from '../../../../native/types.ts';
import { VFIO_API_VERSION, VFIO_EXT, VFIO_GROUP_FLAGS, VFIO_PCI_REGION, VFIO_REGION_FLAG } from '../../../../native/types.ts';

const log = createDebug('vhost:vfio');

export type VfioErrorCode =
  | 'VFIO_BAD_ADDRESS'
  | 'VFIO_NO_DEVICE'
  | 'VFIO_NOT_BOUND'
  | 'VFIO_NO_IOMMU'
  | 'VFIO_UNAVAILABLE'
  | 'VFIO_GROUP_NOT_VIABLE'
  | 'VFIO_DEVICE'
  | 'VFIO_UNSUPPORTED';

export class VfioError extends Error {
  readonly code: VfioErrorCode;
  constructor(code: VfioErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VfioError';
    this.code = code;
  }
}

/** The VFIO calls of the addon (a fake in unit tests). */
export type VfioSys = Pick<
  NativeBinding,
  | 'vfioOpenContainer'
  | 'vfioOpenGroup'
  | 'vfioGetApiVersion'
  | 'vfioCheckExtension'
  | 'vfioGroupGetStatus'
  | 'vfioGroupSetContainer'
  | 'vfioGroupUnsetContainer'
  | 'vfioSetIommu'
  | 'vfioGroupGetDeviceFd'
  | 'vfioDeviceGetInfo'
  | 'vfioDeviceGetRegionInfo'
  | 'vfioDeviceGetIrqInfo'
  | 'vfioDeviceSetIrqs'
  | 'vfioDeviceReset'
  | 'vfioMapDma'
  | 'vfioUnmapDma'
  | 'pread'
  | 'pwrite'
  | 'mmap'
  | 'munmap'
  | 'close'
>;

/** "0000:00:03.0", also accepting the short "00:03.0" (domain 0). Throws VFIO_BAD_ADDRESS. */
export function normalizePciAddress(s: string): string {
  const m = /^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$/.exec(s);
  if (!m) throw new VfioError('VFIO_BAD_ADDRESS', `bad PCI address '${s}': expected DDDD:BB:DD.F, e.g. 0000:00:03.0`);
  return `${(m[1] ?? '0000').toLowerCase()}:${m[2]!.toLowerCase()}:${m[3]!.toLowerCase()}.${m[4]}`;
}

export interface PciSysfsInfo {
  bdf: string;
  vendor: number;
  device: number;
  /** Driver the device is bound to, or null. */
  driver: string | null;
  /** IOMMU group number, or null when the device has none (no IOMMU). */
  group: number | null;
}

function readHex(file: string): number {
  return parseInt(readFileSync(file, 'utf8').trim(), 16);
}

function linkBase(p: string): string | null {
  try {
    return path.basename(readlinkSync(p));
  } catch {
    return null;
  }
}

/** What sysfs says about the device (no VFIO calls). `sysfs` is injectable for tests. */
export function pciSysfsInfo(address: string, sysfs = '/sys'): PciSysfsInfo {
  const bdf = normalizePciAddress(address);
  const dir = path.join(sysfs, 'bus/pci/devices', bdf);
  if (!existsSync(dir)) throw new VfioError('VFIO_NO_DEVICE', `no PCI device ${bdf} (${dir} does not exist)`);
  const g = linkBase(path.join(dir, 'iommu_group'));
  return {
    bdf,
    vendor: readHex(path.join(dir, 'vendor')),
    device: readHex(path.join(dir, 'device')),
    driver: linkBase(path.join(dir, 'driver')),
    group: g === null ? null : Number(g),
  };
}

/** Checks that `address` can be opened through VFIO; returns its sysfs info or throws the VfioError that says why not. */
export function checkVfioReady(address: string, sysfs = '/sys'): PciSysfsInfo & { group: number } {
  const info = pciSysfsInfo(address, sysfs);
  if (info.group === null) {
    throw new VfioError(
      'VFIO_NO_IOMMU',
      `${info.bdf} has no IOMMU group: VFIO needs an IOMMU (boot the kernel with intel_iommu=on; under QEMU add ` +
        `-device intel-iommu before the NIC); no-IOMMU mode is not supported`,
    );
  }
  if (info.driver !== 'vfio-pci') {
    throw new VfioError(
      'VFIO_NOT_BOUND',
      `${info.bdf} is ${info.driver ? `bound to ${info.driver}` : 'not bound to any driver'}, not vfio-pci: ` +
        `run qemu-scripts/vfio-bind.sh ${info.bdf}`,
    );
  }
  return info as PciSysfsInfo & { group: number };
}

/** Devices of an IOMMU group with their drivers (for the "not viable" message). */
export function groupMembers(group: number, sysfs = '/sys'): { bdf: string; driver: string | null }[] {
  const dir = path.join(sysfs, 'kernel/iommu_groups', String(group), 'devices');
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.sort().map((bdf) => ({ bdf, driver: linkBase(path.join(sysfs, 'bus/pci/devices', bdf, 'driver')) }));
}

export interface MappedBar {
  index: number;
  region: VfioRegionInfo;
  ab: ArrayBuffer;
}

/**
 * One PCI device opened through VFIO, with its own container. `close()` releases everything in reverse
 * order (BAR mappings, DMA mappings are the pool's business, device fd, group, container).
 */
export class VfioDevice {
  readonly numRegions: number;
  readonly numIrqs: number;
  private readonly bars: MappedBar[] = [];
  private readonly configRegion: VfioRegionInfo;
  private readonly scratch = new Uint8Array(4);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private closed = false;

  private constructor(
    readonly sys: VfioSys,
    readonly info: PciSysfsInfo & { group: number },
    readonly container: Fd,
    readonly groupFd: Fd,
    readonly fd: Fd,
  ) {
    const di = sys.vfioDeviceGetInfo(fd);
    this.numRegions = di.numRegions;
    this.numIrqs = di.numIrqs;
    if ((di.flags & 2) === 0) throw new VfioError('VFIO_UNSUPPORTED', `${info.bdf}: not a vfio-pci device (flags 0x${di.flags.toString(16)})`);
    this.configRegion = sys.vfioDeviceGetRegionInfo(fd, VFIO_PCI_REGION.config);
    log('%s: %d regions, %d irqs, config space %d bytes', info.bdf, this.numRegions, this.numIrqs, this.configRegion.size);
  }

  get bdf(): string {
    return this.info.bdf;
  }

  /** The vfio.rst sequence, with every failure turned into a VfioError that says what to do. */
  static open(sys: VfioSys, address: string, sysfs = '/sys'): VfioDevice {
    const info = checkVfioReady(address, sysfs);
    let container: Fd;
    try {
      container = sys.vfioOpenContainer();
    } catch (e) {
      throw new VfioError('VFIO_UNAVAILABLE', `cannot open /dev/vfio/vfio (is the vfio module loaded?): ${(e as Error).message}`, { cause: e });
    }
    const fds: Fd[] = [container];
    const fail = (err: VfioError): never => {
      for (const fd of fds.reverse()) {
        try {
          sys.close(fd);
        } catch {
          /* closing is best effort on the error path */
        }
      }
      throw err;
    };
    const api = sys.vfioGetApiVersion(container);
    if (api !== VFIO_API_VERSION) fail(new VfioError('VFIO_UNAVAILABLE', `unknown VFIO API version ${api}`));
    if (sys.vfioCheckExtension(container, VFIO_EXT.type1v2) <= 0) {
      fail(new VfioError('VFIO_NO_IOMMU', 'the VFIO container offers no type1v2 IOMMU (vfio_iommu_type1 not loaded, or no IOMMU)'));
    }
    let group = -1;
    try {
      group = sys.vfioOpenGroup(info.group);
    } catch (e) {
      fail(new VfioError('VFIO_DEVICE', `cannot open /dev/vfio/${info.group} for ${info.bdf}: ${(e as Error).message}`, { cause: e }));
    }
    fds.push(group);
    const status = sys.vfioGroupGetStatus(group);
    if ((status & VFIO_GROUP_FLAGS.viable) === 0) {
      const others = groupMembers(info.group, sysfs)
        .filter((m) => m.driver !== 'vfio-pci' && m.driver !== 'pcieport' && m.driver !== null)
        .map((m) => `${m.bdf} (${m.driver})`);
      fail(
        new VfioError(
          'VFIO_GROUP_NOT_VIABLE',
          `IOMMU group ${info.group} of ${info.bdf} is not viable: every device of the group must be bound to vfio-pci ` +
            `(or no driver)${others.length ? `; still bound: ${others.join(', ')}` : ''}`,
        ),
      );
    }
    try {
      sys.vfioGroupSetContainer(group, container);
      sys.vfioSetIommu(container, VFIO_EXT.type1v2);
    } catch (e) {
      const err = e as Error & { code?: string };
      // EPERM from SET_IOMMU: type1 refuses a platform without interrupt remapping (allow_unsafe_interrupts).
      fail(
        new VfioError(
          err.code === 'EPERM' ? 'VFIO_NO_IOMMU' : 'VFIO_DEVICE',
          `cannot attach group ${info.group} to a type1v2 container: ${err.message}` +
            (err.code === 'EPERM' ? ' (no interrupt remapping? QEMU: -device intel-iommu,intremap=on)' : ''),
          { cause: e },
        ),
      );
    }
    let fd = -1;
    try {
      fd = sys.vfioGroupGetDeviceFd(group, info.bdf);
    } catch (e) {
      fail(new VfioError('VFIO_DEVICE', `cannot get the VFIO device fd of ${info.bdf}: ${(e as Error).message}`, { cause: e }));
    }
    fds.push(fd);
    try {
      return new VfioDevice(sys, info, container, group, fd);
    } catch (e) {
      return fail(e instanceof VfioError ? e : new VfioError('VFIO_DEVICE', (e as Error).message, { cause: e }));
    }
  }

  // ---- config space (pread/pwrite on region 7; little endian, PCI Local Bus 3.0 §6.1) ----

  cfgRead(offset: number, width: 1 | 2 | 4): number {
    const n = this.sys.pread(this.fd, this.scratch, 0, width, this.configRegion.offset + offset);
    if (n !== width) throw new VfioError('VFIO_DEVICE', `${this.bdf}: short config read at 0x${offset.toString(16)}`);
    return width === 1 ? this.scratch[0]! : width === 2 ? this.scratchView.getUint16(0, true) : this.scratchView.getUint32(0, true);
  }

  cfgWrite(offset: number, width: 1 | 2 | 4, value: number): void {
    if (width === 1) this.scratch[0] = value;
    else if (width === 2) this.scratchView.setUint16(0, value, true);
    else this.scratchView.setUint32(0, value >>> 0, true);
    const n = this.sys.pwrite(this.fd, this.scratch, 0, width, this.configRegion.offset + offset);
    if (n !== width) throw new VfioError('VFIO_DEVICE', `${this.bdf}: short config write at 0x${offset.toString(16)}`);
  }

  // ---- BARs ----

  /** mmap()s BAR `index` (once); throws VFIO_UNSUPPORTED when the BAR is absent or not mappable. */
  mapBar(index: number): MappedBar {
    const have = this.bars.find((b) => b.index === index);
    if (have) return have;
    const region = this.sys.vfioDeviceGetRegionInfo(this.fd, index);
    if (region.size === 0) throw new VfioError('VFIO_UNSUPPORTED', `${this.bdf}: BAR${index} is not implemented`);
    if ((region.flags & VFIO_REGION_FLAG.mmap) === 0) {
      throw new VfioError('VFIO_UNSUPPORTED', `${this.bdf}: BAR${index} cannot be mmap()ed (flags 0x${region.flags.toString(16)})`);
    }
    const ab = this.sys.mmap(this.fd, region.offset, region.size, true);
    const bar = { index, region, ab };
    this.bars.push(bar);
    log('%s: BAR%d mapped, %d bytes', this.bdf, index, region.size);
    return bar;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const b of this.bars.splice(0)) this.sys.munmap(b.ab);
    this.sys.close(this.fd);
    try {
      this.sys.vfioGroupUnsetContainer(this.groupFd);
    } catch {
      /* the container goes away with its last group anyway */
    }
    this.sys.close(this.groupFd);
    this.sys.close(this.container);
  }
}
