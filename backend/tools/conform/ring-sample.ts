/**
 * Read-only ring sampling for the conformance rules: at safe points (a timer between event-loop
 * turns, never inside the device's processing) the driver-owned parts of each configured ring are
 * read through the session's memory table: split avail flags/idx and the chains exposed but not yet
 * consumed, packed driver event suppression and the descriptors available at the device's position.
 *
 * Nothing here writes guest memory, touches the session's queues or the IOTLB cache's statistics:
 * addresses are translated with RegionMemory's pure translate/translateUva and, under a vIOMMU, a
 * copy of the IOTLB entries. The chains sampled are the ones between the device's next avail index
 * and avail.idx: exposed by the driver and not yet consumed, so the driver must not be changing them
 * (virtio v1.2 2.7.6: "each ring entry refers to the head of a descriptor chain").
 */
import {
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_USED,
  createSpan,
  PackedQueue,
  SplitQueue,
  type RegionMemory,
} from '../../../virtqueue/index.ts';
import type { IotlbEntry } from '../../../virtqueue/iotlb.ts';
import type { Session } from '../../core/session.ts';
import { ringAreas, type ModelRing, type SessionModel } from './model.ts';

export type ChainProblemKind =
  | 'head-range'
  | 'next-range'
  | 'loop'
  | 'too-long'
  | 'indirect-not-negotiated'
  | 'indirect-nested'
  | 'indirect-next'
  | 'indirect-len'
  | 'read-after-write'
  | 'unmapped';

export interface ChainProblem {
  kind: ChainProblemKind;
  head: number;
  detail: string;
}

export interface RingSample {
  index: number;
  generation: number;
  packed: boolean;
  num: number;
  eventIdx: boolean;
  indirect: boolean;
  /** The ring areas could not be read (unmapped, or an IOVA not in the IOTLB yet). */
  unreadable: string | null;
  /** Split: avail.flags / avail.idx. */
  availFlags: number | null;
  availIdx: number | null;
  /** The device's next avail index (split: free-running u16; packed: position 0..num-1). */
  lastAvail: number | null;
  /** Packed: driver event suppression flags. */
  driverEventFlags: number | null;
  /** Chains exposed and not yet consumed that were walked. */
  chainsWalked: number;
  problems: ChainProblem[];
  /** The session marked the ring broken (its own validation), with the reason. */
  broken: string | null;
}

/** At most this many pending chains are walked per ring and sample (bounded cost on big rings). */
const MAX_CHAINS = 64;
const TWO_32 = 2 ** 32;

/** Read-only byte access to guest memory by ring address (uva or IOVA) or buffer address (gpa or IOVA). */
export class GuestReader {
  private readonly span = createSpan();
  constructor(
    private readonly mem: RegionMemory,
    /** IOTLB entries (sorted by iova) when ACCESS_PLATFORM is negotiated, else null. */
    private readonly iotlb: readonly IotlbEntry[] | null,
  ) {}

  private viaIotlb(iova: number, len: number): number | null {
    for (const e of this.iotlb!) if (iova >= e.iova && iova + len <= e.iova + e.size) return e.uaddr + (iova - e.iova);
    return null;
  }

  /** Copies `len` bytes at a ring address (frontend user address; IOVA with a vIOMMU); null if unmapped. */
  ring(addr: number, len: number): Uint8Array | null {
    const uva = this.iotlb ? this.viaIotlb(addr, len) : addr;
    return uva === null ? null : this.byUva(uva, len);
  }

  /** Copies `len` bytes at a descriptor address (guest physical; IOVA with a vIOMMU); null if unmapped. */
  buf(addr: number, len: number): Uint8Array | null {
    if (this.iotlb) {
      const uva = this.viaIotlb(addr, len);
      return uva === null ? null : this.byUva(uva, len);
    }
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      if (!this.mem.translate(addr + done, len - done, false, this.span) || this.span.byteLen <= 0) return null;
      out.set(this.span.bytes.subarray(this.span.offset, this.span.offset + this.span.byteLen), done);
      done += this.span.byteLen;
    }
    return out;
  }

  /** Whether a buffer range is mapped (no copy: buffers may be large). */
  bufMapped(addr: number, len: number): boolean {
    if (len === 0) return true;
    if (this.iotlb) return this.viaIotlb(addr, len) !== null;
    let done = 0;
    while (done < len) {
      if (!this.mem.translate(addr + done, len - done, false, this.span) || this.span.byteLen <= 0) return false;
      done += this.span.byteLen;
    }
    return true;
  }

  private byUva(uva: number, len: number): Uint8Array | null {
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      if (this.mem.translateUva(uva + done, len - done, false, this.span) < 0 || this.span.byteLen <= 0) return null;
      out.set(this.span.bytes.subarray(this.span.offset, this.span.offset + this.span.byteLen), done);
      done += this.span.byteLen;
    }
    return out;
  }
}

const le16 = (b: Uint8Array, o: number) => b[o]! | (b[o + 1]! << 8);
const le32 = (b: Uint8Array, o: number) => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;

interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}
function descAt(b: Uint8Array, o: number): Desc {
  const lo = le32(b, o);
  const hi = le32(b, o + 4);
  return { addr: hi * TWO_32 + lo, len: le32(b, o + 8), flags: le16(b, o + 12), next: le16(b, o + 14) };
}

/** Packed descriptor (virtio v1.2 2.8.13): le64 addr, le32 len, le16 id, le16 flags; `next` holds the id. */
function packedDescAt(b: Uint8Array, o: number): Desc {
  const d = descAt(b, o);
  return { addr: d.addr, len: d.len, flags: d.next, next: d.flags };
}

/** Walks one chain's buffers; `seq` yields the descriptors of the chain in order. */
class ChainCheck {
  readonly problems: ChainProblem[] = [];
  private seenWrite = false;
  private total = 0;
  constructor(
    private readonly head: number,
    private readonly rd: GuestReader,
    private readonly indirectOk: boolean,
  ) {}
  problem(kind: ChainProblemKind, detail: string): void {
    if (this.problems.length < 4) this.problems.push({ kind, head: this.head, detail });
  }
  buffer(d: Desc, where: string): void {
    const write = (d.flags & VIRTQ_DESC_F_WRITE) !== 0;
    if (!write && this.seenWrite) this.problem('read-after-write', `${where}: device-readable descriptor after a device-writable one`);
    if (write) this.seenWrite = true;
    this.total += d.len;
    if (this.total > TWO_32) this.problem('too-long', `chain longer than 2^32 bytes at ${where}`);
    if (!this.rd.bufMapped(d.addr, d.len)) this.problem('unmapped', `${where}: buffer 0x${d.addr.toString(16)} +${d.len} is not in guest memory`);
  }
  /** An indirect table: returns false when it could not be read. */
  indirect(d: Desc, where: string, packed: boolean): void {
    if (!this.indirectOk) this.problem('indirect-not-negotiated', `${where}: VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC`);
    if (!packed && (d.flags & VIRTQ_DESC_F_NEXT) !== 0) this.problem('indirect-next', `${where}: INDIRECT and NEXT both set`);
    if (d.len === 0 || d.len % 16 !== 0) {
      this.problem('indirect-len', `${where}: indirect table length ${d.len} is not a non-zero multiple of 16`);
      return;
    }
    const n = d.len / 16;
    const table = this.rd.buf(d.addr, Math.min(d.len, 16 * 4096));
    if (!table) {
      this.problem('unmapped', `${where}: indirect table 0x${d.addr.toString(16)} +${d.len} is not in guest memory`);
      return;
    }
    const count = Math.min(n, 4096);
    if (packed) {
      for (let i = 0; i < count; i++) {
        const x = packedDescAt(table, 16 * i);
        if (x.flags & VIRTQ_DESC_F_INDIRECT) this.problem('indirect-nested', `${where}[${i}]: INDIRECT inside an indirect table`);
        this.buffer(x, `${where}[${i}]`);
      }
      return;
    }
    let i = 0;
    for (let steps = 0; ; steps++) {
      if (steps >= count) return this.problem('loop', `${where}: indirect chain longer than its table (${n}): a loop`);
      const x = descAt(table, 16 * i);
      if (x.flags & VIRTQ_DESC_F_INDIRECT) this.problem('indirect-nested', `${where}[${i}]: INDIRECT inside an indirect table`);
      this.buffer(x, `${where}[${i}]`);
      if (!(x.flags & VIRTQ_DESC_F_NEXT)) return;
      if (x.next >= n) return this.problem('next-range', `${where}[${i}]: next ${x.next} outside the indirect table (${n})`);
      i = x.next;
    }
  }
}

function splitChain(rd: GuestReader, descBase: number, num: number, head: number, indirectOk: boolean): ChainProblem[] {
  const c = new ChainCheck(head, rd, indirectOk);
  if (head >= num) {
    c.problem('head-range', `avail ring entry ${head} is not below the queue size ${num}`);
    return c.problems;
  }
  let i = head;
  for (let steps = 0; ; steps++) {
    if (steps >= num) {
      c.problem('loop', `chain from head ${head} longer than the queue size ${num}: a loop`);
      break;
    }
    const b = rd.ring(descBase + 16 * i, 16);
    if (!b) {
      c.problem('unmapped', `descriptor ${i} is not readable`);
      break;
    }
    const d = descAt(b, 0);
    if (d.flags & VIRTQ_DESC_F_INDIRECT) c.indirect(d, `desc ${i}`, false);
    else c.buffer(d, `desc ${i}`);
    if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
    if (d.next >= num) {
      c.problem('next-range', `desc ${i}: next ${d.next} is not below the queue size ${num}`);
      break;
    }
    i = d.next;
  }
  return c.problems;
}

/** One sample of ring `r` (the model's addresses), or null when the ring is not configured. */
export function sampleRing(session: Session, model: SessionModel, r: ModelRing): RingSample | null {
  if (r.addr === null || r.num === 0 || !r.started || model.regions.length === 0) return null;
  // While postcopy is live guest memory is not sampled: a read of a page not migrated yet through our
  // own mapping would populate it with zeros under the frontend, whose placement of the real page then
  // fails (EEXIST: QEMU pauses the migration). The rings themselves read only pages known present (D48).
  if (session.migration.listening) return null;
  const packed = model.packed;
  const eventIdx = model.featureAcked(29);
  const indirect = model.featureAcked(28);
  const st = session.rings[r.index];
  const entries = model.iommu ? (session.iommu?.cache.entries() ?? []) : null;
  const rd = new GuestReader(session.memory.memory, entries);
  const s: RingSample = {
    index: r.index,
    generation: r.generation,
    packed,
    num: r.num,
    eventIdx,
    indirect,
    unreadable: null,
    availFlags: null,
    availIdx: null,
    lastAvail: null,
    driverEventFlags: null,
    chainsWalked: 0,
    problems: [],
    broken: st?.broken ? st.broken.message : null,
  };
  const a = r.addr;
  const desc = Number(a.descUserAddr);
  const drv = Number(a.availUserAddr);
  const areas = ringAreas(r.num, packed, eventIdx);
  if (!packed) {
    const avail = rd.ring(drv, areas.avail);
    if (!avail) {
      s.unreadable = `available ring 0x${drv.toString(16)} +${areas.avail} not readable`;
      return s;
    }
    s.availFlags = le16(avail, 0);
    s.availIdx = le16(avail, 2);
    const q = st?.queue;
    s.lastAvail = q instanceof SplitQueue ? q.lastAvailIdx : r.base !== null ? r.base & 0xffff : null;
    if (s.lastAvail === null) return s;
    const pending = (s.availIdx - s.lastAvail) & 0xffff;
    if (pending > r.num) return s; // the index rule reports it; the entries are not meaningful
    for (let k = 0; k < Math.min(pending, MAX_CHAINS); k++) {
      const head = le16(avail, 4 + 2 * ((s.lastAvail + k) % r.num));
      s.problems.push(...splitChain(rd, desc, r.num, head, indirect));
      s.chainsWalked++;
    }
    return s;
  }
  const ev = rd.ring(drv, 4);
  if (!ev) {
    s.unreadable = `driver event suppression area 0x${drv.toString(16)} not readable`;
    return s;
  }
  s.driverEventFlags = le16(ev, 2);
  const q = st?.queue;
  let pos: number;
  let wrap: boolean;
  if (q instanceof PackedQueue) {
    pos = q.lastAvailIdx;
    wrap = q.availWrapCounter;
  } else if (r.base !== null) {
    pos = r.base & 0x7fff;
    wrap = (r.base & 0x8000) !== 0;
  } else return s;
  s.lastAvail = pos;
  if (pos >= r.num) return s;
  const ring = rd.ring(desc, 16 * r.num);
  if (!ring) {
    s.unreadable = `descriptor ring 0x${desc.toString(16)} not readable`;
    return s;
  }
  const isAvail = (d: Desc) => ((d.flags & VIRTQ_DESC_F_AVAIL) !== 0) === wrap && ((d.flags & VIRTQ_DESC_F_USED) !== 0) !== wrap;
  let seen = 0;
  for (let chains = 0; chains < MAX_CHAINS && seen < r.num; chains++) {
    let d = packedDescAt(ring, 16 * pos);
    if (!isAvail(d)) break;
    const head = pos;
    const c = new ChainCheck(head, rd, indirect);
    for (let len = 0; ; len++) {
      if (len >= r.num) {
        c.problem('loop', `chain at ${head} longer than the queue size ${r.num}`);
        break;
      }
      if (d.flags & VIRTQ_DESC_F_INDIRECT) {
        if (d.flags & VIRTQ_DESC_F_NEXT) c.problem('indirect-next', `desc ${pos}: INDIRECT and NEXT both set`);
        c.indirect(d, `desc ${pos}`, true);
      } else c.buffer(d, `desc ${pos}`);
      seen++;
      pos++;
      if (pos === r.num) {
        pos = 0;
        wrap = !wrap;
      }
      if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
      d = packedDescAt(ring, 16 * pos);
      if (!isAvail(d)) {
        // The driver makes the head available last (2.8.21), so a partial chain is not yet exposed.
        break;
      }
    }
    s.problems.push(...c.problems);
    s.chainsWalked++;
  }
  return s;
}
