/**
 * The vhost-user wire format as the hostile frontend speaks it, written from the spec
 * (QEMU docs/interop/vhost-user.rst "Message format", "Front-end message types", "Protocol features";
 * VIRTIO v1.2 2.7 for the split ring and 5.1 for virtio-net), deliberately NOT from protocol/: the
 * hostile suite must not share the codec it attacks (a bug in the codec would otherwise be on both
 * sides of the wire and invisible).
 *
 * Everything here is little-endian (vhost-user.rst: "all values are little-endian unless stated").
 */

// ---- header ------------------------------------------------------------------------------------

/** request u32, flags u32, size u32. */
export const HDR = 12;
/** flags bits 0-1: version 1. */
export const F_VERSION = 0x1;
/** flags bit 2: a reply. */
export const F_REPLY = 0x4;
/** flags bit 3: NEED_REPLY (REPLY_ACK). */
export const F_NEED_REPLY = 0x8;

/** Front-end request ids (vhost-user.rst "Front-end message types"). */
export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
  GET_SHMEM_CONFIG: 44,
} as const;

/** Virtio feature bit numbers (VIRTIO v1.2 5.1.3, 6; vhost-user.rst). */
export const VF = {
  MRG_RXBUF: 15,
  LOG_ALL: 26,
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

/** vhost-user protocol feature bit numbers. */
export const PF = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  PAGEFAULT: 8,
  CONFIG: 9,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  DEVICE_STATE: 19,
} as const;

export const bit = (n: number): bigint => 1n << BigInt(n);
export const bits = (...ns: number[]): bigint => ns.reduce((m, n) => m | bit(n), 0n);

/** SET_VRING_KICK/CALL/ERR u64: bit 8 = no fd. */
export const VRING_NOFD = 0x100;
/** IOTLB message types. */
export const IOTLB_MISS = 1;
export const IOTLB_UPDATE = 2;
export const IOTLB_INVALIDATE = 3;
export const IOTLB_RW = 3;

// ---- split ring (VIRTIO v1.2 2.7) ----------------------------------------------------------------

export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
export const USED_F_NO_NOTIFY = 1;
/** virtio_net_hdr_v1 (VERSION_1 or MRG_RXBUF): 12 bytes. */
export const NET_HDR_V1 = 12;

// ---- payload builders ------------------------------------------------------------------------------

function buf(n: number): [Uint8Array, DataView] {
  const b = new Uint8Array(n);
  return [b, new DataView(b.buffer)];
}

export function u64(v: bigint | number): Uint8Array {
  const [b, dv] = buf(8);
  dv.setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true);
  return b;
}

/** "A vring state description": index u32, num u32. */
export function vringState(index: number, num: number): Uint8Array {
  const [b, dv] = buf(8);
  dv.setUint32(0, index >>> 0, true);
  dv.setUint32(4, num >>> 0, true);
  return b;
}

/** SET_VRING_KICK/CALL/ERR: u64 with the index in bits 0-7 and NOFD in bit 8. */
export function vringFd(index: number, noFd = false): Uint8Array {
  return u64(BigInt((index & 0xff) | (noFd ? VRING_NOFD : 0)));
}

/** "A vring address description": index, flags, desc, used, avail, log (the 40-byte form QEMU sends). */
export function vringAddr(index: number, desc: bigint, used: bigint, avail: bigint, flags = 0, log = 0n): Uint8Array {
  const [b, dv] = buf(40);
  dv.setUint32(0, index >>> 0, true);
  dv.setUint32(4, flags >>> 0, true);
  dv.setBigUint64(8, desc, true);
  dv.setBigUint64(16, used, true);
  dv.setBigUint64(24, avail, true);
  dv.setBigUint64(32, log, true);
  return b;
}

export interface Region {
  gpa: bigint;
  size: bigint;
  uva: bigint;
  offset: bigint;
}

function putRegion(dv: DataView, at: number, r: Region): void {
  dv.setBigUint64(at, r.gpa, true);
  dv.setBigUint64(at + 8, r.size, true);
  dv.setBigUint64(at + 16, r.uva, true);
  dv.setBigUint64(at + 24, r.offset, true);
}

/** "Memory regions description": nregions u32, padding u32, then 32 bytes per region. */
export function memTable(regions: readonly Region[], nregions = regions.length): Uint8Array {
  const [b, dv] = buf(8 + 32 * regions.length);
  dv.setUint32(0, nregions >>> 0, true);
  regions.forEach((r, i) => putRegion(dv, 8 + 32 * i, r));
  return b;
}

/** "Single memory region description": padding u64, then the region. */
export function singleRegion(r: Region): Uint8Array {
  const [b, dv] = buf(40);
  putRegion(dv, 8, r);
  return b;
}

/** "IOTLB message": iova, size, user address u64, perm u8, type u8 (C struct: 32 bytes). */
export function iotlb(type: number, iova: bigint, size: bigint, uaddr: bigint, perm = IOTLB_RW): Uint8Array {
  const [b, dv] = buf(32);
  dv.setBigUint64(0, iova, true);
  dv.setBigUint64(8, size, true);
  dv.setBigUint64(16, uaddr, true);
  b[24] = perm;
  b[25] = type;
  return b;
}

/** "Device state transfer parameters": direction u32, phase u32. */
export function deviceState(direction: number, phase: number): Uint8Array {
  const [b, dv] = buf(8);
  dv.setUint32(0, direction >>> 0, true);
  dv.setUint32(4, phase >>> 0, true);
  return b;
}

/** "Inflight description": mmap size u64, offset u64, num queues u16, queue size u16 (padded to 24). */
export function inflightDesc(mmapSize: bigint, offset: bigint, numQueues: number, queueSize: number): Uint8Array {
  const [b, dv] = buf(24);
  dv.setBigUint64(0, mmapSize, true);
  dv.setBigUint64(8, offset, true);
  dv.setUint16(16, numQueues & 0xffff, true);
  dv.setUint16(18, queueSize & 0xffff, true);
  return b;
}

/** "Log description": mmap size u64, offset u64. */
export function logDesc(size: bigint, offset: bigint): Uint8Array {
  const [b, dv] = buf(16);
  dv.setBigUint64(0, size, true);
  dv.setBigUint64(8, offset, true);
  return b;
}

/** "Virtio device config space": offset, size, flags u32, then size bytes. */
export function configSpace(offset: number, size: number, flags: number, bytes: Uint8Array = new Uint8Array(size)): Uint8Array {
  const [b, dv] = buf(12 + bytes.length);
  dv.setUint32(0, offset >>> 0, true);
  dv.setUint32(4, size >>> 0, true);
  dv.setUint32(8, flags >>> 0, true);
  b.set(bytes, 12);
  return b;
}

export const EMPTY = new Uint8Array(0);

/** The u64 in a reply payload, or null when the payload is not exactly 8 bytes. */
export function readU64(payload: Uint8Array): bigint | null {
  if (payload.length !== 8) return null;
  return new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
}

export const hex = (v: number | bigint): string => '0x' + v.toString(16);
