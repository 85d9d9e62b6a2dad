/**
 * The device interface: what a virtio device (net is the first) implements to be served by a session.
 * Like rust-vmm's VhostUserBackend, a device never sees a vhost-user message: the session turns
 * messages into ring readiness edges and feature/config calls.
 */
import type { GuestMemory, Virtqueue } from '../../virtqueue/index.ts';

/** One ring that is started, enabled and mapped: the device may process it. */
export interface ReadyQueue {
  readonly index: number;
  readonly queue: Virtqueue;
  readonly memory: GuestMemory;
  /**
   * Legacy big-endian ring (vhost-user.rst SET_VRING_ENDIAN 1): the queue already swaps ring fields;
   * device structures in the buffers that the legacy interface puts in the guest's byte order (the
   * virtio-net header, virtio v1.2 5.1.6.1) are big-endian too. Absent / false: little-endian.
   */
  readonly bigEndian?: boolean;
  /** Signal the driver (call eventfd) that used buffers are available. */
  notify(): void;
  /** Report that this ring is broken (guest error): signals the err eventfd, stops the ring. */
  fail(err: Error): void;
}

/** Largest internal state a device saves or loads (SET_DEVICE_STATE_FD); ours are tiny. */
export const MAX_DEVICE_STATE_BYTES = 64 * 1024;

/** A virtio device configuration space served through GET_CONFIG / SET_CONFIG (protocol feature CONFIG). */
export interface DeviceConfigSpace {
  readonly size: number;
  read(offset: number, size: number): Uint8Array;
  /** `migration`: VHOST_SET_CONFIG_TYPE_MIGRATION (restoring a migrated device) vs. a driver write. */
  write(offset: number, bytes: Uint8Array, migration: boolean): void;
  /** NET_SET_MTU, for devices that have an MTU. */
  setMtu?(mtu: number): void;
  /** Set by the session: the backend changed the space itself (-> CONFIG_CHANGE_MSG). */
  onChange: (() => void) | null;
}

export interface Device {
  readonly kind: string;
  /** Virtio feature bits offered (the session adds PROTOCOL_FEATURES itself). */
  readonly features: bigint;
  /** Number of vrings the device exposes (for net: 2 × queue pairs). */
  readonly maxRings: number;
  /** What GET_QUEUE_NUM answers (for net: queue pairs, as QEMU and DPDK read it). */
  readonly queueNum: number;
  /** Called on SET_FEATURES with the acked subset. */
  setFeatures(acked: bigint): void;
  /** Ring edges, computed by the session after every message. */
  ringReady(ring: ReadyQueue): void;
  ringStopped(index: number): void;
  /** The driver kicked this ring. */
  kick(index: number): void;
  /** The frontend went away or reset the device: drop all ring references. */
  reset(): void;
  /** The configuration space, for frontends that negotiate CONFIG. */
  readonly config?: DeviceConfigSpace;
  /** Internal state for SET_DEVICE_STATE_FD (vhost-user.rst "Migrating back-end state"). */
  saveState?(): Uint8Array;
  /** Applies a state saved by saveState; throws (nothing applied) on malformed input. */
  loadState?(bytes: Uint8Array): void;
  /** SEND_RARP (protocol feature RARP): announce the guest MAC on the uplink. */
  sendRarp?(mac: Uint8Array): void;
  /**
   * The device honours ReadyQueue.bigEndian for its own structures in the buffers (legacy
   * big-endian guests): without it the session does not offer CROSS_ENDIAN.
   */
  readonly bigEndianRings?: boolean;
}
