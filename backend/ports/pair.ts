/**
 * Switching between two vhost-user devices: a pair of ports where what one device transmits is
 * delivered straight into the other device's RX path, header included (the receiving device does in
 * software the offload work its guest did not negotiate). 'busy' propagates, so a guest whose peer has
 * no RX buffers is held back (its TX ring is left as is) instead of losing frames.
 */
import type { NetHdr } from '../devices/net/net-hdr.ts';
import { emptyStats, type Delivery, type FrameSink, type Port, type PortStats } from './port.ts';

class PairPort implements Port {
  readonly stats: PortStats = emptyStats();
  device: FrameSink | null = null;
  peer!: PairPort;
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
    const res = target.deliver(frame, hdr, byteLen);
    if (res === 'ok') {
      this.stats.txFrames++;
      this.stats.txBytes += byteLen;
      this.peer.stats.rxFrames++;
      this.peer.stats.rxBytes += byteLen;
    } else if (res === 'dropped') this.stats.txDropped++;
    return res;
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
