/** Small payload helpers the handler families share. */
import type { MemoryRegion, VhostMessage } from '../../../protocol/index.ts';
import type { RegionSpec } from '../memory-table.ts';

/** The u64 body of a request (protocol/payloads.ts u64Payload). */
export function u64(msg: VhostMessage): bigint {
  return (msg.payload as { value: bigint }).value;
}

/** A memory region of the wire as the memory table takes it. */
export function regionOf(p: MemoryRegion): RegionSpec {
  return { gpa: p.guestPhysAddr, byteLen: p.memorySize, uva: p.userspaceAddr, mmapOffset: p.mmapOffset };
}
