/**
 * DMA memory for a VFIO device: ONE shared mapping (memfd, or a file on hugetlbfs), mapped once into the
 * device's IOMMU container at a known IOVA (VFIO_IOMMU_MAP_DMA), then carved into rings and packet buffers
 * at start-up. Nothing is allocated per packet (ixy's rule): drivers keep the views they get here.
 *
 * The IOVA space is ours to choose with type1 (vfio.rst: "the user provides the IOVA"): a fixed base well
 * inside the 39-bit address width of QEMU's intel-iommu. iova(offset) = base + offset, so the driver can
 * translate any pool offset with one addition.
 */
import { closeSync, openSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../../../native/types.ts';

const log = createDebug('vhost:vfio');

export const DEFAULT_IOVA_BASE = 0x10000000;
const PAGE = 4096;

export interface DmaChunk {
  /** Offset in the pool. */
  offset: number;
  /** Device address of byte 0. */
  iova: number;
  byteLen: number;
  /** Bytes of the chunk (a view over the shared mapping). */
  bytes: Uint8Array;
}

export type DmaSys = Pick<NativeBinding, 'memfdCreate' | 'ftruncate' | 'mmap' | 'munmap' | 'close' | 'vfioMapDma' | 'vfioUnmapDma'>;

export interface DmaPoolOptions {
  byteLen: number;
  iovaBase?: number;
  /** A hugetlbfs mount (e.g. /mnt/huge): the pool is a file there (unlinked at once) instead of a memfd. */
  hugetlbfs?: string;
}

export class DmaPool {
  readonly ab: ArrayBuffer;
  readonly bytes: Uint8Array;
  readonly iovaBase: number;
  readonly byteLen: number;
  private next = 0;
  private mappedIn: Fd | null = null;
  private closed = false;

  private constructor(
    private readonly sys: DmaSys,
    private readonly fd: Fd,
    private readonly fdIsNode: boolean,
    byteLen: number,
    iovaBase: number,
  ) {
    this.byteLen = byteLen;
    this.iovaBase = iovaBase;
    this.ab = sys.mmap(fd, 0, byteLen, true);
    this.bytes = new Uint8Array(this.ab);
  }

  /** A pool of `byteLen` bytes (rounded up to whole pages, or 2 MiB on hugetlbfs), not yet mapped for DMA. */
  static create(sys: DmaSys, o: DmaPoolOptions): DmaPool {
    const unit = o.hugetlbfs ? 2 << 20 : PAGE;
    const byteLen = Math.ceil(o.byteLen / unit) * unit;
    const iovaBase = o.iovaBase ?? DEFAULT_IOVA_BASE;
    if (iovaBase % PAGE !== 0) throw new RangeError(`iovaBase 0x${iovaBase.toString(16)} is not page aligned`);
    let fd: Fd;
    let fdIsNode = false;
    if (o.hugetlbfs) {
      const file = path.join(o.hugetlbfs, `vut-dma-${process.pid}-${Date.now()}`);
      fd = openSync(file, 'w+');
      fdIsNode = true;
      unlinkSync(file);
    } else {
      fd = sys.memfdCreate('vut-dma', false);
    }
    try {
      sys.ftruncate(fd, byteLen);
      const pool = new DmaPool(sys, fd, fdIsNode, byteLen, iovaBase);
      log('dma pool %d bytes at iova 0x%s%s', byteLen, iovaBase.toString(16), o.hugetlbfs ? ' (hugetlbfs)' : '');
      return pool;
    } catch (e) {
      if (fdIsNode) closeSync(fd);
      else sys.close(fd);
      throw e;
    }
  }

  /** Maps the whole pool into `container` at iovaBase (once). */
  mapInto(container: Fd): void {
    if (this.mappedIn !== null) throw new Error('DMA pool already mapped');
    this.sys.vfioMapDma(container, this.ab, 0, this.byteLen, BigInt(this.iovaBase));
    this.mappedIn = container;
  }

  /** Carves `byteLen` bytes aligned to `align` (a power of two; descriptor rings want 128, buffers 2048). */
  alloc(byteLen: number, align = 64): DmaChunk {
    const offset = Math.ceil(this.next / align) * align;
    if (offset + byteLen > this.byteLen) {
      throw new RangeError(`DMA pool exhausted: ${byteLen} bytes at ${offset} of ${this.byteLen}`);
    }
    this.next = offset + byteLen;
    return { offset, iova: this.iovaBase + offset, byteLen, bytes: new Uint8Array(this.ab, offset, byteLen) };
  }

  get used(): number {
    return this.next;
  }

  /** Unmaps from the IOMMU (if mapped), then unmaps and closes the memory. Call after the device stopped DMA. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.mappedIn !== null) {
      try {
        this.sys.vfioUnmapDma(this.mappedIn, BigInt(this.iovaBase), this.byteLen);
      } catch (e) {
        log('unmap dma: %s', (e as Error).message);
      }
    }
    this.sys.munmap(this.ab);
    if (this.fdIsNode) closeSync(this.fd);
    else this.sys.close(this.fd);
  }
}

/** Number of bytes a pool needs for the given pieces, each aligned as alloc() would. */
export function poolBytes(pieces: readonly { byteLen: number; align: number }[]): number {
  let at = 0;
  for (const p of pieces) at = Math.ceil(at / p.align) * p.align + p.byteLen;
  return at;
}
