/**
 * The fuzzer's sequence generator: a pure function of (seed, index) so any sequence can be replayed
 * alone (`--seed S --replay K`). A sequence is a valid-looking session opening (protocol and virtio
 * features picked from what the backend offers, memory table, rings with fds of random kinds, traffic
 * with random descriptors and indices, random extra requests) to which mutations are applied: request
 * ids 0-60, flag bits, payload sizes and bytes, fd counts and kinds, ring contents, message order.
 *
 * Ops are plain data (hex strings for bytes) so a failing sequence is written to a file as JSON.
 */
import { ringArea } from './raw-frontend.ts';
import {
  DESC_F_INDIRECT,
  DESC_F_NEXT,
  DESC_F_WRITE,
  F_NEED_REPLY,
  F_REPLY,
  F_VERSION,
  IOTLB_UPDATE,
  NET_HDR_V1,
  PF,
  Req,
  VF,
  bit,
  configSpace,
  deviceState,
  inflightDesc,
  iotlb,
  logDesc,
  memTable,
  singleRegion,
  u64,
  vringAddr,
  vringFd,
  vringState,
  type Region,
} from './wire.ts';

// ---- PRNG (sfc32, seeded per sequence) ------------------------------------------------------------

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number, index: number) {
    this.a = 0x9e3779b9 ^ seed;
    this.b = 0x243f6a88 ^ index;
    this.c = 0xb7e15162 ^ Math.imul(seed, 0x85ebca6b);
    this.d = 1 ^ Math.imul(index, 0xc2b2ae35);
    for (let i = 0; i < 15; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** [0, n) */
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A random subset of the set bits of `mask`, each kept with probability p. */
  subset(mask: bigint, p: number): bigint {
    let m = 0n;
    for (let i = 0n; i < 64n; i++) if ((mask >> i) & 1n && this.chance(p)) m |= 1n << i;
    return m;
  }
}

// ---- sequences -------------------------------------------------------------------------------------

/**
 * What an fd slot of a message carries: the guest memory memfd, a pooled fd of a kind (sendmsg passes
 * a copy), a fresh socketpair end whose other end we serve as the back-end channel ('chan'), a fresh
 * pipe whose writer we may hang up ('pipe!'), or a fresh socket whose peer we may hang up ('socket!').
 */
export type FdSpec = 'mem' | 'eventfd' | 'pipe' | 'socket' | 'memfd' | 'devnull' | 'dir' | 'chan' | 'pipe!' | 'socket!';

export type Op =
  | { op: 'msg'; id: number; flags: number; size?: number; payload: string; fds: FdSpec[]; note?: string }
  | { op: 'raw'; bytes: string; fds: FdSpec[]; note?: string }
  | { op: 'mem'; at: number; bytes: string; note?: string }
  | { op: 'poke'; fd: FdSpec }
  | { op: 'hangup'; fd: 'pipe!' | 'socket!' }
  /** The well-behaved session on B transmits `n` frames of `len` bytes: they arrive on A's RX ring. */
  | { op: 'feed'; n: number; len: number }
  | { op: 'yield' };

export interface Sequence {
  seed: number;
  index: number;
  ops: Op[];
  /** The last op leaves a message unfinished: close without the final GET_FEATURES. */
  noSync: boolean;
}

export interface Offer {
  features: bigint;
  proto: bigint;
  /** Guest memory size (the fuzzer's memfd). */
  memBytes: number;
  uva: bigint;
}

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString('hex');
export const bytesOf = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

const WRONG_KINDS: FdSpec[] = ['pipe', 'socket', 'memfd', 'devnull', 'dir', 'pipe!', 'socket!'];
const ALL_KINDS: FdSpec[] = ['mem', 'eventfd', 'pipe', 'socket', 'memfd', 'devnull', 'dir', 'chan', 'pipe!', 'socket!'];

/** Where the buffers and indirect tables of a sequence live in guest memory (rings: ringArea). */
const BUF_AREA = 0x40000;
const TABLE_AREA = 0x80000;

class Builder {
  readonly ops: Op[] = [];
  constructor(
    readonly rng: Rng,
    readonly offer: Offer,
  ) {}
  msg(id: number, payload: Uint8Array, fds: FdSpec[] = [], flags = F_VERSION, note?: string): void {
    this.ops.push({ op: 'msg', id, flags, payload: hexOf(payload), fds, ...(note ? { note } : {}) });
  }
  /** NEED_REPLY most of the time (replies are read and dropped; they keep the backend's send path busy). */
  flags(): number {
    return F_VERSION | (this.rng.chance(0.5) ? F_NEED_REPLY : 0);
  }
  mem(at: number, bytes: Uint8Array, note?: string): void {
    this.ops.push({ op: 'mem', at, bytes: hexOf(bytes), ...(note ? { note } : {}) });
  }
  region(): Region {
    const r = this.rng;
    const base: Region = { gpa: 0n, size: BigInt(this.offer.memBytes), uva: this.offer.uva, offset: 0n };
    if (r.chance(0.85)) return base;
    switch (r.int(5)) {
      case 0:
        return { ...base, size: BigInt(r.pick([1, 4096, this.offer.memBytes + 4096, 0, 2 ** 33])) };
      case 1:
        return { ...base, offset: BigInt(r.pick([4096, this.offer.memBytes, 1, 2 ** 40])) };
      case 2:
        return { ...base, gpa: r.u64(), uva: r.u64() };
      case 3:
        return { ...base, size: BigInt(this.offer.memBytes / 2), offset: BigInt(this.offer.memBytes / 2) };
      default:
        return { gpa: r.u64() & 0xffffffffn, size: BigInt(r.int(this.offer.memBytes) + 1), uva: r.u64(), offset: BigInt(r.int(4) * 4096) };
    }
  }
  ringIndex(): number {
    const r = this.rng;
    return r.chance(0.9) ? r.int(2) : r.pick([2, 3, 127, 255, 256, 0xffffffff]);
  }
}

/** A descriptor's 16 bytes. */
function desc(addr: bigint, len: number, flags: number, next: number): Uint8Array {
  const b = new Uint8Array(16);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, BigInt.asUintN(64, addr), true);
  dv.setUint32(8, len >>> 0, true);
  dv.setUint16(12, flags & 0xffff, true);
  dv.setUint16(14, next & 0xffff, true);
  return b;
}

function u16(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v & 0xffff, true);
  return b;
}

interface RingPlan {
  index: number;
  size: number;
  kick: FdSpec | 'nofd';
  /** Our avail.idx shadow. */
  idx: number;
  /** Chains we think the device has not taken yet (a driver keeps this <= size, most of the time). */
  outstanding: number;
}

/**
 * Traffic on one ring: chains written to guest memory, avail.idx moved, a kick. A `clean` sequence
 * writes what a correct driver writes (heads in ring order, chains that end, writable buffers on RX,
 * read-only on TX, tables of sane length), so the datapath gets deep; otherwise anything goes (random
 * heads and descriptors, loops, nested or huge indirect tables, index jumps).
 */
function traffic(b: Builder, ring: RingPlan, inband: boolean, clean: boolean): void {
  const r = b.rng;
  const area = ringArea(ring.index);
  const rx = ring.index % 2 === 0;
  const wr = rx ? DESC_F_WRITE : 0;
  const room = Math.max(0, ring.size - ring.outstanding);
  const n = clean || r.chance(0.9) ? Math.min(r.range(1, 4), room) : r.range(1, 4);
  ring.outstanding += n;
  for (let k = 0; k < n; k++) {
    // A correct driver's free descriptors: we use the avail position as the head (one chain per slot;
    // multi-descriptor chains go through an indirect table in clean mode).
    const head = clean ? ring.idx % ring.size : r.chance(0.8) ? r.int(ring.size) : r.int(0x10000);
    const kind = clean ? r.pick([0, 0, 0, 1, 2]) : r.int(10);
    const buf = BUF_AREA + (clean ? 0x800 * (ring.idx % 64) : r.int(0x30000));
    if (kind === 0 || (!clean && kind < 5)) {
      // One descriptor: a TX frame (header + frame) or an RX buffer.
      const len = rx
        ? r.pick(clean ? [2048, 2048, 1526, 72] : [2048, 4096, 65562, 72, 1526, 0, 11])
        : NET_HDR_V1 + r.pick(clean ? [60, 64, 1000, 1500] : [60, 1500, 1514, 9000, 65536, 0, 11, 12]);
      if (!rx) b.mem(buf, r.bytes(Math.min(len, 64)));
      b.mem(area.desc + 16 * (head % ring.size), desc(BigInt(buf), Math.min(len, clean ? 0x800 : len), wr, 0), 'desc');
    } else if (kind === 1 || (!clean && kind < 7)) {
      // A chain of NEXT descriptors in the ring's table (clean: within the ring, in order, ending).
      const len = clean ? Math.min(r.range(2, 4), ring.size) : r.range(1, 6);
      for (let i = 0; i < len; i++) {
        const at = (head + i) % ring.size;
        const next = clean || r.chance(0.8) ? (head + i + 1) % ring.size : r.int(0x10000);
        const more = i + 1 < len || (!clean && r.chance(0.1));
        const flags = (more ? DESC_F_NEXT : 0) | (clean ? wr : r.chance(0.2) ? DESC_F_WRITE : 0);
        b.mem(area.desc + 16 * at, desc(BigInt(buf + 0x200 * i), clean ? r.pick([12, 64, 500]) : r.range(0, 200), flags, next), 'chain');
      }
    } else if (kind === 2 || (!clean && kind < 9)) {
      // An indirect table (dirty: sometimes nested, empty, misaligned or huge).
      const table = TABLE_AREA + 0x1000 * r.int(64);
      const count = clean ? r.pick([1, 2, 3, 8]) : r.pick([1, 2, 3, 8, 64, 0]);
      for (let i = 0; i < count; i++) {
        const flags = (i + 1 < count ? DESC_F_NEXT : 0) | (clean ? wr : (r.chance(0.05) ? DESC_F_INDIRECT : 0) | (r.chance(0.1) ? DESC_F_WRITE : 0));
        const next = clean || r.chance(0.9) ? i + 1 : r.int(0x10000);
        b.mem(table + 16 * i, desc(BigInt(buf + 0x100 * i), clean ? r.pick([12, 100, 256]) : r.range(0, 128), flags, next));
      }
      const tlen = clean || r.chance(0.85) ? 16 * count : r.pick([0, 7, 16 * 32769, 0xffffffff]);
      const hflags = DESC_F_INDIRECT | (!clean && r.chance(0.1) ? DESC_F_NEXT : 0);
      b.mem(area.desc + 16 * (head % ring.size), desc(BigInt(table), tlen, hflags, r.int(ring.size)), 'indirect');
    } else {
      b.mem(area.desc + 16 * (head % ring.size), r.bytes(16), 'random desc');
    }
    b.mem(area.avail + 4 + 2 * (ring.idx % ring.size), u16(head));
    ring.idx = (ring.idx + 1) & 0xffff;
  }
  // avail.idx: right, or (dirty) sometimes a jump; the used ring and avail.flags scribbled now and then.
  const idx = clean || r.chance(0.9) ? ring.idx : r.int(0x10000);
  b.mem(area.avail + 2, u16(idx), 'avail.idx');
  if (!clean && r.chance(0.05)) b.mem(area.used + 2, u16(r.int(0x10000)), 'used.idx');
  if (!clean && r.chance(0.05)) b.mem(area.avail, u16(r.int(4)), 'avail.flags');
  if (inband && r.chance(0.5)) b.msg(Req.VRING_KICK, vringState(ring.index, 0), [], b.flags());
  else if (ring.kick !== 'nofd') b.ops.push({ op: 'poke', fd: ring.kick });
  // TX chains are taken as soon as the kick is seen; RX buffers when frames arrive (feed).
  if (!rx) ring.outstanding = 0;
  if (r.chance(0.3)) b.ops.push({ op: 'yield' });
}

/** A request of a random id (mostly the ones the backend implements), plausibly shaped or not. */
function extra(b: Builder, rings: RingPlan[]): void {
  const r = b.rng;
  const ri = b.ringIndex();
  const fl = b.flags();
  const id = r.chance(0.85) ? r.pick(Object.values(Req)) : r.int(61);
  const area = ringArea(ri & 1);
  switch (id) {
    case Req.SET_FEATURES:
      return b.msg(id, u64(r.chance(0.8) ? r.subset(b.offer.features, 0.5) : r.u64()), [], fl);
    case Req.SET_PROTOCOL_FEATURES:
      return b.msg(id, u64(r.chance(0.8) ? r.subset(b.offer.proto, 0.5) : r.u64()), [], fl);
    case Req.SET_MEM_TABLE: {
      const n = r.pick([1, 1, 1, 2, 0, 8, 9]);
      const regions = Array.from({ length: Math.min(n, 9) }, () => b.region());
      const fds = regions.map(() => (r.chance(0.9) ? 'mem' : r.pick(ALL_KINDS)) as FdSpec);
      return b.msg(id, memTable(regions, r.chance(0.95) ? n : r.int(300)), r.chance(0.9) ? fds : fds.slice(0, r.int(fds.length + 1)), fl);
    }
    case Req.ADD_MEM_REG:
      return b.msg(id, singleRegion(b.region()), [r.chance(0.85) ? 'mem' : r.pick(ALL_KINDS)], fl);
    case Req.REM_MEM_REG:
      return b.msg(id, singleRegion(b.region()), r.chance(0.3) ? ['mem'] : [], fl);
    case Req.SET_LOG_BASE:
      return b.msg(id, logDesc(BigInt(r.pick([4096, 8192, 1 << 20, 0])), BigInt(r.pick([0, 4096, 1 << 30]))), [r.pick<FdSpec>(['memfd', 'mem', 'devnull', 'pipe'])], fl);
    case Req.SET_LOG_FD:
      return b.msg(id, new Uint8Array(0), [r.pick<FdSpec>(['eventfd', 'pipe', 'memfd'])], fl);
    case Req.SET_VRING_NUM:
    case Req.SET_VRING_BASE:
    case Req.GET_VRING_BASE:
    case Req.SET_VRING_ENABLE:
    case Req.SET_VRING_ENDIAN:
    case Req.VRING_KICK:
      return b.msg(id, vringState(ri, r.chance(0.7) ? r.pick([0, 1, 2, 64, 256, 32768]) : r.u32()), [], fl);
    case Req.SET_VRING_ADDR:
      return b.msg(
        id,
        r.chance(0.7)
          ? vringAddr(ri, b.offer.uva + BigInt(area.desc), b.offer.uva + BigInt(area.used), b.offer.uva + BigInt(area.avail), r.int(2), BigInt(r.int(1 << 20)))
          : vringAddr(ri, r.u64(), r.u64(), r.u64(), r.u32(), r.u64()),
        [],
        fl,
      );
    case Req.SET_VRING_KICK:
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR: {
      const nofd = r.chance(0.15);
      const kind: FdSpec = r.chance(0.7) ? 'eventfd' : r.pick(WRONG_KINDS);
      if (id === Req.SET_VRING_KICK && !nofd) {
        const ring = rings.find((x) => x.index === ri);
        if (ring) ring.kick = kind;
      }
      return b.msg(id, vringFd(ri, nofd), nofd ? (r.chance(0.1) ? ['eventfd'] : []) : r.chance(0.95) ? [kind] : [], fl);
    }
    case Req.SET_BACKEND_REQ_FD:
      return b.msg(id, new Uint8Array(0), [r.chance(0.6) ? 'chan' : r.pick(ALL_KINDS)], fl);
    case Req.IOTLB_MSG: {
      const inside = r.chance(0.6);
      const size = BigInt(r.pick([4096, 0x10000, b.offer.memBytes, 0]));
      const uaddr = inside ? b.offer.uva + BigInt(r.int(b.offer.memBytes / 4096) * 4096) : r.u64();
      return b.msg(id, iotlb(r.chance(0.7) ? IOTLB_UPDATE : r.int(6), inside ? uaddr - b.offer.uva : r.u64(), size, uaddr, r.int(5)), [], fl);
    }
    case Req.GET_CONFIG:
    case Req.SET_CONFIG: {
      const size = r.pick([0, 6, 8, 12, 256, 257]);
      return b.msg(id, configSpace(r.pick([0, 6, 8, 250]), size, r.int(3), r.bytes(Math.min(size, 256))), [], fl);
    }
    case Req.NET_SET_MTU:
      return b.msg(id, u64(r.pick([68, 1500, 9000, 65535, 65536, 0])), [], fl);
    case Req.SEND_RARP:
      return b.msg(id, r.bytes(8), [], fl);
    case Req.SET_STATUS:
      return b.msg(id, u64(r.pick([0, 1, 3, 0xb, 0xf, 0x40, 0x80, 0x1ff])), [], fl);
    case Req.GET_INFLIGHT_FD:
      return b.msg(id, inflightDesc(0n, 0n, r.pick([1, 2, 0, 0xffff]), r.pick([64, 256, 0, 3, 0x8000])), [], fl);
    case Req.SET_INFLIGHT_FD:
      return b.msg(
        id,
        inflightDesc(BigInt(r.pick([4096, 8192, 1 << 20, 0])), BigInt(r.pick([0, 4096])), r.pick([1, 2, 0]), r.pick([64, 256, 0])),
        [r.pick<FdSpec>(['memfd', 'mem', 'pipe', 'devnull'])],
        fl,
      );
    case Req.SET_DEVICE_STATE_FD:
      return b.msg(id, deviceState(r.int(3), r.int(2)), [r.pick<FdSpec>(['socket!', 'pipe', 'memfd', 'devnull'])], fl);
    default:
      // Everything else (and ids the spec does not define): random bytes of a random length.
      return b.msg(id, r.bytes(r.pick([0, 0, 8, 8, 16, 40, r.int(300)])), r.chance(0.2) ? [r.pick(ALL_KINDS)] : [], r.chance(0.1) ? r.u32() : fl);
  }
}

/** Mutations of one message in place: id, flags, size/payload, fds. */
function mutate(b: Builder, op: Extract<Op, { op: 'msg' }>): void {
  const r = b.rng;
  switch (r.int(7)) {
    case 0:
      op.id = r.int(61);
      op.note = 'id mutated';
      break;
    case 1:
      op.flags = r.pick([0, F_VERSION | F_REPLY, F_VERSION | F_REPLY | F_NEED_REPLY, 0x2, 0x3, r.u32(), F_VERSION | 0x10]);
      op.note = 'flags mutated';
      break;
    case 2: {
      // Payload resized (the header's size follows: framing stays intact).
      const p = bytesOf(op.payload);
      const n = r.pick([0, 1, 7, Math.max(0, p.length - 1), p.length + 1, p.length + 8, 4096, 8192, 8193]);
      const q = new Uint8Array(n);
      q.set(p.subarray(0, n));
      q.set(r.bytes(Math.max(0, n - p.length)), Math.min(p.length, n));
      op.payload = hexOf(q);
      op.note = 'size mutated';
      break;
    }
    case 3: {
      const p = bytesOf(op.payload);
      for (let i = r.range(1, 4); i > 0 && p.length > 0; i--) p[r.int(p.length)] = r.u32() & 0xff;
      op.payload = hexOf(p);
      op.note = 'payload bytes mutated';
      break;
    }
    case 4:
      op.fds = Array.from({ length: r.pick([0, 1, 2, 3, 8]) }, () => r.pick(ALL_KINDS));
      op.note = 'fds mutated';
      break;
    case 5:
      op.fds = op.fds.map(() => r.pick(ALL_KINDS));
      op.note = 'fd kinds mutated';
      break;
    default:
      // A header whose size field exceeds the cap: the connection must end, nothing else.
      op.size = r.pick([0x10000, 0xffffffff, 8193]);
      op.note = 'size field too large';
      break;
  }
}

export function generate(seed: number, index: number, offer: Offer): Sequence {
  const r = new Rng(seed, index);
  const b = new Builder(r, offer);
  const fl = () => b.flags();

  // -- the opening: features, memory, rings --
  let proto = r.chance(0.9) ? r.subset(offer.proto, 0.6) | (r.chance(0.8) ? bit(PF.REPLY_ACK) : 0n) : r.u64();
  proto &= r.chance(0.95) ? offer.proto : ~0n;
  // In-band notifications are only valid with BACKEND_REQ and REPLY_ACK: usually keep the set valid.
  if ((proto & bit(PF.INBAND_NOTIFICATIONS)) !== 0n && r.chance(0.9)) {
    proto = r.chance(0.5) ? proto | bit(PF.BACKEND_REQ) | bit(PF.REPLY_ACK) : proto & ~bit(PF.INBAND_NOTIFICATIONS);
  }
  const inband = (proto & bit(PF.INBAND_NOTIFICATIONS)) !== 0n;
  let features = bit(VF.VERSION_1) | bit(VF.PROTOCOL_FEATURES) | r.subset(offer.features, 0.4);
  if (r.chance(0.7)) features &= ~bit(VF.RING_PACKED); // mostly split rings: our ring writes are split
  if (r.chance(0.7)) features &= ~bit(VF.ACCESS_PLATFORM);
  if (r.chance(0.8)) features &= ~bit(VF.LOG_ALL);
  b.msg(Req.GET_PROTOCOL_FEATURES, new Uint8Array(0));
  b.msg(Req.SET_PROTOCOL_FEATURES, u64(proto), [], fl());
  b.msg(Req.SET_OWNER, new Uint8Array(0), [], fl());
  if ((proto & bit(PF.BACKEND_REQ)) !== 0n && r.chance(0.8)) b.msg(Req.SET_BACKEND_REQ_FD, new Uint8Array(0), [r.chance(0.85) ? 'chan' : r.pick(ALL_KINDS)], fl());
  b.msg(Req.SET_FEATURES, u64(features), [], fl());
  if ((proto & bit(PF.CONFIGURE_MEM_SLOTS)) !== 0n && r.chance(0.5)) b.msg(Req.ADD_MEM_REG, singleRegion(b.region()), ['mem'], fl());
  else b.msg(Req.SET_MEM_TABLE, memTable([b.region()]), ['mem'], fl());
  const iommu = (features & bit(VF.ACCESS_PLATFORM)) !== 0n;
  if (iommu) {
    b.msg(Req.IOTLB_MSG, iotlb(IOTLB_UPDATE, 0n, BigInt(offer.memBytes), offer.uva), [], fl());
  }
  const rings: RingPlan[] = [];
  for (const index of r.chance(0.35) ? [0, 1] : r.chance(0.7) ? [1] : [0]) {
    const size = r.chance(0.85) ? r.pick([2, 4, 16, 64, 256]) : r.pick([0, 3, 100, 32768, 65536]);
    const ring: RingPlan = { index, size: Math.max(1, Math.min(size, 256)), kick: 'eventfd', idx: 0, outstanding: 0 };
    rings.push(ring);
    const area = ringArea(index);
    b.msg(Req.SET_VRING_NUM, vringState(index, size), [], fl());
    // With ACCESS_PLATFORM ring addresses are IOVAs: the UPDATE above maps IOVA = guest address.
    const at = (x: number) => (iommu ? 0n : offer.uva) + BigInt(x);
    b.msg(Req.SET_VRING_ADDR, vringAddr(index, at(area.desc), at(area.used), at(area.avail)), [], fl());
    const base = r.chance(0.9) ? 0 : r.int(0x10000);
    ring.idx = base & 0xffff;
    b.msg(Req.SET_VRING_BASE, vringState(index, base), [], fl());
    const fdKind = (): FdSpec | 'nofd' => (r.chance(0.85) ? 'eventfd' : r.chance(0.5) ? 'nofd' : r.pick(WRONG_KINDS));
    for (const id of [Req.SET_VRING_CALL, Req.SET_VRING_ERR, Req.SET_VRING_KICK]) {
      const k = fdKind();
      if (id === Req.SET_VRING_KICK) ring.kick = k;
      b.msg(id, vringFd(index, k === 'nofd'), k === 'nofd' ? [] : [k], fl());
    }
    b.msg(Req.SET_VRING_ENABLE, vringState(index, 1), [], fl());
  }
  if ((proto & bit(PF.STATUS)) !== 0n) b.msg(Req.SET_STATUS, u64(r.chance(0.9) ? 0xf : r.int(256)), [], fl());

  // -- traffic interleaved with extra requests --
  const clean = r.chance(0.6);
  for (let k = r.range(1, 5); k > 0; k--) {
    const ring = rings.length > 0 && r.chance(0.8) ? r.pick(rings) : null;
    if (ring !== null) traffic(b, ring, inband, clean);
    // Frames from B: on A's RX ring right after buffers were posted there, now and then otherwise.
    if (r.chance(ring?.index === 0 ? 0.8 : 0.1)) {
      const n = r.range(1, 4);
      b.ops.push({ op: 'feed', n, len: r.pick([60, 60, 128, 1514, 4000, 9000, 60000]) });
      const rx = rings.find((x) => x.index === 0);
      if (rx) rx.outstanding = Math.max(0, rx.outstanding - n);
    }
    if (r.chance(0.5)) extra(b, rings);
    if (r.chance(0.1)) b.ops.push({ op: 'poke', fd: r.pick<FdSpec>(['pipe', 'socket', 'pipe!', 'socket!']) });
    if (r.chance(0.05)) b.ops.push({ op: 'hangup', fd: r.pick(['pipe!', 'socket!'] as const) });
  }

  // -- mutations: per message, then of the order --
  const rate = r.pick([0, 0.02, 0.05, 0.1, 0.25]);
  for (const op of b.ops) if (op.op === 'msg' && r.chance(rate)) mutate(b, op);
  if (r.chance(0.1) && b.ops.length > 2) {
    const i = r.int(b.ops.length - 1);
    const [x] = b.ops.splice(i, 1);
    b.ops.splice(r.int(b.ops.length), 0, x!);
  }
  if (r.chance(0.05) && b.ops.length > 1) b.ops.splice(r.int(b.ops.length), 1);
  if (r.chance(0.05)) {
    const dup = b.ops[r.int(b.ops.length)]!;
    b.ops.splice(r.int(b.ops.length), 0, dup);
  }

  // -- sometimes an unfinished last message, then an abrupt close --
  let noSync = false;
  if (r.chance(0.05)) {
    noSync = true;
    const id = r.int(61);
    const declared = r.range(1, 400);
    const sent = r.int(declared);
    const bytes = new Uint8Array(12 + sent);
    const dv = new DataView(bytes.buffer);
    dv.setUint32(0, id, true);
    dv.setUint32(4, F_VERSION, true);
    dv.setUint32(8, declared, true);
    bytes.set(r.bytes(sent), 12);
    const cut = r.chance(0.3) ? r.range(1, 11) : bytes.length;
    b.ops.push({ op: 'raw', bytes: hexOf(bytes.subarray(0, cut)), fds: r.chance(0.5) ? [r.pick(ALL_KINDS)] : [], note: 'unfinished message' });
  }
  return { seed, index, ops: b.ops, noSync };
}

/** One line per op, for the findings file and --replay. */
export function describeOp(op: Op): string {
  const names = Object.fromEntries(Object.entries(Req).map(([k, v]) => [v, k])) as Record<number, string>;
  switch (op.op) {
    case 'msg':
      return `msg ${names[op.id] ?? `id ${op.id}`} flags 0x${op.flags.toString(16)}${op.size !== undefined ? ` size-field ${op.size}` : ''} payload[${op.payload.length / 2}] ${op.payload.slice(0, 96)}${op.fds.length ? ` fds [${op.fds.join(',')}]` : ''}${op.note ? `  (${op.note})` : ''}`;
    case 'raw':
      return `raw [${op.bytes.length / 2}] ${op.bytes.slice(0, 96)}${op.fds.length ? ` fds [${op.fds.join(',')}]` : ''}${op.note ? `  (${op.note})` : ''}`;
    case 'mem':
      return `mem @0x${op.at.toString(16)} ${op.bytes.slice(0, 64)}${op.note ? `  (${op.note})` : ''}`;
    case 'poke':
      return `poke ${op.fd}`;
    case 'hangup':
      return `hangup ${op.fd}`;
    case 'yield':
      return 'yield';
    case 'feed':
      return `feed ${op.n} frames of ${op.len} bytes from B`;
  }
}
