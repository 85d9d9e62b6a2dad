/**
 * Feature bits: virtio feature bit NUMBERS (device-independent transport bits, the virtio-net
 * device bits, and the two vhost bits that live in the same 64-bit word) and vhost-user protocol
 * feature bit numbers.
 *
 * One representation only: a feature is a bit number (`VirtioF.RING_EVENT_IDX === 29`), a set of
 * features is a `bigint` mask, and the two meet only through `bit()` / `has()`. Never write
 * `mask & VirtioF.X` (that is the classic "bit number used as a mask" bug).
 *
 * Sources: VIRTIO v1.2 section 6 "Reserved Feature Bits" and 5.1.3 "Network Device Feature bits";
 * vhost-user.rst "Communication" (VHOST_USER_F_PROTOCOL_FEATURES = 30), "Migration"
 * (VHOST_F_LOG_ALL = 26) and "Protocol features".
 */

/** Virtio feature bit numbers as negotiated by GET_FEATURES / SET_FEATURES (virtio-net + transport). */
export const VirtioF = {
  // virtio-net device feature bits (VIRTIO v1.2 5.1.3)
  NET_F_CSUM: 0,
  NET_F_GUEST_CSUM: 1,
  NET_F_CTRL_GUEST_OFFLOADS: 2,
  NET_F_MTU: 3,
  NET_F_MAC: 5,
  /** Legacy only (VIRTIO v1.2 5.1.3.1). */
  NET_F_GSO: 6,
  NET_F_GUEST_TSO4: 7,
  NET_F_GUEST_TSO6: 8,
  NET_F_GUEST_ECN: 9,
  NET_F_GUEST_UFO: 10,
  NET_F_HOST_TSO4: 11,
  NET_F_HOST_TSO6: 12,
  NET_F_HOST_ECN: 13,
  NET_F_HOST_UFO: 14,
  NET_F_MRG_RXBUF: 15,
  NET_F_STATUS: 16,
  NET_F_CTRL_VQ: 17,
  NET_F_CTRL_RX: 18,
  NET_F_CTRL_VLAN: 19,
  NET_F_CTRL_RX_EXTRA: 20,
  NET_F_GUEST_ANNOUNCE: 21,
  NET_F_MQ: 22,
  NET_F_CTRL_MAC_ADDR: 23,
  NET_F_DEVICE_STATS: 50,
  NET_F_VQ_NOTF_COAL: 52,
  NET_F_NOTF_COAL: 53,
  NET_F_GUEST_USO4: 54,
  NET_F_GUEST_USO6: 55,
  NET_F_HOST_USO: 56,
  NET_F_HASH_REPORT: 57,
  NET_F_GUEST_HDRLEN: 59,
  NET_F_RSS: 60,
  NET_F_RSC_EXT: 61,
  NET_F_STANDBY: 62,
  NET_F_SPEED_DUPLEX: 63,
  // transport / reserved bits (VIRTIO v1.2 6), legacy ones included as vhost-user still carries them
  NOTIFY_ON_EMPTY: 24,
  /** VHOST_F_LOG_ALL: vhost-user.rst "Migration". */
  LOG_ALL: 26,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** VHOST_USER_F_PROTOCOL_FEATURES: the reused UNUSED bit 30 (vhost-user.rst "Communication"). */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  /** Called VIRTIO_F_IOMMU_PLATFORM in vhost-user.rst. */
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  NOTIF_CONFIG_DATA: 39,
  RING_RESET: 40,
  ADMIN_VQ: 41,
} as const satisfies Record<string, number>;
export type VirtioFeatureName = keyof typeof VirtioF;

/** vhost-user protocol feature bit numbers (vhost-user.rst "Protocol features"). */
export const ProtoF = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  /** The feature list spells it VHOST_USER_PROTOCOL_F_MTU, NET_SET_MTU's text ..._NET_MTU; same bit. */
  NET_MTU: 4,
  /** Previously SLAVE_REQ. */
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  /** Previously SLAVE_SEND_FD. */
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  /**
   * GET_VRING_BASE may leave requests in flight (recorded in the inflight region) instead of
   * draining them. Took bit 20 in QEMU in 2026 (see spec-notes: SHMEM moved to 21).
   */
  GET_VRING_BASE_INFLIGHT: 20,
  /** VIRTIO Shared Memory Regions: GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP/UNMAP. */
  SHMEM: 21,
} as const satisfies Record<string, number>;
export type ProtocolFeatureName = keyof typeof ProtoF;

/** Any name -> bit-number table (VirtioF, ProtoF, or a device's own). */
export type FeatureTable = Readonly<Record<string, number>>;

/** The mask with only bit `n` set. */
export function bit(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > 63) throw new RangeError(`feature bit ${n} out of range 0..63`);
  return 1n << BigInt(n);
}

/** Whether bit number `n` is set in `mask`. */
export function has(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}

/** The mask with all the given bit numbers set. */
export function maskOf(...bits: readonly number[]): bigint {
  let m = 0n;
  for (const n of bits) m |= bit(n);
  return m;
}

/** Bit numbers set in `mask`, ascending. */
export function bitsOf(mask: bigint): number[] {
  const out: number[] = [];
  for (let n = 0; n < 64; n++) if ((mask >> BigInt(n)) & 1n) out.push(n);
  return out;
}

/**
 * Names of the bits set in `mask`, ascending by bit number; bits absent from `table` render as
 * `bit<N>` so nothing is silently dropped from logs.
 */
export function featureNames(mask: bigint, table: FeatureTable): string[] {
  const byBit = new Map<number, string>();
  for (const [name, n] of Object.entries(table)) if (!byBit.has(n)) byBit.set(n, name);
  return bitsOf(mask).map((n) => byBit.get(n) ?? `bit${n}`);
}
