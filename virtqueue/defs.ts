/**
 * Split virtqueue layout constants (virtio v1.2 2.7, 2.7.5, 2.7.6, 2.7.8).
 *
 *   descriptor table: size × 16 bytes, 16-byte aligned   { le64 addr; le32 len; le16 flags; le16 next }
 *   available ring:   6 + 2 × size bytes, 2-byte aligned { le16 flags; le16 idx; le16 ring[size]; le16 used_event }
 *   used ring:        6 + 8 × size bytes, 4-byte aligned { le16 flags; le16 idx; {le32 id; le32 len}[size]; le16 avail_event }
 *
 * used_event / avail_event exist in memory only with VIRTIO_F_EVENT_IDX; we always map the full size
 * (QEMU and Linux always allocate them), which keeps the views identical with and without the feature.
 */

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** avail.flags bit: the driver does not want used-buffer notifications (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags bit: the device does not want available-buffer notifications (kicks). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

export const DESC_BYTES = 16;
export const USED_ELEM_BYTES = 8;

/** Largest split queue size (virtio v1.2 2.7: "Queue Size ... maximum 32768"). */
export const MAX_SPLIT_QUEUE_SIZE = 32768;
/**
 * Largest indirect table we accept, in descriptors. The spec sets no number; a table can not usefully
 * hold more descriptors than the largest queue, and the cap bounds the walk (it is also the ttl).
 */
export const MAX_INDIRECT_DESCS = 32768;
/** virtio v1.2 2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total". */
export const MAX_CHAIN_BYTES = 2 ** 32;

export const DESC_ALIGN = 16;
export const AVAIL_ALIGN = 2;
export const USED_ALIGN = 4;

export function descTableBytes(size: number): number {
  return DESC_BYTES * size;
}
export function availRingBytes(size: number): number {
  return 6 + 2 * size;
}
export function usedRingBytes(size: number): number {
  return 6 + USED_ELEM_BYTES * size;
}

/**
 * vring_need_event (virtio v1.2 2.7.7.2 / 2.7.10, the helper of the Linux virtio_ring.h header the
 * spec reproduces): after moving an index from `old` to `next`, a notification is due iff `event`
 * lies in [old, next) modulo 2^16, i.e. the peer asked to be told when entry `event` is written.
 */
export function needEvent(event: number, next: number, old: number): boolean {
  return ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);
}

/**
 * Byte swaps for legacy big-endian rings (vhost-user.rst SET_VRING_ENDIAN, protocol feature
 * CROSS_ENDIAN): a legacy (pre-VERSION_1) device uses the guest's native endianness, so a big-endian
 * guest's ring fields are big-endian while this host is little-endian. Values in, values out: the
 * caller keeps its (atomic) access and swaps what it loaded or is about to store.
 */
export function bswap16(v: number): number {
  return ((v & 0xff) << 8) | ((v >>> 8) & 0xff);
}
export function bswap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

// ---- Packed virtqueues (virtio v1.2 2.8) --------------------------------------------------------
//
//   descriptor ring:          size × 16 bytes, 16-byte aligned { le64 addr; le32 len; le16 id; le16 flags }
//   driver event suppression: 4 bytes, 4-byte aligned          { le16 off_wrap; le16 flags }  (read by the device)
//   device event suppression: 4 bytes, 4-byte aligned          { le16 off_wrap; le16 flags }  (written by the device)

/** 2.8.1: available / used marks, compared against the ring wrap counters. */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;
/** 2.8.10 Descriptor Ring Change Event Flags. */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
/** Only with VIRTIO_F_RING_EVENT_IDX: notify when the descriptor named by off_wrap is made available / used. */
export const RING_EVENT_FLAGS_DESC = 2;
/** 2.8: "Packed virtqueues support up to 2^15 entries each"; the size need not be a power of two. */
export const MAX_PACKED_QUEUE_SIZE = 32768;
export const EVENT_SUPPRESS_BYTES = 4;
export const EVENT_SUPPRESS_ALIGN = 4;

export function packedRingBytes(size: number): number {
  return DESC_BYTES * size;
}

/**
 * True where a plain typed-array load already has acquire semantics, so the hot path may skip
 * `Atomics.load` (≈ 7 ns per call on Node 20, not inlined; a plain load ≈ 1 ns):
 * - the hardware: x86 (TSO) never reorders a load with a later load, so the descriptor fields read
 *   after a flags load are at least as new as the flags (Intel SDM vol. 3 §9.2.2, "Loads are not
 *   reordered with other loads"); arm64 does reorder them (there `Atomics.load` emits ldar);
 * - the compiler: V8 keeps typed-array element loads on its effect chain, in program order, and
 *   never merges or eliminates them (they are not pure), so a load in a loop is made every turn.
 * Used only where the load is an acquire of a ring entry the device then reads (packed popDirect);
 * loads that pair with a store as a store-load fence keep `Atomics` on every architecture.
 */
export const PLAIN_LOAD_ACQUIRES = process.arch === 'x64' || process.arch === 'ia32';
