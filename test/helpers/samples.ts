/**
 * A valid sample payload for every layout of the protocol table, as decode() returns it: used by the
 * table round-trip property and by the loopback test that sends every request to the backend.
 */
import type { Layout, MessageDef } from '../../protocol/index.ts';

const mac = new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const uuid = Uint8Array.from({ length: 16 }, (_, i) => i * 17);

/** A valid sample value for each layout, as decode() returns it. */
export function sample(layout: Layout<unknown>, def?: MessageDef): unknown {
  // SET_VRING_ENABLE / SET_VRING_ENDIAN: num must be 0 or 1 (row check()).
  if (layout.name === 'vring_state' && def?.check) return { index: 1, num: 1 };
  switch (layout.name) {
    case 'empty':
      return null;
    case 'u64':
      return { value: 0xffff_ffff_ffff_fe10n }; // high bits set, bit 8 (no-fd) clear
    case 'vring_fd':
      return { index: 7, noFd: false, value: 7n };
    case 'rarp_mac':
      return { mac, value: 0x5634_1200_5452n };
    case 'vring_state':
      return { index: 1, num: 256 };
    case 'vring_addr':
      return {
        index: 1,
        flags: 1,
        descUserAddr: 0x7f00_0000_1000n,
        usedUserAddr: 0x7f00_0000_2004n,
        availUserAddr: 0x7f00_0000_3002n,
        logGuestAddr: 0xffff_ffff_ffff_f000n,
      };
    case 'vring_area':
      return { indexFlags: 0x102n, size: 0x1000n, offset: 0x3000n };
    case 'memory_table':
      return {
        nregions: 2,
        padding: 0,
        regions: [
          { guestPhysAddr: 0n, memorySize: 0xa_0000n, userspaceAddr: 0x7f12_0000_0000n, mmapOffset: 0n },
          { guestPhysAddr: 0x10_0000n, memorySize: 0x3ff0_0000n, userspaceAddr: 0x7f12_0010_0000n, mmapOffset: 0x10_0000n },
        ],
      };
    case 'single_memory_region':
      return {
        padding: 0n,
        region: { guestPhysAddr: 0x1_0000_0000n, memorySize: 0x4000_0000n, userspaceAddr: 0x7f55_0000_0000n, mmapOffset: 0n },
      };
    case 'log':
      return { mmapSize: 0x2_0000n, mmapOffset: 0x1000n };
    case 'iotlb':
      return { iova: 0xfeed_0000n, size: 0x1000n, userAddr: 0x7f00_dead_0000n, perm: 3, type: 2 };
    case 'config':
      return { offset: 0, size: 10, flags: 0, payload: Uint8Array.from({ length: 10 }, (_, i) => i + 1) };
    case 'inflight':
      return { mmapSize: 0x1_0000n, mmapOffset: 0n, numQueues: 2, queueSize: 256 };
    case 'shared_object':
      return { uuid };
    case 'device_state':
      return { transferDirection: 1, migrationPhase: 0 };
    case 'shmem_config':
      return { nregions: 3, padding: 0, memorySizes: [0x20_0000n, 0n, 0x4000_0000n] };
    case 'mmap':
      return { shmid: 2, padding: new Uint8Array(7), fdOffset: 0x1000n, shmOffset: 0x20_0000n, len: 0x1_0000n, flags: 1n };
    case 'crypto_session':
    case 'log_base_reply':
      return { bytes: Uint8Array.from([1, 2, 3, 4, 5]) };
    default:
      throw new Error(`no sample for layout ${layout.name}`);
  }
}

