/**
 * The frame contract between a virtio-net device and its port: where a device's frames go and come
 * from (a TAP device, another vhost-user device through a pair, a NIC through our VFIO drivers).
 * Frames are Ethernet frames; the virtio header travels beside them, parsed (NetHdr). This comment is
 * the one description of the contract; implementations refer to it.
 *
 * ## Delivery: one required entry point, three optional faster forms
 * A sender (a device's TX path, a port's RX path) hands each frame to the sink with exactly one call:
 *
 * | entry point | the frame is | a sender uses it |
 * |---|---|---|
 * | `deliver(bytes, hdr, byteLen?)` | `bytes[0, byteLen)` | always possible (required) |
 * | `deliverSpan(bytes, offset, byteLen, hdr, rawHdrBytes)` | `bytes[offset, offset + byteLen)`: one contiguous piece of guest memory, no view made per frame | when present and the frame is one buffer |
 * | `deliverChain(src, hdr, byteLen)` | the next `byteLen` readable bytes of the sender's TX chain (header consumed) | when present and the frame spans descriptors |
 * | `deliverBurst(src, from, n, hdrLen)` | frame j of a burst of popped buffers: `src.bytes[src.offset[j] + hdrLen, src.offset[j] + src.byteLen[j])` | when present, between beginBurst/endBurst, for plain frames only (no host offload negotiated, virtio v1.2 5.1.6.2.1) |
 *
 * Each of the first three answers a Delivery: 'ok' (taken; the sender may reuse its buffer at once),
 * 'busy' (nowhere to put it *right now*, e.g. the guest's RX ring is empty: the sender keeps the
 * frame, a TX chain is given back to its ring, and waits for the `onSpace` callback; a switch between
 * two guests so loses nothing) or 'dropped' (it can never be taken: counted by the sink). On 'busy'
 * from deliverChain the sender re-reads the chain later, so the cursor position after any answer does
 * not matter. deliverBurst delivers from the front while it can place frames on its fast path and
 * returns how many it took (each one 'ok'); the sender hands the next frame to deliverSpan, which
 * decides (busy, dropped, merged), and may go on with deliverBurst after it.
 *
 * Views passed to a sink are valid only during the call. With `rawHdrBytes > 0`,
 * `bytes[offset - rawHdrBytes, offset)` is the sender's virtio header as its guest wrote it
 * (little-endian; `hdr` is its parsed form), which a receiver with the same header size may copy along.
 *
 * ## Bursts and backpressure
 * `beginBurst` / `endBurst` (optional) bracket a few dozen frames: between them a sink may defer
 * publishing (a guest's used ring index, its interrupt) to endBurst, once per burst instead of once per
 * frame, as DPDK publishes per burst. `onSpace(cb)` registers a one-shot callback for when a sink that
 * answered 'busy' has room again.
 */
import type { NetHdr } from '../frame/net-hdr.ts';
import type { ChainReader, DirectBurst } from '../../../virtqueue/index.ts';

export type Delivery = 'ok' | 'busy' | 'dropped';

/** The frame contract: see this file's top comment for every entry point and answer. */
export interface FrameSink {
  /** Required form: the frame is bytes[0, byteLen) (default: all of bytes). */
  deliver(bytes: Uint8Array, hdr: NetHdr, byteLen?: number): Delivery;
  /** Single-copy form for a frame that is the next `byteLen` readable bytes of the sender's chain. */
  deliverChain?(src: ChainReader, hdr: NetHdr, byteLen: number): Delivery;
  /** Contiguous form: bytes[offset, offset + byteLen), the sender's raw header in the `rawHdrBytes` before it. */
  deliverSpan?(bytes: Uint8Array, offset: number, byteLen: number, hdr: NetHdr, rawHdrBytes: number): Delivery;
  /** Burst form for plain frames, only between beginBurst and endBurst; returns how many it delivered. */
  deliverBurst?(src: DirectBurst, from: number, n: number, hdrLen: number): number;
  /** One-shot callback for when a sink that answered 'busy' has room again. */
  onSpace(cb: () => void): void;
  /** Burst brackets: publishing may be deferred to endBurst. */
  beginBurst?(): void;
  endBurst?(): void;
}

export interface PortStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  txDropped: number;
  rxDropped: number;
  /** Why the last dropped transmission failed (e.g. the system error of a write), for diagnostics. */
  lastTxError?: string;
}

export function emptyStats(): PortStats {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, txDropped: 0, rxDropped: 0 };
}

/** A port is a sink for frames the device transmits, and delivers what it receives to its device. */
export interface Port extends FrameSink {
  readonly name: string;
  readonly stats: PortStats;
  /** Where received frames go (the device's RX path). */
  connect(device: FrameSink): void;
  /**
   * The device's guest acked these virtio features: a port that can produce offloaded frames (TAP)
   * enables exactly the GUEST_* offloads the guest accepts.
   */
  configure?(guestFeatures: bigint): void;
  close(): void;
}
