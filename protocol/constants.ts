/**
 * Wire constants of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).
 *
 * Request codes keep the spec's names minus the `VHOST_USER_` / `VHOST_USER_BACKEND_` prefix, in the
 * current front-end/back-end terminology (SET_BACKEND_REQ_FD was SET_SLAVE_REQ_FD, BackendReq.* were
 * VHOST_USER_SLAVE_*), so code greps against the spec.
 */

/** Requests on the main socket, front-end -> back-end ("Front-end message types"). */
export const FrontendReq = {
  NONE: 0,
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
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
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
export type FrontendReqName = keyof typeof FrontendReq;

/** Requests on the back-end channel (SET_BACKEND_REQ_FD socket), back-end -> front-end. */
export const BackendReq = {
  NONE: 0,
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
} as const;
export type BackendReqName = keyof typeof BackendReq;

/** Which socket a message travels on: 'frontend' = requests from the front-end (main socket). */
export type Channel = 'frontend' | 'backend';

// ---- header ("Message Specification" / "Header") ----

/** request u32, flags u32, size u32. */
export const HEADER_SIZE = 12;
/** Lower 2 bits of flags: protocol version, currently 1. */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
/** Bit 2: set on every reply. */
export const VHOST_USER_REPLY_MASK = 0x4;
/** Bit 3: sender asks for a REPLY_ACK (vhost-user.rst "VHOST_USER_PROTOCOL_F_REPLY_ACK"). */
export const VHOST_USER_NEED_REPLY_MASK = 0x8;
/** Bits the spec does not define. We keep them verbatim and do not reject them (spec-notes). */
export const VHOST_USER_RESERVED_FLAGS = ~0xf >>> 0;

/**
 * Cap on the payload size we accept or produce. The spec's `size` is a u32, but the largest payload
 * it defines is the VIRTIO Shared Memory Region configuration (8 + 256 * 8 = 2056 bytes); the
 * memory table is at most 8 + 8 * 40 = 328 bytes (with XEN_MMAP regions), device config 12 + 256.
 * 8 KiB leaves headroom for frontends that pad payloads, and bounds what a hostile peer can make us
 * buffer before the header is rejected.
 */
export const MAX_PAYLOAD = 8192;

// ---- memory ----

/** Regions in one SET_MEM_TABLE (QEMU's VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;
/** Upper bound QEMU puts on GET_MAX_MEM_SLOTS answers (its VHOST_USER_MAX_RAM_SLOTS). */
export const MAX_MEM_SLOTS = 509;
/** guest address, size, user address, mmap offset. */
export const MEMORY_REGION_SIZE = 32;
/** Dirty-log page size (vhost-user.rst "Migration"). */
export const VHOST_LOG_PAGE = 0x1000;

// ---- vrings ----

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 are the vring index. */
export const VHOST_USER_VRING_IDX_MASK = 0xff;
/** SET_VRING_KICK/CALL/ERR u64 (and SET_DEVICE_STATE_FD's reply): bit 8 = "no fd attached". */
export const VHOST_USER_VRING_NOFD_MASK = 0x100;
/** vring address flags: log used-ring writes (vhost-user.rst "Migration"). */
export const VHOST_VRING_F_LOG = 0x1;
/** VIRTIO v1.2 2.7: the maximum queue size. */
export const VIRTQUEUE_MAX_SIZE = 32768;

// ---- device config ----

/** Max bytes of device config space carried by GET/SET_CONFIG (QEMU's VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;
/** offset, size, flags. */
export const VHOST_USER_CONFIG_HDR_SIZE = 12;
/** SET_CONFIG flags (vhost-user.rst "Virtio device config space"). */
export const VhostUserConfigFlags = {
  WRITABLE: 0,
  MIGRATION: 1,
} as const;

// ---- IOTLB ("An IOTLB message") ----

export const IotlbType = {
  MISS: 1,
  UPDATE: 2,
  INVALIDATE: 3,
  ACCESS_FAIL: 4,
} as const;
export const IotlbPerm = {
  NONE: 0,
  RO: 1,
  WO: 2,
  RW: 3,
} as const;

// ---- device state ("Device state transfer parameters") ----

export const TransferDirection = { SAVE: 0, LOAD: 1 } as const;
export const MigrationPhase = { STOPPED: 0 } as const;

// ---- shared memory regions (GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP) ----

/** memory_sizes[] entries in the VIRTIO Shared Memory Region configuration. */
export const VHOST_USER_MAX_SHMEM_REGIONS = 256;
/** VhostUserMMap flags: bit 0 = map read-write (0 = read-only). */
export const VHOST_USER_FLAG_MAP_RW = 0x1;

/** Max fds the back-end may send per message with BACKEND_SEND_FD ("Back-end communication"). */
export const VHOST_USER_BACKEND_MAX_FDS = 8;
