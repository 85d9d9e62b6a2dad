/**
 * One layout per payload kind of vhost-user.rst "Message Specification" / "Payload", each with a
 * syntax-only `validate()` (rust-vmm style: ranges, reserved bits, u64 overflow; never features or
 * session state, which belong to backend/core/session.ts).
 *
 * Where the spec's prose and the wire disagree we follow the wire as QEMU/DPDK/rust-vmm send it:
 * each such layout says so in a comment starting with "NOTE:" and is listed in
 * spec-notes/vhost-user.md (e.g. the vring address's `size` column, the C padding of the IOTLB
 * message and of the inflight description).
 */
import {
  IotlbPerm,
  IotlbType,
  MAX_PAYLOAD,
  MEMORY_REGION_SIZE,
  MigrationPhase,
  TransferDirection,
  VHOST_MEMORY_BASELINE_NREGIONS,
  VHOST_USER_CONFIG_HDR_SIZE,
  VHOST_USER_FLAG_MAP_RW,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_MAX_SHMEM_REGIONS,
  VHOST_USER_VRING_IDX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VHOST_VRING_F_LOG,
  VhostUserConfigFlags,
} from './constants.ts';
import {
  LITTLE_ENDIAN,
  LayoutSizeError,
  addOverflows,
  bytes,
  perr,
  struct,
  u16,
  u32,
  u64,
  u8,
  view,
  type Layout,
  type PayloadError,
} from './layout.ts';

// ---- no payload / a single u64 ----

/** "N/A": no payload, size 0. */
export const empty: Layout<null> = {
  name: 'empty',
  minSize: 0,
  maxSize: 0,
  sizeOf: () => 0,
  decode(b) {
    if (b.length !== 0) throw new LayoutSizeError(`empty: payload is ${b.length} bytes, expected 0`);
    return null;
  },
  encode() {},
  validate: () => null,
};

/**
 * "A single 64-bit integer": features, status, counts, and the REPLY_ACK result. Decodes to
 * `{ value }` so every payload is an object; encodeReply() also takes a bare bigint for it.
 */
export const u64Payload = struct('u64', { value: u64 });
export type U64 = { value: bigint };

/**
 * SET_VRING_KICK / CALL / ERR u64: "Bits (0-7) of the payload contain the vring index. Bit 8 is
 * the invalid FD flag." Bits 9-63 are undefined; we ignore them rather than refuse (no known
 * frontend sets them, and the index/flag are all that carry meaning). Decodes the raw `value` too;
 * encode() derives the wire value from `index` and `noFd` only.
 */
export interface VringFd {
  index: number;
  /** Bit 8: no fd in the ancillary data (polling, or in-band notifications). */
  noFd: boolean;
  /** The raw u64 (decode only). */
  value?: bigint;
}
export const vringFd: Layout<VringFd> = {
  name: 'vring_fd',
  minSize: 8,
  maxSize: 8,
  sizeOf: () => 8,
  decode(b) {
    const { value } = u64Payload.decode(b);
    return {
      index: Number(value & BigInt(VHOST_USER_VRING_IDX_MASK)),
      noFd: (value & BigInt(VHOST_USER_VRING_NOFD_MASK)) !== 0n,
      value,
    };
  },
  encode(v, out) {
    if (!Number.isInteger(v.index) || v.index < 0 || v.index > VHOST_USER_VRING_IDX_MASK) {
      throw new RangeError(`vring_fd.index: ${v.index} is not in 0..255`);
    }
    u64.write(view(out), 0, BigInt(v.index) | (v.noFd ? BigInt(VHOST_USER_VRING_NOFD_MASK) : 0n));
  },
  validate: (v) =>
    Number.isInteger(v.index) && v.index >= 0 && v.index <= VHOST_USER_VRING_IDX_MASK
      ? null
      : perr('VRING_INDEX', `vring index ${v.index} does not fit bits 0-7`),
};

/**
 * SEND_RARP u64: "The first 6 bytes of the payload contain the mac address of the guest".
 * Decodes the raw `value` too; encode() writes `mac` and two zero bytes.
 */
export interface RarpMac {
  mac: Uint8Array;
  value?: bigint;
}
export const rarpMac: Layout<RarpMac> = {
  name: 'rarp_mac',
  minSize: 8,
  maxSize: 8,
  sizeOf: () => 8,
  decode(b) {
    const { value } = u64Payload.decode(b);
    return { mac: b.slice(0, 6), value };
  },
  encode(v, out) {
    if (!(v.mac instanceof Uint8Array) || v.mac.length !== 6) throw new RangeError('rarp_mac.mac: expected 6 bytes');
    out.fill(0);
    out.set(v.mac);
  },
  validate: (v) => (v.mac.length === 6 ? null : perr('RARP_MAC', 'mac must be 6 bytes')),
};

// ---- vrings ----

/**
 * "A vring state description" {index, num}; also the split "vring descriptor index" and packed
 * "vring descriptor indices" of SET/GET_VRING_BASE (same 8 bytes; which one it is depends on
 * RING_PACKED, i.e. on the session, so it is not checked here).
 */
export const vringState = struct('vring_state', { index: u32, num: u32 });
export type VringState = { index: number; num: number };

/**
 * "A vring address description" (user addresses, or IOVAs under ACCESS_PLATFORM).
 * NOTE: the spec's drawing has a `size` column that no implementation sends: struct
 * vhost_vring_addr is index, flags, desc, used, avail, log (40 bytes).
 */
export const vringAddr = struct(
  'vring_addr',
  { index: u32, flags: u32, descUserAddr: u64, usedUserAddr: u64, availUserAddr: u64, logGuestAddr: u64 },
  {
    validate(v) {
      if ((v.flags & ~VHOST_VRING_F_LOG) !== 0) {
        return perr('VRING_ADDR_FLAGS', `vring addr flags 0x${v.flags.toString(16)}: only bit 0 (VHOST_VRING_F_LOG) is defined`);
      }
      // VIRTIO v1.2 2.7 / 2.8: descriptor table 16-aligned, used ring 4, available ring 2 (packed:
      // descriptor ring 16, event suppression areas 4). Region bases are page aligned, so the user
      // address keeps the guest address's alignment.
      if (v.descUserAddr % 16n !== 0n) return perr('VRING_ADDR_ALIGN', 'descriptor table address is not 16-byte aligned');
      if (v.usedUserAddr % 4n !== 0n) return perr('VRING_ADDR_ALIGN', 'used ring address is not 4-byte aligned');
      if (v.availUserAddr % 2n !== 0n) return perr('VRING_ADDR_ALIGN', 'available ring address is not 2-byte aligned');
      return null;
    },
  },
);

/** "Vring area description" (BACKEND_VRING_HOST_NOTIFIER_MSG): u64 index+flags, size, offset. */
export const vringArea = struct(
  'vring_area',
  { indexFlags: u64, size: u64, offset: u64 },
  {
    validate: (v) =>
      addOverflows(v.offset, v.size) ? perr('AREA_OVERFLOW', 'vring area offset + size overflows u64') : null,
  },
);

// ---- memory ----

/** "Memory region description". */
export const memoryRegion = struct(
  'memory_region',
  { guestPhysAddr: u64, memorySize: u64, userspaceAddr: u64, mmapOffset: u64 },
  { validate: (r) => validateRegion(r) },
);
export type MemoryRegion = { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint };

function validateRegion(r: MemoryRegion): PayloadError | null {
  if (r.memorySize === 0n) return perr('REGION_SIZE_ZERO', 'memory region of size 0');
  if (addOverflows(r.guestPhysAddr, r.memorySize)) return perr('REGION_OVERFLOW', 'guest address + size overflows u64');
  if (addOverflows(r.userspaceAddr, r.memorySize)) return perr('REGION_OVERFLOW', 'user address + size overflows u64');
  if (addOverflows(r.mmapOffset, r.memorySize)) return perr('REGION_OVERFLOW', 'mmap offset + size overflows u64');
  return null;
}

/**
 * "Multiple Memory regions description" (SET_MEM_TABLE): nregions u32, padding u32, regions.
 *
 * NOTE: size rule: QEMU sends 8 + nregions * 32; other frontends send the whole 8-region array. We
 * accept any size >= 8 + nregions * 32 (trailing bytes ignored) and encode the compact form.
 * nregions == 0 is syntactically fine: QEMU's postcopy acknowledgement is a SET_MEM_TABLE whose
 * 8-byte payload is u64 0 ("QEMU will then reply back ... with an empty VHOST_USER_SET_MEM_TABLE").
 * Regions with XEN_MMAP's two extra u32 are not supported (we never offer XEN_MMAP).
 */
export interface MemoryTable {
  nregions: number;
  padding: number;
  regions: MemoryRegion[];
}
export const memoryTable: Layout<MemoryTable> = {
  name: 'memory_table',
  minSize: 8,
  maxSize: MAX_PAYLOAD,
  sizeOf: (v) => 8 + v.regions.length * MEMORY_REGION_SIZE,
  decode(b) {
    if (b.length < 8) throw new LayoutSizeError(`memory_table: payload is ${b.length} bytes, expected at least 8`);
    const dv = view(b);
    const nregions = dv.getUint32(0, LITTLE_ENDIAN);
    const padding = dv.getUint32(4, LITTLE_ENDIAN);
    const need = 8 + nregions * MEMORY_REGION_SIZE;
    if (b.length < need) {
      throw new LayoutSizeError(`memory_table: ${nregions} regions need ${need} bytes, payload is ${b.length}`);
    }
    const regions: MemoryRegion[] = [];
    for (let i = 0; i < nregions; i++) regions.push(memoryRegion.field.read(dv, 8 + i * MEMORY_REGION_SIZE));
    return { nregions, padding, regions };
  },
  encode(v, out) {
    const dv = view(out);
    u32.write(dv, 0, v.nregions);
    u32.write(dv, 4, v.padding);
    v.regions.forEach((r, i) => memoryRegion.field.write(dv, 8 + i * MEMORY_REGION_SIZE, r));
  },
  validate(v) {
    if (v.nregions > VHOST_MEMORY_BASELINE_NREGIONS) {
      return perr('MEM_NREGIONS', `${v.nregions} memory regions, at most ${VHOST_MEMORY_BASELINE_NREGIONS} per SET_MEM_TABLE`);
    }
    if (v.regions.length !== v.nregions) {
      return perr('MEM_NREGIONS', `nregions ${v.nregions} but ${v.regions.length} regions given`);
    }
    for (const [i, r] of v.regions.entries()) {
      const e = validateRegion(r);
      if (e) return perr(e.code, `region ${i}: ${e.message}`);
    }
    return null;
  },
};

/** "Single memory region description" (ADD_MEM_REG / REM_MEM_REG): padding u64 + region. */
export const singleMemoryRegion = struct(
  'single_memory_region',
  { padding: u64, region: memoryRegion.field },
  { validate: (v) => validateRegion(v.region) },
);

/** "Log description". NOTE: SET_LOG_BASE's row says u64; every implementation sends this. */
export const logDescription = struct(
  'log',
  { mmapSize: u64, mmapOffset: u64 },
  {
    validate: (v) =>
      addOverflows(v.mmapOffset, v.mmapSize) ? perr('LOG_OVERFLOW', 'log mmap offset + size overflows u64') : null,
  },
);

// ---- IOTLB ----

/**
 * "An IOTLB message" (struct vhost_iotlb_msg).
 * NOTE: 26 bytes of fields, 32 with the C struct's alignment padding; either size is accepted, the
 * padded one is sent.
 */
export const iotlbMsg = struct(
  'iotlb',
  { iova: u64, size: u64, userAddr: u64, perm: u8, type: u8 },
  {
    size: 32,
    minSize: 26,
    validate(v) {
      if (v.type < IotlbType.MISS || v.type > IotlbType.ACCESS_FAIL) return perr('IOTLB_TYPE', `IOTLB type ${v.type} is not 1..4`);
      if (v.perm > IotlbPerm.RW) return perr('IOTLB_PERM', `IOTLB permissions ${v.perm} are not 0..3`);
      if (addOverflows(v.iova, v.size)) return perr('IOTLB_OVERFLOW', 'iova + size overflows u64');
      if (v.type === IotlbType.UPDATE && addOverflows(v.userAddr, v.size)) {
        return perr('IOTLB_OVERFLOW', 'user address + size overflows u64');
      }
      return null;
    },
  },
);

// ---- device config ----

/**
 * "Virtio device config space": offset u32, size u32, flags u32, then `size` bytes.
 * The payload length must equal the size field (decode: exactly 12 + size bytes).
 */
export interface DeviceConfig {
  offset: number;
  size: number;
  flags: number;
  payload: Uint8Array;
}
export const deviceConfig: Layout<DeviceConfig> = {
  name: 'config',
  minSize: VHOST_USER_CONFIG_HDR_SIZE,
  maxSize: MAX_PAYLOAD,
  sizeOf: (v) => VHOST_USER_CONFIG_HDR_SIZE + v.payload.length,
  decode(b) {
    if (b.length < VHOST_USER_CONFIG_HDR_SIZE) {
      throw new LayoutSizeError(`config: payload is ${b.length} bytes, expected at least ${VHOST_USER_CONFIG_HDR_SIZE}`);
    }
    const dv = view(b);
    const size = dv.getUint32(4, LITTLE_ENDIAN);
    if (b.length !== VHOST_USER_CONFIG_HDR_SIZE + size) {
      throw new LayoutSizeError(`config: size field ${size} but ${b.length - VHOST_USER_CONFIG_HDR_SIZE} payload bytes`);
    }
    return {
      offset: dv.getUint32(0, LITTLE_ENDIAN),
      size,
      flags: dv.getUint32(8, LITTLE_ENDIAN),
      payload: b.slice(VHOST_USER_CONFIG_HDR_SIZE),
    };
  },
  encode(v, out) {
    const dv = view(out);
    u32.write(dv, 0, v.offset);
    u32.write(dv, 4, v.size);
    u32.write(dv, 8, v.flags);
    out.set(v.payload, VHOST_USER_CONFIG_HDR_SIZE);
  },
  validate(v) {
    if (v.size > VHOST_USER_MAX_CONFIG_SIZE) {
      return perr('CONFIG_SIZE', `config size ${v.size} exceeds ${VHOST_USER_MAX_CONFIG_SIZE}`);
    }
    if (v.offset + v.size > VHOST_USER_MAX_CONFIG_SIZE) {
      return perr('CONFIG_RANGE', `config range ${v.offset}+${v.size} exceeds ${VHOST_USER_MAX_CONFIG_SIZE}`);
    }
    if (v.flags !== VhostUserConfigFlags.WRITABLE && v.flags !== VhostUserConfigFlags.MIGRATION) {
      return perr('CONFIG_FLAGS', `config flags ${v.flags} are not 0 (writable fields) or 1 (migration)`);
    }
    if (v.payload.length !== v.size) {
      return perr('CONFIG_PAYLOAD_LEN', `config payload is ${v.payload.length} bytes, size field says ${v.size}`);
    }
    return null;
  },
};

// ---- inflight, shared objects, device state ----

/**
 * "Inflight description".
 * NOTE: a C struct with 4 bytes of trailing padding (20 -> 24); either size is accepted, the padded
 * one is sent.
 */
export const inflightDescription = struct(
  'inflight',
  { mmapSize: u64, mmapOffset: u64, numQueues: u16, queueSize: u16 },
  {
    size: 24,
    minSize: 20,
    validate: (v) =>
      addOverflows(v.mmapOffset, v.mmapSize) ? perr('INFLIGHT_OVERFLOW', 'inflight mmap offset + size overflows u64') : null,
  },
);

/** "VhostUserShared": a 16-byte UUID (first three components big endian, per the spec). */
export const sharedObject = struct('shared_object', { uuid: bytes(16) });

/** "Device state transfer parameters". */
export const deviceStateTransfer = struct(
  'device_state',
  { transferDirection: u32, migrationPhase: u32 },
  {
    validate(v) {
      if (v.transferDirection !== TransferDirection.SAVE && v.transferDirection !== TransferDirection.LOAD) {
        return perr('DEVICE_STATE_DIRECTION', `transfer direction ${v.transferDirection} is not 0 (save) or 1 (load)`);
      }
      if (v.migrationPhase !== MigrationPhase.STOPPED) {
        return perr('DEVICE_STATE_PHASE', `migration phase ${v.migrationPhase} is not 0 (stopped)`);
      }
      return null;
    },
  },
);

// ---- VIRTIO Shared Memory Regions ----

/**
 * "VIRTIO Shared Memory Region configuration" (GET_SHMEM_CONFIG reply): nregions u32, padding u32,
 * memory sizes u64[256]. NOTE: the spec does not say whether the array may be truncated to
 * nregions; we send all 256 entries (as rust-vmm does) and accept any payload holding at least
 * nregions.
 */
export interface ShmemConfig {
  nregions: number;
  padding: number;
  /** Size of each VIRTIO Shared Memory Region; the array index is the shmid. */
  memorySizes: bigint[];
}
const SHMEM_CONFIG_FULL = 8 + VHOST_USER_MAX_SHMEM_REGIONS * 8;
export const shmemConfig: Layout<ShmemConfig> = {
  name: 'shmem_config',
  minSize: 8,
  maxSize: SHMEM_CONFIG_FULL,
  sizeOf: () => SHMEM_CONFIG_FULL,
  decode(b) {
    if (b.length < 8 || b.length > SHMEM_CONFIG_FULL) {
      throw new LayoutSizeError(`shmem_config: payload is ${b.length} bytes, expected 8..${SHMEM_CONFIG_FULL}`);
    }
    const dv = view(b);
    const nregions = dv.getUint32(0, LITTLE_ENDIAN);
    const padding = dv.getUint32(4, LITTLE_ENDIAN);
    const count = Math.min(nregions, VHOST_USER_MAX_SHMEM_REGIONS);
    if (b.length < 8 + count * 8) {
      throw new LayoutSizeError(`shmem_config: ${nregions} regions need ${8 + count * 8} bytes, payload is ${b.length}`);
    }
    const memorySizes: bigint[] = [];
    for (let i = 0; i < count; i++) memorySizes.push(dv.getBigUint64(8 + i * 8, LITTLE_ENDIAN));
    return { nregions, padding, memorySizes };
  },
  encode(v, out) {
    const dv = view(out);
    out.fill(0);
    u32.write(dv, 0, v.nregions);
    u32.write(dv, 4, v.padding);
    if (v.memorySizes.length > VHOST_USER_MAX_SHMEM_REGIONS) throw new RangeError('shmem_config: more than 256 sizes');
    v.memorySizes.forEach((s, i) => u64.write(dv, 8 + i * 8, s));
  },
  validate(v) {
    if (v.nregions > VHOST_USER_MAX_SHMEM_REGIONS) {
      return perr('SHMEM_NREGIONS', `${v.nregions} shared memory regions, at most ${VHOST_USER_MAX_SHMEM_REGIONS}`);
    }
    if (v.memorySizes.length !== v.nregions) {
      return perr('SHMEM_NREGIONS', `nregions ${v.nregions} but ${v.memorySizes.length} sizes given`);
    }
    return null;
  },
};

/** "MMAP request" (BACKEND_SHMEM_MAP / UNMAP): shmid u8, 7 padding, fd_offset, shm_offset, len, flags. */
export const shmemMmap = struct(
  'mmap',
  { shmid: u8, padding: bytes(7), fdOffset: u64, shmOffset: u64, len: u64, flags: u64 },
  {
    validate(v) {
      if (v.len === 0n) return perr('MMAP_LEN_ZERO', 'mapping of length 0');
      if (addOverflows(v.fdOffset, v.len)) return perr('MMAP_OVERFLOW', 'fd offset + len overflows u64');
      if (addOverflows(v.shmOffset, v.len)) return perr('MMAP_OVERFLOW', 'shm offset + len overflows u64');
      if ((v.flags & ~BigInt(VHOST_USER_FLAG_MAP_RW)) !== 0n) {
        return perr('MMAP_FLAGS', `mmap flags 0x${v.flags.toString(16)}: only bit 0 (read-write) is defined`);
      }
      return null;
    },
  },
);

// ---- opaque ----

/**
 * Opaque bytes: the spec never lays out the "crypto session description" (QEMU's
 * VhostUserCryptoSession is device-specific); we carry it uninterpreted.
 */
export interface Opaque {
  bytes: Uint8Array;
}
export function opaque(name: string): Layout<Opaque> {
  return {
    name,
    minSize: 0,
    maxSize: MAX_PAYLOAD,
    sizeOf: (v) => v.bytes.length,
    decode: (b) => ({ bytes: b.slice() }),
    encode(v, out) {
      if (!(v.bytes instanceof Uint8Array)) throw new TypeError(`${name}.bytes: expected a Uint8Array`);
      out.set(v.bytes);
    },
    validate: () => null,
  };
}
/** NOTE: "crypto session description" is never laid out by the spec: opaque bytes. */
export const cryptoSession = opaque('crypto_session');

// ---- value types (what decode() returns) ----

export type VringAddr = {
  index: number;
  flags: number;
  descUserAddr: bigint;
  usedUserAddr: bigint;
  availUserAddr: bigint;
  logGuestAddr: bigint;
};
export type VringArea = { indexFlags: bigint; size: bigint; offset: bigint };
export type SingleMemoryRegion = { padding: bigint; region: MemoryRegion };
export type LogDescription = { mmapSize: bigint; mmapOffset: bigint };
export type IotlbMsg = { iova: bigint; size: bigint; userAddr: bigint; perm: number; type: number };
export type InflightDescription = { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number };
export type SharedObject = { uuid: Uint8Array };
export type DeviceStateTransfer = { transferDirection: number; migrationPhase: number };
export type ShmemMmap = { shmid: number; padding: Uint8Array; fdOffset: bigint; shmOffset: bigint; len: bigint; flags: bigint };

/** Every payload layout, by role. The table (messages.ts) refers to these. */
export const Payloads = {
  empty,
  u64: u64Payload,
  vringFd,
  rarpMac,
  vringState,
  vringAddr,
  vringArea,
  memoryTable,
  singleMemoryRegion,
  logDescription,
  iotlbMsg,
  deviceConfig,
  inflightDescription,
  sharedObject,
  deviceStateTransfer,
  shmemConfig,
  shmemMmap,
  cryptoSession,
} as const;
export type PayloadLayoutName = keyof typeof Payloads;
