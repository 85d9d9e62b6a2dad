/**
 * Virtqueue errors. Almost all of them are guest ring errors (family (b) in spec-notes/decisions.md,
 * D13): the queue that met one is marked broken (sticky) and the others go on. `SplitQueue.pop()`
 * and the notification/drain methods never throw them for guest-caused problems; they are thrown only
 * by constructors and explicit memory helpers (`readU32`, `ringView`, `RegionMemory.addRegion`...),
 * where the caller is host code that asked for something impossible.
 */

export type VirtqErrorCode =
  /** An address (ring, descriptor buffer, indirect table) is not mapped, is read-only for a device write, or is >= 2^53. */
  | 'VQ_UNMAPPED'
  /** The available ring names a head index >= queue size. */
  | 'VQ_BAD_HEAD'
  /** A descriptor's `next` is >= the size of the table it lives in (ring or indirect table). */
  | 'VQ_BAD_NEXT'
  /** A chain has more descriptors than its table (the ttl guard): the driver built a loop. */
  | 'VQ_LOOP'
  /** Total chain length above 2^32 bytes (virtio v1.2 2.7.5.2). */
  | 'VQ_CHAIN_TOO_LONG'
  /** VIRTQ_DESC_F_INDIRECT inside an indirect table (virtio v1.2 2.7.5.3.1). */
  | 'VQ_NESTED_INDIRECT'
  /** Indirect table length zero, not a multiple of 16, above the cap; or INDIRECT together with NEXT. */
  | 'VQ_BAD_INDIRECT'
  /** VIRTQ_DESC_F_INDIRECT used although VIRTIO_F_INDIRECT_DESC was not negotiated. */
  | 'VQ_INDIRECT_NOT_NEGOTIATED'
  /**
   * Split: avail.idx is more than the queue size ahead of the device's last_avail_idx. Packed: the
   * driver made more descriptors available than the ring holds (in flight past the used index).
   */
  | 'VQ_AVAIL_JUMP'
  /** A device-readable descriptor after a device-writable one (virtio v1.2 2.7.4.2). */
  | 'VQ_WRITE_BEFORE_READ'
  /** A ring is misaligned, not contiguous in one memory region, or not viewable with the needed alignment. */
  | 'VQ_RING_LAYOUT'
  /**
   * Packed ring: a buffer id made available while the same id is still in flight (virtio v1.2
   * 2.8.21.1: the driver takes "the next free buffer id"), so used elements could not be attributed.
   */
  | 'VQ_BAD_ID'
  /** Queue size is zero, above 32768, or (split only) not a power of two (virtio v1.2 2.7, 2.8). */
  | 'VQ_BAD_SIZE'
  /** RegionMemory: a region overlaps an existing one in guest-physical space. */
  | 'VQ_REGION_OVERLAP'
  /** RegionMemory: a region description is malformed (negative, zero length, view too short, past 2^53). */
  | 'VQ_BAD_REGION'
  /**
   * Inflight region (vhost-user.rst "Inflight I/O tracking") that cannot be used for this queue: too
   * short or misaligned, unknown version or feature flags, desc_num not the queue size, wrong layout.
   */
  | 'VQ_INFLIGHT_REGION'
  /**
   * Inflight region whose content is inconsistent: an index outside the queue, a loop or an overlap
   * in a `next` list, a batch or a set of in-flight descriptors larger than the ring, an `inflight`
   * byte other than 0 / 1, duplicate buffer ids.
   */
  | 'VQ_INFLIGHT_CORRUPT'
  /**
   * IotlbMemory (VIRTIO_F_IOMMU_PLATFORM): the IOVA has no IOTLB entry. Not a guest error: the queue
   * waits while the back-end sends an IOTLB miss and the front-end answers with an update
   * (vhost-user.rst "IOMMU support"). The fault carries the iova and the access.
   */
  | 'VQ_IOTLB_MISS'
  /**
   * IotlbMemory: the IOTLB entry forbids the access (a device write to a read-only mapping, a device
   * read of a write-only one): vhost-user.rst "IOMMU support", the access failure event.
   */
  | 'VQ_IOTLB_PERM'
  /**
   * Postcopy (backend/core/postcopy-memory.ts): the guest page has not been migrated yet. Not a guest
   * error: like an IOTLB miss, the queue waits (nothing consumed) while the page is fetched, and is
   * kicked again when it is there.
   */
  | 'VQ_PAGE_MISSING';

export class VirtqError extends Error {
  readonly code: VirtqErrorCode;
  constructor(code: VirtqErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VirtqError';
    this.code = code;
  }
}

/** Formats a guest address for messages. */
export function hexAddr(n: number): string {
  return '0x' + n.toString(16);
}
