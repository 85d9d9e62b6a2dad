/**
 * A scripted vhost-user FRONTEND that behaves like a virtio-user driver (DPDK's net_virtio_user), for
 * interop suites that run against any vhost-user backend process (DPDK net_vhost, vhost-user-ts, ...):
 * it negotiates features and protocol features (what the backend offers ∩ what the test asks for),
 * hands the backend a memfd as guest memory (SET_MEM_TABLE, one region at gpa 0), lays out a virtio-net
 * RX ring (0) and TX ring (1), split or packed (virtqueue/split-driver.ts, packed-driver.ts), gives
 * each real kick/call eventfds, enables them and sets DRIVER_OK when STATUS was negotiated.
 * Every request that may carry NEED_REPLY does once REPLY_ACK is negotiated; the answers are kept in
 * `acks` (vhost-user.rst REPLY_ACK: 0 = success).
 *
 * Frames go with a 12-byte virtio-net header (virtio v1.2 5.1.6: the header is 12 bytes with
 * VERSION_1), all zero on TX (no offloads); RX strips it. The driver polls the used rings (the call
 * eventfds exist because backends need them, e.g. DPDK only starts a ring with both fds).
 *
 * ```ts
 * const a = await DriverFrontend.connect({ path: s0 });
 * await a.start();
 * a.postRx(64);
 * a.send([frame1, frame2]);
 * const got = await b.receive(2, 5000);
 * const base = await a.getVringBase(1); // chains the backend consumed from A's TX ring
 * ```
 */
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, has, type VhostMessage } from '../../protocol/index.ts';
import { FlatMemory, SplitDriver, PackedDriver, type DriverBuffer, type UsedEntry } from '../../virtqueue/index.ts';
import { connectFrontend, type SocketFrontend, vringAddrAt } from './frontend-socket.ts';

export const NET_HDR_BYTES = 12;
/** virtio v1.2 2.1 Device Status Field. */
const STATUS_ACKNOWLEDGE = 1;
const STATUS_DRIVER = 2;
const STATUS_DRIVER_OK = 4;
const STATUS_FEATURES_OK = 8;

export interface DriverFrontendOptions {
  path: string;
  packed?: boolean;
  /** Ring size (default 256, virtio-user's default). */
  queueSize?: number;
  /** Virtio features asked for; ANDed with the offer. Default VERSION_1 | PROTOCOL_FEATURES (| RING_PACKED). */
  features?: bigint;
  /** Protocol features asked for; ANDed with the offer. Default MQ | REPLY_ACK | STATUS (virtio-user's set). */
  protocolFeatures?: bigint;
  /** Guest memory (memfd) size. Default 8 MiB. */
  memBytes?: number;
  /** RX buffer size (one writable descriptor each). Default 2048. */
  rxBufBytes?: number;
  /** Per-request reply timeout. Default 5000 ms. */
  timeoutMs?: number;
}

/** The driver's half of one ring, split or packed. */
interface RingDriver {
  addChain(bufs: readonly DriverBuffer[]): number;
  readUsed(): UsedEntry[];
  kick(): boolean;
  readonly desc: number;
  readonly driverArea: number;
  readonly deviceArea: number;
}

function splitRing(mem: FlatMemory, size: number, base: number, heapAddr: number, heapByteLen: number): RingDriver {
  const d = new SplitDriver(mem, { size, base, heapAddr, heapByteLen });
  return {
    addChain: (b) => d.addChain(b),
    readUsed: () => d.readUsed(),
    kick: () => d.kick(),
    desc: d.descAddr,
    driverArea: d.availAddr,
    deviceArea: d.usedAddr,
  };
}

function packedRing(mem: FlatMemory, size: number, base: number, heapAddr: number, heapByteLen: number): RingDriver {
  const d = new PackedDriver(mem, { size, base, heapAddr, heapByteLen });
  return {
    addChain: (b) => d.addChain(b),
    readUsed: () => d.readUsed(),
    kick: () => d.kick(),
    desc: d.descAddr,
    driverArea: d.driverEventAddr,
    deviceArea: d.deviceEventAddr,
  };
}

const UVA_BASE = 0x7f4400000000;
const value = (m: VhostMessage | null): bigint => (m!.payload as { value: bigint }).value;

export class DriverFrontend {
  readonly sf: SocketFrontend;
  readonly packed: boolean;
  readonly queueSize: number;
  readonly memfd: number;
  readonly memBytes: number;
  readonly mem: FlatMemory;
  private readonly ab: ArrayBuffer;
  private readonly fds: number[] = [];
  offeredFeatures = 0n;
  ackedFeatures = 0n;
  offeredProtocol = 0n;
  ackedProtocol = 0n;
  /** Every REPLY_ACK answer, in order: [request name, value]. */
  readonly acks: [string, bigint][] = [];
  rx!: RingDriver;
  tx!: RingDriver;
  readonly kick: number[] = [];
  readonly call: number[] = [];
  /** Frames received so far (header stripped), and the RX used lengths. */
  readonly received: Uint8Array[] = [];
  /** TX chains the backend has returned. */
  txCompleted = 0;
  private closed = false;

  private constructor(readonly opts: DriverFrontendOptions) {
    this.packed = opts.packed ?? false;
    this.queueSize = opts.queueSize ?? 256;
    this.memBytes = opts.memBytes ?? 8 << 20;
    this.sf = connectFrontend(native, { path: opts.path }, { timeoutMs: opts.timeoutMs ?? 5000 });
    this.memfd = native.memfdCreate('driver-frontend', false);
    native.ftruncate(this.memfd, this.memBytes);
    this.ab = native.mmap(this.memfd, 0, this.memBytes, true);
    this.mem = new FlatMemory(this.ab, 0);
  }

  /** Connects to the backend's socket (it listens). */
  static connect(opts: DriverFrontendOptions): DriverFrontend {
    return new DriverFrontend(opts);
  }

  get replyAck(): boolean {
    return has(this.ackedProtocol, ProtoF.REPLY_ACK);
  }

  /** A request, with NEED_REPLY once REPLY_ACK is negotiated for requests whose reply is only the ack. */
  private async req(id: number, payload: unknown, name: string, fds: number[] = []): Promise<void> {
    const needReply = this.replyAck;
    const r = await this.sf.fe.request(id, payload, { needReply, fds });
    if (needReply) {
      const v = value(r);
      this.acks.push([name, v]);
      if (v !== 0n) throw new Error(`${name}: backend answered REPLY_ACK ${v}`);
    }
  }

  /**
   * The virtio-user sequence: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_FEATURES,
   * SET_STATUS(FEATURES_OK), SET_MEM_TABLE, per ring NUM/BASE/ADDR/CALL/KICK, SET_VRING_ENABLE,
   * SET_STATUS(DRIVER_OK).
   */
  async start(): Promise<void> {
    const fe = this.sf.fe;
    await fe.request(R.SET_OWNER);
    this.offeredFeatures = value(await fe.request(R.GET_FEATURES));
    if (!has(this.offeredFeatures, VirtioF.PROTOCOL_FEATURES)) throw new Error('backend does not offer VHOST_USER_F_PROTOCOL_FEATURES');
    this.offeredProtocol = value(await fe.request(R.GET_PROTOCOL_FEATURES));
    const wantP = this.opts.protocolFeatures ?? bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK) | bit(ProtoF.STATUS);
    this.ackedProtocol = wantP & this.offeredProtocol;
    await fe.request(R.SET_PROTOCOL_FEATURES, this.ackedProtocol);
    const wantF = this.opts.features ?? bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES) | (this.packed ? bit(VirtioF.RING_PACKED) : 0n);
    this.ackedFeatures = wantF & this.offeredFeatures;
    if (this.packed && !has(this.ackedFeatures, VirtioF.RING_PACKED)) throw new Error('backend does not offer RING_PACKED');
    if (!has(this.ackedFeatures, VirtioF.VERSION_1)) throw new Error('backend does not offer VERSION_1');
    await this.req(R.SET_FEATURES, this.ackedFeatures, 'SET_FEATURES');
    const statusOn = has(this.ackedProtocol, ProtoF.STATUS);
    if (statusOn) await this.req(R.SET_STATUS, BigInt(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), 'SET_STATUS');
    const region = { guestPhysAddr: 0n, memorySize: BigInt(this.memBytes), userspaceAddr: BigInt(UVA_BASE), mmapOffset: 0n };
    await this.req(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, 'SET_MEM_TABLE', [this.memfd]);

    // Layout: RX ring at 0, TX ring at 64 KiB; RX buffers at 1 MiB, TX buffers at 4 MiB.
    const mk = this.packed ? packedRing : splitRing;
    const q = this.queueSize;
    const rxBytes = this.opts.rxBufBytes ?? 2048;
    this.rx = mk(this.mem, q, 0, 0x100000, Math.max(q * rxBytes, 0x100000));
    this.tx = mk(this.mem, q, 0x10000, 0x400000, this.memBytes - 0x400000);
    for (let index = 0; index < 2; index++) {
      const k = native.eventfd(0);
      const c = native.eventfd(0);
      this.fds.push(k, c);
      this.kick.push(k);
      this.call.push(c);
    }
    // virtio-user's fresh packed base: avail index 0 with the avail wrap counter set (bit 15).
    await this.setupRings([this.packed ? 0x8000 : 0, this.packed ? 0x8000 : 0]);
  }

  /** NUM, BASE (virtio-user's fresh base, or a saved one), ADDR, CALL, KICK per ring; ENABLE; DRIVER_OK. */
  private async setupRings(bases: readonly number[]): Promise<void> {
    const q = this.queueSize;
    for (const [index, ring] of [this.rx, this.tx].entries()) {
      await this.req(R.SET_VRING_NUM, { index, num: q }, 'SET_VRING_NUM');
      await this.req(R.SET_VRING_BASE, { index, num: bases[index]! }, 'SET_VRING_BASE');
      await this.req(
        R.SET_VRING_ADDR,
        vringAddrAt(index, UVA_BASE, ring.desc, ring.driverArea, ring.deviceArea),
        'SET_VRING_ADDR',
      );
      await this.req(R.SET_VRING_CALL, { index, noFd: false }, 'SET_VRING_CALL', [this.call[index]!]);
      await this.req(R.SET_VRING_KICK, { index, noFd: false }, 'SET_VRING_KICK', [this.kick[index]!]);
    }
    for (const index of [0, 1]) await this.req(R.SET_VRING_ENABLE, { index, num: 1 }, 'SET_VRING_ENABLE');
    if (has(this.ackedProtocol, ProtoF.STATUS)) {
      await this.req(R.SET_STATUS, BigInt(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK), 'SET_STATUS');
    }
  }

  /**
   * Starts both rings again after GET_VRING_BASE stopped them, from the bases it returned (what QEMU
   * does on vhost stop/start): the backend must continue where it stopped, with ring memory unchanged.
   */
  async restart(bases: readonly number[]): Promise<void> {
    await this.setupRings(bases);
    // Buffers posted while the rings were stopped, if any, wait for a kick.
    native.eventfdWrite(this.kick[0]!, 1n);
  }

  /** Posts `n` RX buffers and kicks ring 0. */
  postRx(n: number): void {
    const len = this.opts.rxBufBytes ?? 2048;
    for (let i = 0; i < n; i++) this.rx.addChain([{ byteLen: len, write: true }]);
    if (this.rx.kick()) native.eventfdWrite(this.kick[0]!, 1n);
  }

  /**
   * Puts each frame on the TX ring behind a zero header and kicks ring 1. `layout`: 'single' (header and
   * frame in one descriptor, as virtio-user does), 'split' (header and frame in two), 'mixed' (alternating).
   */
  send(frames: readonly Uint8Array[], layout: 'single' | 'split' | 'mixed' = 'mixed'): void {
    frames.forEach((f, i) => {
      const two = layout === 'split' || (layout === 'mixed' && i % 2 === 1);
      if (two) {
        this.tx.addChain([
          { byteLen: NET_HDR_BYTES, write: false, data: new Uint8Array(NET_HDR_BYTES) },
          { byteLen: f.length, write: false, data: f },
        ]);
      } else {
        const b = new Uint8Array(NET_HDR_BYTES + f.length);
        b.set(f, NET_HDR_BYTES);
        this.tx.addChain([{ byteLen: b.length, write: false, data: b }]);
      }
    });
    if (this.tx.kick()) native.eventfdWrite(this.kick[1]!, 1n);
  }

  /** Collects used entries of both rings (received frames, completed TX chains). */
  poll(): void {
    for (const u of this.rx.readUsed()) {
      if (!u.data || u.len < NET_HDR_BYTES) throw new Error(`RX used element id ${u.id} len ${u.len}: no frame`);
      this.received.push(u.data.slice(NET_HDR_BYTES));
    }
    this.txCompleted += this.tx.readUsed().length;
  }

  /** Waits until `n` frames in total were received; returns them all. */
  async receive(n: number, timeoutMs: number): Promise<Uint8Array[]> {
    await this.until(`${n} frames received`, () => this.received.length >= n, timeoutMs);
    return this.received;
  }

  /** Waits until `n` TX chains in total were completed. */
  async txDone(n: number, timeoutMs: number): Promise<void> {
    await this.until(`${n} TX chains completed`, () => this.txCompleted >= n, timeoutMs);
  }

  private async until(what: string, f: () => boolean, timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      if (f()) return;
      if (Date.now() > end) throw new Error(`driver frontend ${this.opts.path}: timeout waiting for ${what} (rx ${this.received.length}, tx done ${this.txCompleted})`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /** GET_VRING_BASE (stops the ring in the backend): the backend's next avail index (packed: with bit 15). */
  async getVringBase(index: number): Promise<number> {
    const r = await this.sf.fe.request(R.GET_VRING_BASE, { index, num: 0 });
    const p = r!.payload as { index: number; num: number };
    if (p.index !== index) throw new Error(`GET_VRING_BASE ${index} answered for ring ${p.index}`);
    return p.num >>> 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sf.close();
    for (const fd of this.sf.fe.pendingFds()) native.close(fd);
    native.munmap(this.ab);
    for (const fd of [this.memfd, ...this.fds]) native.close(fd);
  }
}

/**
 * Test frame k of `len` bytes (>= 60): broadcast destination, a locally administered source carrying
 * `tag`, ethertype 0x88b5 (IEEE local experimental), then k as u32 and a k-dependent byte pattern.
 */
export function testFrame(tag: number, k: number, len: number): Uint8Array {
  const f = new Uint8Array(len);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0x00, 0x00, 0x00, tag & 0xff, 0x01], 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  new DataView(f.buffer).setUint32(14, k);
  for (let i = 18; i < len; i++) f[i] = (k * 31 + i) & 0xff;
  return f;
}
