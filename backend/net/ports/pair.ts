/**
 * Switching between two vhost-user devices: a pair of ports where what one device transmits is
 * delivered straight into the other device's RX path, header included (the receiving device does in
 * software the offload work its guest did not negotiate). With `deliverChain` the receiving device copies
 * the frame from the sender's TX chain straight into its guest's RX buffers: one copy, guest memory to
 * guest memory (spec-notes/performance.md, 2026-11-23). The entry points are those of the frame
 * contract (port.ts). 'busy' propagates, so a guest whose peer has
 * no RX buffers is held back (its TX ring is left as is) instead of losing frames.
 */
import type { NetHdr } from '../frame/net-hdr.ts';
import type { ChainReader, DirectBurst } from '../../../virtqueue/index.ts';
import { emptyStats, type Delivery, type FrameSink, type Port, type PortStats } from './port.ts';

/** A frame (GSO included) never exceeds 64 KiB plus headers. */
const MAX_GATHER = 65536 + 64;

class PairPort implements Port {
  readonly stats: PortStats = emptyStats();
  device: FrameSink | null = null;
  peer!: PairPort;
  /** Only for a peer sink without deliverChain; allocated on first use. */
  private gatherBuf: Uint8Array | null = null;
  constructor(readonly name: string) {}

  connect(device: FrameSink): void {
    this.device = device;
  }
  /** The local device transmits: hand the frame to the peer's device. */
  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    const target = this.peer.device;
    if (!target) {
      this.stats.txDropped++;
      return 'dropped';
    }
    return this.count(target.deliver(frame, hdr, byteLen), byteLen);
  }
  /** Port statistics of one delivery on both ends of the pair. */
  private count(res: Delivery, byteLen: number): Delivery {
    if (res === 'ok') {
      this.stats.txFrames++;
      this.stats.txBytes += byteLen;
      this.peer.stats.rxFrames++;
      this.peer.stats.rxBytes += byteLen;
    } else if (res === 'dropped') this.stats.txDropped++;
    return res;
  }
  /**
   * Single copy: the peer device copies from our guest's TX chain straight into its guest's RX
   * buffers (no intermediate buffer). A peer without that form gets the bytes gathered first.
   */
  deliverChain(src: ChainReader, hdr: NetHdr, byteLen: number): Delivery {
    const target = this.peer.device;
    if (!target) {
      this.stats.txDropped++;
      return 'dropped';
    }
    let res: Delivery;
    if (target.deliverChain !== undefined) res = target.deliverChain(src, hdr, byteLen);
    else {
      const buf = this.gatherBuf ?? (this.gatherBuf = new Uint8Array(MAX_GATHER));
      res = target.deliver(buf, hdr, src.read(buf, 0, byteLen));
    }
    return this.count(res, byteLen);
  }
  /** A contiguous frame (the sender's one-descriptor TX buffer): the peer copies it once. */
  deliverSpan(bytes: Uint8Array, offset: number, byteLen: number, hdr: NetHdr, rawHdrBytes: number): Delivery {
    const target = this.peer.device;
    if (!target) {
      this.stats.txDropped++;
      return 'dropped';
    }
    const res =
      target.deliverSpan !== undefined
        ? target.deliverSpan(bytes, offset, byteLen, hdr, rawHdrBytes)
        : target.deliver(offset === 0 ? bytes : bytes.subarray(offset, offset + byteLen), hdr, byteLen);
    return this.count(res, byteLen);
  }
  /** A run of plain frames from our guest's TX burst: the peer places what its fast path can. */
  deliverBurst(src: DirectBurst, from: number, n: number, hdrLen: number): number {
    const target = this.peer.device;
    if (target === null || target.deliverBurst === undefined) return 0;
    const got = target.deliverBurst(src, from, n, hdrLen);
    if (got > 0) {
      let bytes = 0;
      const lens = src.byteLen;
      for (let j = from; j < from + got; j++) bytes += lens[j]! - hdrLen;
      this.stats.txFrames += got;
      this.stats.txBytes += bytes;
      this.peer.stats.rxFrames += got;
      this.peer.stats.rxBytes += bytes;
    }
    return got;
  }
  beginBurst(): void {
    this.peer.device?.beginBurst?.();
  }
  endBurst(): void {
    this.peer.device?.endBurst?.();
  }
  onSpace(cb: () => void): void {
    const target = this.peer.device;
    if (target) target.onSpace(cb);
  }
  close(): void {
    this.device = null;
  }
}

export function portPair(nameA: string, nameB: string): [Port, Port] {
  const a = new PairPort(nameA);
  const b = new PairPort(nameB);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
