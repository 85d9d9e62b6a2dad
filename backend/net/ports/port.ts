/**
 * The port interface: where a device's frames go and come from (a TAP device, another vhost-user
 * device, later a NIC through our VFIO poll-mode driver). Frames are plain Ethernet frames with no
 * virtio header; a frame view is only valid during the call that passes it.
 *
 * Backpressure instead of loss where the other side can wait: a sink that has nowhere to put a
 * frame *right now* (guest RX ring empty) answers 'busy' and later calls the onSpace callback, so a
 * switch between two guests loses nothing; a sink that cannot take it at all answers 'dropped'.
 */
import type { NetHdr } from '../frame/net-hdr.ts';
import type { ChainReader, DirectBurst } from '../../../virtqueue/index.ts';

export type Delivery = 'ok' | 'busy' | 'dropped';

export interface FrameSink {
  /** The frame is bytes[0, byteLen) (default: all of bytes), so senders need not make a view per frame. */
  deliver(bytes: Uint8Array, hdr: NetHdr, byteLen?: number): Delivery;
  /**
   * Optional single-copy form for guest-to-guest switching: the frame is the next `byteLen` readable
   * bytes of `src` (the sender's TX chain, header already consumed), copied by the receiver straight
   * into its guest's RX buffers. Same answers as deliver(); on 'busy' the sender re-reads the chain
   * later, so the cursor position after any answer does not matter. Senders use it when present.
   */
  deliverChain?(src: ChainReader, hdr: NetHdr, byteLen: number): Delivery;
  /**
   * Optional form for a frame that is one contiguous piece of memory at an offset (a sender's TX
   * buffer popped with popDirect: guest memory, no view made per frame): bytes[offset, offset +
   * byteLen). `rawHdrBytes` > 0: bytes[offset - rawHdrBytes, offset) is the sender's virtio header as
   * its guest wrote it (little-endian, `hdr` is its parsed form), which a receiver with the same
   * header size may copy along with the frame. Same answers as deliver(). Senders use it when present.
   */
  deliverSpan?(bytes: Uint8Array, offset: number, byteLen: number, hdr: NetHdr, rawHdrBytes: number): Delivery;
  /**
   * Optional burst form of deliverSpan for plain frames (the sender negotiated no host offload, so
   * there is no header to carry: virtio v1.2 5.1.6.2.1): frame j is `src.bytes[src.offset[j] + hdrLen,
   * src.offset[j] + src.byteLen[j])` for j in [from, from + n), each at most a frame long. Only
   * between beginBurst and endBurst. Delivers from the front while it can place frames on its fast
   * path and returns how many it delivered (each one 'ok'); the sender hands the next frame to
   * deliverSpan, which decides (busy, dropped, merged), and may go on with deliverBurst after it.
   */
  deliverBurst?(src: DirectBurst, from: number, n: number, hdrLen: number): number;
  /** Register a one-shot callback for when a sink that answered 'busy' has room again. */
  onSpace(cb: () => void): void;
  /**
   * Optional burst brackets: between them a sink may defer publishing (a guest's used ring index,
   * its interrupt) to endBurst, once per burst instead of once per frame (DPDK publishes per burst).
   * Senders bracket at most a few dozen frames so the receiver sees them promptly.
   */
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
