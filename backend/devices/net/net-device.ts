/**
 * virtio-net device (virtio v1.2 §5.1): queue pairs (ring 2k = receiveq k, ring 2k+1 = transmitq k),
 * the virtio_net_hdr in front of every frame, mergeable RX buffers.
 *
 * The control queue is not ours: QEMU's vhost-user-net handles it in QEMU and DPDK virtio-user
 * emulates it, so neither sends it to a vhost-user backend.
 *
 * Frames move between the guest and one uplink Port. Backpressure is honoured both ways: when the
 * uplink is 'busy' the TX chain is given back (unpop) and TX resumes when the uplink has room; when
 * the guest has no RX buffers we answer 'busy' and call the waiters on the next RX kick.
 */
import createDebug from 'debug';
import { VirtioF, bit, has } from '../../../protocol/index.ts';
import { Chain, ChainReader, ChainWriter } from '../../../virtqueue/index.ts';
import type { Device, ReadyQueue } from '../../device.ts';
import type { Delivery, FrameSink, Port } from '../../ports/port.ts';
import { NET_HDR_LEGACY_BYTES, NET_HDR_MRG_BYTES, writeRxHeader } from './net-hdr.ts';

const log = createDebug('vhost:net');
/** Chains handled per kick before yielding to the event loop (fairness between rings and ports). */
const TX_BUDGET = 256;
/** A frame never exceeds 64 KiB of payload plus header (no GSO offloads are offered yet). */
const MAX_FRAME = 65536 + 64;
/** The most buffers one mergeable RX frame may take (virtio v1.2 5.1.6.4: num_buffers is a le16). */
const MAX_MRG_BUFFERS = 64;

/** Features this device offers (virtio v1.2 5.1.3). */
export const NET_FEATURES =
  bit(VirtioF.NET_F_MRG_RXBUF) |
  bit(VirtioF.NET_F_MQ) |
  bit(VirtioF.RING_INDIRECT_DESC) |
  bit(VirtioF.RING_EVENT_IDX) |
  bit(VirtioF.VERSION_1);

export interface NetStats {
  rxFrames: number;
  rxBytes: number;
  rxDroppedNoQueue: number;
  rxDroppedTooBig: number;
  txFrames: number;
  txBytes: number;
  txDropped: number;
}

export class NetDevice implements Device, FrameSink {
  readonly kind = 'net';
  readonly features: bigint;
  readonly maxRings: number;
  readonly queueNum: number;
  readonly stats: NetStats = {
    rxFrames: 0,
    rxBytes: 0,
    rxDroppedNoQueue: 0,
    rxDroppedTooBig: 0,
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
  };
  private hdrLen = NET_HDR_LEGACY_BYTES;
  private mergeable = false;
  private readonly rings: (ReadyQueue | null)[];
  private uplink: Port | null = null;
  private spaceWaiters: (() => void)[] = [];
  private readonly txScheduled: boolean[];
  private readonly label: string;

  // Reused per-packet objects: the hot path allocates nothing.
  private readonly chain = new Chain();
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  private readonly txBuf = new Uint8Array(MAX_FRAME);
  private readonly rxHeads = new Uint32Array(MAX_MRG_BUFFERS);
  private readonly rxLens = new Uint32Array(MAX_MRG_BUFFERS);
  private readonly mrgChains: Chain[] = Array.from({ length: MAX_MRG_BUFFERS }, () => new Chain());

  constructor(opts: { queuePairs: number; label?: string; features?: bigint }) {
    this.maxRings = opts.queuePairs * 2;
    this.queueNum = opts.queuePairs;
    this.features = opts.features ?? NET_FEATURES;
    this.rings = new Array<ReadyQueue | null>(this.maxRings).fill(null);
    this.txScheduled = new Array<boolean>(this.maxRings).fill(false);
    this.label = opts.label ?? 'net';
  }

  attachPort(port: Port): void {
    this.uplink = port;
    port.connect(this);
  }

  setFeatures(acked: bigint): void {
    this.mergeable = has(acked, VirtioF.NET_F_MRG_RXBUF);
    // virtio v1.2 5.1.6: the header has num_buffers when VERSION_1 or MRG_RXBUF is negotiated.
    this.hdrLen = this.mergeable || has(acked, VirtioF.VERSION_1) ? NET_HDR_MRG_BYTES : NET_HDR_LEGACY_BYTES;
    log('%s: features %s, header %d bytes, mergeable %s', this.label, acked.toString(16), this.hdrLen, this.mergeable);
  }

  ringReady(ring: ReadyQueue): void {
    this.rings[ring.index] = ring;
    if (ring.index % 2 === 1) this.kick(ring.index); // TX may already hold chains (reconnect, restart)
    else this.wakeSpaceWaiters();
  }

  ringStopped(index: number): void {
    this.rings[index] = null;
  }

  kick(index: number): void {
    if (index % 2 === 0) this.wakeSpaceWaiters();
    else this.processTx(index);
  }

  reset(): void {
    this.rings.fill(null);
    this.spaceWaiters = [];
  }

  sendRarp(mac: Uint8Array): void {
    this.uplink?.deliver(rarpFrame(mac));
  }

  // ---- guest TX -> uplink --------------------------------------------------------------------

  private processTx(index: number): void {
    const ring = this.rings[index];
    if (!ring) return;
    const q = ring.queue;
    const uplink = this.uplink;
    let done = 0;
    let blocked = false;
    const res = q.drain((chain) => {
      this.reader.reset(chain, ring.memory);
      const total = this.reader.remaining;
      if (total > MAX_FRAME) {
        // A chain this long is no frame we can carry: complete it unsent rather than stall the ring.
        this.stats.txDropped++;
        return 0;
      }
      const n = this.reader.read(this.txBuf, 0, total);
      if (n < this.hdrLen) {
        this.stats.txDropped++;
        return 0;
      }
      const frame = this.txBuf.subarray(this.hdrLen, n);
      const out: Delivery = uplink ? uplink.deliver(frame) : 'dropped';
      if (out === 'busy') {
        blocked = true;
        return false; // give the chain back; resume when the uplink has room
      }
      if (out === 'ok') {
        this.stats.txFrames++;
        this.stats.txBytes += frame.length;
      } else this.stats.txDropped++;
      done++;
      return 0; // TX buffers are read-only: used length 0 (virtio v1.2 5.1.6.2)
    }, TX_BUDGET, this.chain);
    if (res.notify) ring.notify();
    if (q.broken) return ring.fail(q.broken);
    if (blocked && uplink) {
      uplink.onSpace(() => this.processTx(index));
    } else if (res.processed >= TX_BUDGET && !this.txScheduled[index]) {
      // More may be pending: continue after other events had their turn.
      this.txScheduled[index] = true;
      setImmediate(() => {
        this.txScheduled[index] = false;
        this.processTx(index);
      });
    }
    if (done) log('%s: tx ring %d: %d frames', this.label, index, done);
  }

  // ---- uplink -> guest RX --------------------------------------------------------------------

  onSpace(cb: () => void): void {
    this.spaceWaiters.push(cb);
  }

  private wakeSpaceWaiters(): void {
    if (this.spaceWaiters.length === 0) return;
    const w = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const cb of w) cb();
  }

  /** Picks the RX ring for a frame: one flow stays on one ring (hash of the MAC/IP header bytes). */
  private pickRx(frame: Uint8Array): ReadyQueue | null {
    let first: ReadyQueue | null = null;
    let count = 0;
    for (let i = 0; i < this.maxRings; i += 2) {
      const r = this.rings[i];
      if (r) {
        if (!first) first = r;
        count++;
      }
    }
    if (count <= 1) return first;
    let h = 0;
    const end = Math.min(frame.length, 34);
    for (let i = 0; i < end; i++) h = (h * 31 + frame[i]!) | 0;
    let k = (h >>> 0) % count;
    for (let i = 0; i < this.maxRings; i += 2) {
      const r = this.rings[i];
      if (r && k-- === 0) return r;
    }
    return first;
  }

  deliver(frame: Uint8Array): Delivery {
    const ring = this.pickRx(frame);
    if (!ring) {
      this.stats.rxDroppedNoQueue++;
      return 'dropped';
    }
    const need = this.hdrLen + frame.length;
    const res = this.mergeable ? this.rxMergeable(ring, frame, need) : this.rxSingle(ring, frame, need);
    if (ring.queue.broken) {
      ring.fail(ring.queue.broken);
      return 'dropped';
    }
    if (res === 'ok') {
      this.stats.rxFrames++;
      this.stats.rxBytes += frame.length;
      if (ring.queue.flushUsed()) ring.notify();
    }
    return res;
  }

  private rxSingle(ring: ReadyQueue, frame: Uint8Array, need: number): Delivery {
    const q = ring.queue;
    const c = this.chain;
    if (!this.popRx(ring, c)) return 'busy';
    this.writer.reset(c, ring.memory);
    if (this.writer.remaining < need) {
      // virtio v1.2 5.1.6.3.1: without mergeable buffers the driver must post buffers big enough;
      // this one is not, so the frame is dropped and the buffer handed back untouched.
      q.unpop(1);
      this.stats.rxDroppedTooBig++;
      return 'dropped';
    }
    writeRxHeader(this.writer, this.hdrLen, 1);
    this.writer.write(frame, 0, frame.length);
    q.pushUsed(c.head, this.writer.written);
    return 'ok';
  }

  private rxMergeable(ring: ReadyQueue, frame: Uint8Array, need: number): Delivery {
    const q = ring.queue;
    let n = 0;
    let room = 0;
    while (room < need) {
      if (n === MAX_MRG_BUFFERS) {
        q.unpop(n);
        this.stats.rxDroppedTooBig++;
        return 'dropped';
      }
      const c = this.mrgChains[n]!;
      if (!this.popRx(ring, c)) {
        if (n) q.unpop(n);
        return 'busy';
      }
      this.writer.reset(c, ring.memory);
      room += this.writer.remaining;
      n++;
    }
    // Fill the buffers in order; num_buffers in the first header says how many were used.
    let off = 0;
    for (let i = 0; i < n; i++) {
      const c = this.mrgChains[i]!;
      this.writer.reset(c, ring.memory);
      if (i === 0) writeRxHeader(this.writer, this.hdrLen, n);
      const take = Math.min(this.writer.remaining, frame.length - off);
      if (take > 0) this.writer.write(frame, off, take);
      off += take;
      this.rxHeads[i] = c.head;
      this.rxLens[i] = this.writer.written;
    }
    for (let i = 0; i < n; i++) q.pushUsed(this.rxHeads[i]!, this.rxLens[i]!);
    return 'ok';
  }

  /** Pops one RX chain; false when the ring is empty (after re-enabling notifications) or broken. */
  private popRx(ring: ReadyQueue, c: Chain): boolean {
    const q = ring.queue;
    if (q.pop(c)) return true;
    // Empty: ask the driver to kick us when it posts buffers, then look once more (the race of
    // virtio v1.2 2.7.10: buffers added between our check and enabling notifications).
    if (q.enableNotification()) {
      q.disableNotification();
      return q.pop(c);
    }
    return false;
  }
}

/** A RARP announcement for `mac` (RFC 903), as sent after migration so switches learn the port. */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6); // broadcast
  f.set(mac, 6);
  const dv = new DataView(f.buffer);
  dv.setUint16(12, 0x8035); // ETH_P_RARP
  dv.setUint16(14, 1); // hardware type Ethernet
  dv.setUint16(16, 0x0800); // protocol IPv4
  f[18] = 6;
  f[19] = 4;
  dv.setUint16(20, 3); // reverse request
  f.set(mac, 22);
  f.set(mac, 32);
  return f;
}
