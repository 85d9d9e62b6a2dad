/**
 * The virtqueue engine: pure TypeScript over guest-memory views, no native code, no sockets.
 * Devices use a Virtqueue (SplitQueue, virtio v1.2 2.7, or PackedQueue, 2.8: pop / pushUsed / flushUsed /
 * drain) with Chain, ChainReader and ChainWriter; the session builds queues from SET_VRING_* state over a
 * RegionMemory, and attaches inflight regions (inflight.ts, vhost-user.rst "Inflight I/O tracking").
 * The driver half of both formats (SplitDriver, PackedDriver) drives real devices from our VFIO
 * virtio-net driver and plays the guest in the tests.
 */
export type { VirtqErrorCode } from './errors.ts';
export { VirtqError } from './errors.ts';
export {
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  DESC_BYTES,
  MAX_SPLIT_QUEUE_SIZE,
  MAX_INDIRECT_DESCS,
  MAX_CHAIN_BYTES,
  descTableBytes,
  availRingBytes,
  usedRingBytes,
  needEvent,
  bswap16,
  bswap32,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  RING_EVENT_FLAGS_ENABLE,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_DESC,
  MAX_PACKED_QUEUE_SIZE,
  packedRingBytes,
} from './defs.ts';
export type { GuestMemory, Span, MemoryRegion, MemWindow } from './memory.ts';
export {
  RegionMemory,
  FlatMemory,
  createSpan,
  createWindow,
  joinAddr,
  readBytes,
  writeBytes,
  readU8,
  readU16,
  readU32,
  readU64,
  readAddr64,
  writeU8,
  writeU16,
  writeU32,
  writeU64,
  ringView,
  ringU16,
  ringU32,
  ringDataView,
} from './memory.ts';
export type { Segment } from './chain.ts';
export { Chain, ChainReader, ChainWriter, copyBytes, copyBytesW, wordsOf } from './chain.ts';
export { SplitChainWalker, SplitChainWalkerBE, appendBuffer } from './walk.ts';
export type { Virtqueue, VirtqueueStats, DrainPlan, DrainResult, ChainHandler, DirectBuffer, DirectHandler, BurstHandler } from './queue.ts';
export { createDrainPlan, createDirectBuffer, DirectBurst, BURST_MAX, DIRECT_CHAIN, DIRECT_EMPTY, DIRECT_OK } from './queue.ts';
export type { SplitQueueConfig, SplitQueueStats } from './split.ts';
export { SplitQueue, SplitQueueBE } from './split.ts';
export type { DriverBuffer, AddChainOptions, RawDesc, UsedEntry, SplitDriverOptions } from './split-driver.ts';
export { SplitDriver } from './split-driver.ts';
export type {
  InflightLayout,
  InflightInitOptions,
  InflightAttachResult,
  InflightRegion,
  SplitInflightEntry,
  PackedInflightEntry,
  PackedRecovery,
} from './inflight.ts';
export {
  INFLIGHT_VERSION,
  INFLIGHT_ALIGN,
  SPLIT_INFLIGHT_HEADER_BYTES,
  SPLIT_INFLIGHT_DESC_BYTES,
  PACKED_INFLIGHT_HEADER_BYTES,
  PACKED_INFLIGHT_DESC_BYTES,
  inflightQueueSize,
  inflightRegionSize,
  inflightQueueOffset,
  openInflightRegion,
  SplitInflight,
  PackedInflight,
} from './inflight.ts';
export type { PackedQueueConfig, PackedBase } from './packed.ts';
export { PackedQueue, packedBaseFromVhost, packedBaseToVhost } from './packed.ts';
export type {
  PackedAddOptions,
  RawPackedDesc,
  PackedUsedEntry,
  PackedDriverOptions,
} from './packed-driver.ts';
export { PackedDriver } from './packed-driver.ts';
