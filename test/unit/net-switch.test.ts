/**
 * Guest-to-guest switching through a port pair (backend/net/ports/pair.ts) with the single-copy path:
 * the receiving NetDevice copies from the sender's TX chain straight into its RX chain
 * (ChainWriter.copyFrom). Two devices, two separate guest memories (one of them made of two regions
 * so a buffer crosses a region boundary), SplitDriver / PackedDriver on the rings. Checks exact bytes
 * across segment boundaries that do not line up on both sides, num_buffers, used lengths, dirty
 * logging of the destination (each span reported after its bytes are in place, decisions.md D19),
 * backpressure ('busy' re-reads the TX chain later) and the gathered fallback for offload work.
 */
import test from 'ava';
import { VirtioF, bit } from '../../protocol/index.ts';
import {
  FlatMemory,
  SplitDriver,
  PackedDriver,
  PackedQueue,
  RegionMemory,
  SplitQueue,
  readBytes,
  type GuestMemory,
  type DriverBuffer,
  type UsedEntry,
  type Virtqueue,
} from '../../virtqueue/index.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import { NET_HDR_F_NEEDS_CSUM, NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { portPair } from '../../backend/net/ports/pair.ts';
import type { ReadyQueue } from '../../backend/core/device.ts';
import { fold, sum16 } from '../../backend/net/frame/offload.ts';
import { ipv4Tcp, tcpValid } from '../helpers/frames.ts';

type RingKind = 'split' | 'packed';
const MEM = 1 << 20;
const SIZE = 64;

interface Driver {
  addChain(bufs: readonly DriverBuffer[], opts?: { indirect?: boolean }): number;
  readUsed(): UsedEntry[];
}

interface Side {
  dev: NetDevice;
  mem: GuestMemory;
  rx: Driver;
  tx: Driver;
  rxRing: ReadyQueue;
  txRing: ReadyQueue;
  notified: number[];
  dirty: [number, number][];
  /** Set by a test: each dirty span is checked against this when reported. */
  onDirty?: (gpa: number, len: number) => void;
}

/** Memory made of two regions in separate buffers, split at `MEM / 2` (a buffer may cross it). */
/** Like twoRegions, but each region's view starts inside its ArrayBuffer (byteOffset 8 and 16: rings
 *  need host alignment), as a region mapped at an offset of a larger mapping would. */
function offsetRegions(): RegionMemory {
  const half = MEM / 2;
  return new RegionMemory([
    { gpa: 0, uva: 0x10000000, byteLen: half, bytes: new Uint8Array(new ArrayBuffer(half + 8), 8, half) },
    { gpa: half, uva: 0x20000000, byteLen: half, bytes: new Uint8Array(new ArrayBuffer(half + 16), 16, half) },
  ]);
}

function twoRegions(): RegionMemory {
  const half = MEM / 2;
  return new RegionMemory([
    { gpa: 0, uva: 0x10000000, byteLen: half, bytes: new Uint8Array(half) },
    { gpa: half, uva: 0x20000000, byteLen: half, bytes: new Uint8Array(half) },
  ]);
}

function side(kind: RingKind, features: bigint, mem: GuestMemory, label: string, busyPollUs?: number): Side {
  const dev = new NetDevice({ queuePairs: 1, label, ...(busyPollUs === undefined ? {} : { busyPollUs }) });
  const eventIdx = (features & bit(VirtioF.RING_EVENT_IDX)) !== 0n;
  const mk = (base: number, heap: number): [Driver, Virtqueue] => {
    if (kind === 'split') {
      const d = new SplitDriver(mem, { size: SIZE, base, heapAddr: heap, heapByteLen: 0x30000, eventIdx });
      return [d, new SplitQueue(d.queueConfig(), mem)];
    }
    const d = new PackedDriver(mem, { size: SIZE, base, heapAddr: heap, heapByteLen: 0x30000, eventIdx });
    return [d, new PackedQueue(d.queueConfig(), mem)];
  };
  const [rx, rxq] = mk(0, 0x10000);
  const [tx, txq] = mk(0x8000, 0x40000);
  const s: Side = { dev, mem, rx, tx, notified: [], dirty: [] } as unknown as Side;
  const ready = (index: number, queue: Virtqueue): ReadyQueue => ({
    index,
    queue,
    memory: mem,
    notify: () => s.notified.push(index),
    fail: (e) => {
      throw e;
    },
  });
  s.rxRing = ready(0, rxq);
  s.txRing = ready(1, txq);
  mem.onWrite = (gpa, len) => {
    s.dirty.push([gpa, len]);
    s.onDirty?.(gpa, len);
  };
  dev.setFeatures(features);
  return s;
}

function pair(kind: RingKind, features: bigint, featuresB = features, busyPollUs?: number, memB: () => GuestMemory = twoRegions) {
  const a = side(kind, features, new FlatMemory(MEM), 'A', busyPollUs);
  const b = side(kind, featuresB, memB(), 'B', busyPollUs);
  const [pa, pb] = portPair('a', 'b');
  a.dev.attachPort(pa);
  b.dev.attachPort(pb);
  // RX rings first, so TX processing (started by ringReady of the TX ring) finds them.
  for (const s of [a, b]) s.dev.ringReady(s.rxRing);
  for (const s of [a, b]) s.dev.ringReady(s.txRing);
  return { a, b, pa, pb };
}

function frameOf(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 13 + seed) & 0xff;
  return f;
}

/** A TX chain: 12-byte header + the frame cut at `cuts` (descriptor boundaries). */
function txChain(frame: Uint8Array, cuts: number[], hdr = new Uint8Array(12)): DriverBuffer[] {
  const bufs: DriverBuffer[] = [{ byteLen: hdr.length, write: false, data: hdr }];
  let at = 0;
  for (const c of [...cuts, frame.length]) {
    bufs.push({ byteLen: c - at, write: false, data: frame.subarray(at, c) });
    at = c;
  }
  return bufs;
}

const MRG = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.RING_INDIRECT_DESC);

for (const kind of ['split', 'packed'] as const) {
  test(`${kind}: single copy across unaligned segment boundaries and a region boundary; exact bytes, num_buffers 1, dirty spans logged after the copy`, (t) => {
    const { a, b } = pair(kind, MRG);
    const frame = frameOf(300, 5);
    const expected = new Uint8Array(12 + frame.length);
    expected[10] = 1; // num_buffers
    expected.set(frame, 12);
    // B's RX buffer: three writable pieces, the last crossing B's region boundary (MEM / 2).
    const half = MEM / 2;
    const rxBufs = [
      { addr: 0x78000, len: 7 },
      { addr: 0x78100, len: 40 },
      { addr: half - 100, len: 600 },
    ];
    b.rx.addChain(rxBufs.map((r) => ({ byteLen: r.len, write: true, addr: r.addr })));
    let bad = 0;
    // Each dirty span must already hold its final bytes when reported (gpa -> offset in header + frame).
    const spans: [number, number][] = [];
    b.onDirty = (gpa, len) => {
      const seen = new Uint8Array(len);
      readBytes(b.mem, gpa, seen);
      spans.push([gpa, len]);
      const off = offsetIn(gpa);
      if (off < 0) return; // used ring / event writes
      for (let i = 0; i < len; i++) if (seen[i] !== expected[off + i]) bad++;
    };
    const offsetIn = (gpa: number): number => {
      let o = 0;
      for (const r of rxBufs) {
        if (gpa >= r.addr && gpa < r.addr + r.len) return o + (gpa - r.addr);
        o += r.len;
      }
      return -1;
    };
    a.tx.addChain(txChain(frame, [5, 75, 200]), { indirect: kind === 'split' });
    a.dev.kick(1);
    const used = b.rx.readUsed();
    t.is(used.length, 1);
    t.is(used[0]!.len, expected.length);
    t.deepEqual(used[0]!.data, expected);
    t.is(bad, 0, 'every dirty span held its final bytes when reported');
    // Every written byte of the buffer is covered by a reported span.
    const covered = new Uint8Array(expected.length);
    for (const [gpa, len] of spans) for (let i = 0; i < len; i++) {
      const off = offsetIn(gpa + i);
      if (off >= 0 && off < covered.length) covered[off] = 1;
    }
    t.is(covered.indexOf(0), -1, 'all header and frame bytes logged');
    t.true(spans.some(([gpa]) => gpa === half), 'the copy split at the region boundary');
    const txUsed = a.tx.readUsed();
    t.deepEqual(txUsed.map((u) => u.len), [0], 'TX chain completed with used len 0');
    t.is(a.dev.stats.txFrames, 1);
    t.is(b.dev.stats.rxFrames, 1);
    t.true(b.notified.includes(0), 'B notified once its used ring moved');
  });

  test(`${kind}: a mergeable frame over two RX chains and many frames in order through the chain path`, (t) => {
    const { a, b } = pair(kind, MRG);
    const big = frameOf(1500, 9);
    b.rx.addChain([{ byteLen: 1000, write: true }]);
    b.rx.addChain([{ byteLen: 300, write: true }, { byteLen: 700, write: true }]);
    a.tx.addChain(txChain(big, [1]));
    a.dev.kick(1);
    const used = b.rx.readUsed();
    t.deepEqual(used.map((u) => u.len), [1000, 512]);
    const all = new Uint8Array(1512);
    all.set(used[0]!.data!, 0);
    all.set(used[1]!.data!, 1000);
    t.is(all[10]! | (all[11]! << 8), 2, 'num_buffers');
    t.deepEqual(all.subarray(12), big);

    const frames = Array.from({ length: 40 }, (_, i) => frameOf(60 + i * 3, i));
    for (let i = 0; i < 40; i++) b.rx.addChain([{ byteLen: 2048, write: true }]);
    for (const [i, f] of frames.entries()) a.tx.addChain(txChain(f, i % 3 === 0 ? [] : [i]), { indirect: true });
    a.dev.kick(1);
    const got = b.rx.readUsed();
    t.is(got.length, 40);
    got.forEach((u, i) => t.deepEqual(u.data!.subarray(12), frames[i]!, `frame ${i}`));
    t.is(a.tx.readUsed().length, 41);
  });

  test(`${kind}: no RX buffers at the peer: busy holds the TX chain; the peer's RX kick resumes it with the same bytes`, async (t) => {
    const { a, b } = pair(kind, MRG);
    const f = frameOf(128, 3);
    a.tx.addChain(txChain(f, [30]));
    a.dev.kick(1);
    t.is(a.tx.readUsed().length, 0, 'TX chain not completed while the peer has no buffers');
    t.is(a.dev.stats.txDropped, 0);
    b.rx.addChain([{ byteLen: 50, write: true }, { byteLen: 1000, write: true }]);
    b.dev.kick(0);
    const used = b.rx.readUsed();
    t.is(used.length, 1);
    t.deepEqual(used[0]!.data!.subarray(12), f);
    t.is(a.tx.readUsed().length, 1);
  });
}

test('split, no mergeable buffers: one RX buffer per frame through the chain path; too small a buffer drops the frame', (t) => {
  const features = bit(VirtioF.VERSION_1) | bit(VirtioF.RING_EVENT_IDX);
  const { a, b } = pair('split', features);
  b.rx.addChain([{ byteLen: 100, write: true }]);
  a.tx.addChain(txChain(frameOf(200, 1), [50]));
  a.dev.kick(1);
  t.is(b.dev.stats.rxDroppedTooBig, 1);
  t.is(b.rx.readUsed().length, 0, 'buffer kept');
  const f = frameOf(80, 2);
  a.tx.addChain(txChain(f, [13, 14]));
  a.dev.kick(1);
  const [u] = b.rx.readUsed();
  t.is(u!.len, 92);
  t.deepEqual(u!.data!.subarray(12), f);
});

test('offload work at the receiver (NEEDS_CSUM to a guest without GUEST_CSUM): the frame is gathered and its checksum completed', (t) => {
  const withCsum = MRG | bit(VirtioF.NET_F_CSUM);
  const { a, b } = pair('split', withCsum, MRG);
  const f = ipv4Tcp(400);
  const pseudo = fold(sum16(f, 26, 34) + 6 + (f.length - 34));
  f[50] = pseudo >> 8;
  f[51] = pseudo & 0xff;
  const hdr = new Uint8Array(12);
  hdr[0] = NET_HDR_F_NEEDS_CSUM;
  hdr[6] = 34; // csum_start
  hdr[8] = 16; // csum_offset
  b.rx.addChain([{ byteLen: 2048, write: true }]);
  a.tx.addChain(txChain(f, [20, 100], hdr));
  a.dev.kick(1);
  const [u] = b.rx.readUsed();
  const got = u!.data!.subarray(12);
  t.is(u!.data![0], 0, 'plain header for a guest without GUEST_CSUM');
  t.true(tcpValid(new Uint8Array(got), false), 'checksum completed in software');
  t.is(b.dev.stats.rxSwChecksums, 1);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const kind of ['split', 'packed'] as const) {
  test.serial(`${kind}: busy polling: chains added while the TX ring is polled leave without a kick; after the window notifications are back and the backend idles`, async (t) => {
    const { a, b } = pair(kind, MRG, MRG, 2000);
    for (let i = 0; i < 8; i++) b.rx.addChain([{ byteLen: 2048, write: true }]);
    a.tx.addChain(txChain(frameOf(64, 1), []));
    a.dev.kick(1);
    t.is(b.rx.readUsed().length, 1);
    t.false(a.txRing.queue.notificationsEnabled, 'ring polled: notifications stay disabled');
    // No kick from here on: the poller must find the next chains.
    const f = frameOf(100, 2);
    a.tx.addChain(txChain(f, [10]));
    const end = Date.now() + 1000;
    let got: UsedEntry[] = [];
    while (got.length === 0 && Date.now() < end) {
      await new Promise((r) => setImmediate(r));
      got = b.rx.readUsed();
    }
    t.is(got.length, 1, 'polled chain delivered without a kick');
    t.deepEqual(got[0]!.data!.subarray(12), f);
    await sleep(30); // > 2 ms window
    t.true(a.txRing.queue.notificationsEnabled, 'notifications re-enabled after the window');
    t.true(b.txRing.queue.notificationsEnabled);
    const c0 = process.cpuUsage();
    await sleep(200);
    const c = process.cpuUsage(c0);
    t.true(c.user + c.system < 60_000, `idle backend used ${(c.user + c.system) / 1000} ms of CPU in 200 ms`);
  });
}

test('busy polling off (busyPollUs 0): a drained TX ring re-enables notifications at once', (t) => {
  const { a, b } = pair('split', MRG, MRG, 0);
  b.rx.addChain([{ byteLen: 2048, write: true }]);
  a.tx.addChain(txChain(frameOf(64, 1), []));
  a.dev.kick(1);
  t.is(b.rx.readUsed().length, 1);
  t.true(a.txRing.queue.notificationsEnabled);
});

// ---- the one-descriptor fast path (popDirect + deliverSpan) ------------------------------------

/** A TX buffer as DPDK virtio-user and Linux make it: header and frame in ONE descriptor. */
function txOne(frame: Uint8Array, hdr = new Uint8Array(12)): DriverBuffer[] {
  const b = new Uint8Array(hdr.length + frame.length);
  b.set(hdr);
  b.set(frame, hdr.length);
  return [{ byteLen: b.length, write: false, data: b }];
}

for (const kind of ['split', 'packed'] as const) {
  test(`${kind}: one-descriptor TX and RX buffers take the direct path: exact bytes, header fields carried, num_buffers 1, dirty span after the copy`, (t) => {
    // The sender negotiated CSUM, so its header is read and carried (without host offloads it is not: D40).
    const { a, b } = pair(kind, MRG | bit(VirtioF.NET_F_CSUM), MRG);
    const frame = frameOf(64, 7);
    const hdr = new Uint8Array(12);
    hdr[2] = 54; // hdr_len: carried as is for a plain frame (no offload work)
    hdr[4] = 0x34; // gso_size low byte (gso_type NONE: a plain frame all the same)
    hdr[10] = 0x55; // num_buffers as the sender left it: replaced by 1
    hdr[11] = 0x66;
    let bad = 0;
    b.onDirty = (gpa, len) => {
      const seen = new Uint8Array(len);
      readBytes(b.mem, gpa, seen);
      if (len === 76 && seen[10] !== 1) bad++; // the RX buffer span: header already final
    };
    b.rx.addChain([{ byteLen: 2048, write: true }]);
    a.tx.addChain(txOne(frame, hdr));
    a.dev.kick(1);
    const [u] = b.rx.readUsed();
    t.is(u!.len, 76);
    const want = new Uint8Array(76);
    want.set(hdr);
    want[10] = 1;
    want[11] = 0;
    want.set(frame, 12);
    t.deepEqual(u!.data, want);
    t.is(bad, 0);
    t.true(b.dirty.some(([, len]) => len === 76), 'the RX buffer reported to the dirty log as one span');
    t.is(a.txRing.queue.stats.poppedDirect, 1, 'TX buffer popped in place');
    t.is(b.rxRing.queue.stats.poppedDirect, 1, 'RX buffer popped in place');
    t.deepEqual(a.tx.readUsed().map((x) => x.len), [0]);
    t.is(a.dev.stats.txFrames, 1);
    t.is(b.dev.stats.rxFrames, 1);
  });

  test(`${kind}: direct path: DATA_VALID reaches only a guest with GUEST_CSUM; a 10-byte legacy receiver gets its own header size`, (t) => {
    const legacy = bit(VirtioF.RING_EVENT_IDX); // no VERSION_1, no MRG_RXBUF: 10-byte header
    const csum = MRG | bit(VirtioF.NET_F_GUEST_CSUM);
    for (const [fb, hdrBytes, keep] of [
      [MRG, 12, false],
      [csum, 12, true],
      ...(kind === 'split' ? ([[legacy, 10, false]] as const) : []),
    ] as const) {
      const { a, b } = pair(kind, MRG | bit(VirtioF.NET_F_CSUM), fb);
      const frame = frameOf(90, 4);
      const hdr = new Uint8Array(12);
      hdr[0] = 2; // DATA_VALID
      b.rx.addChain([{ byteLen: 2048, write: true }]);
      a.tx.addChain(txOne(frame, hdr));
      a.dev.kick(1);
      const [u] = b.rx.readUsed();
      t.is(u!.len, hdrBytes + 90, `header ${hdrBytes}`);
      t.is(u!.data![0], keep ? 2 : 0, `DATA_VALID ${keep ? 'kept' : 'cleared'}`);
      t.deepEqual(u!.data!.subarray(hdrBytes), frame);
    }
  });

  test(`${kind}: a sender without host offloads: its TX header is not read (virtio v1.2 5.1.6.2.1), on the direct and the chain path`, (t) => {
    // The driver MUST leave flags zero and gso_type NONE without CSUM / HOST_TSO*; whatever it wrote
    // instead is ignored: the frame goes out as it is, the receiver gets a plain header (D40).
    const { a, b } = pair(kind, MRG, MRG | bit(VirtioF.NET_F_GUEST_CSUM));
    const frame = frameOf(120, 9);
    const junk = new Uint8Array([NET_HDR_F_NEEDS_CSUM | 2, 1, 54, 0, 0x40, 0x05, 34, 0, 16, 0, 7, 7]);
    for (let i = 0; i < 2; i++) b.rx.addChain([{ byteLen: 2048, write: true }]);
    a.tx.addChain(txOne(frame, junk));
    a.tx.addChain(txChain(frame, [20], junk));
    a.dev.kick(1);
    const used = b.rx.readUsed();
    t.is(used.length, 2);
    const plain = new Uint8Array(12);
    plain[10] = 1; // num_buffers
    for (const u of used) {
      t.is(u.len, 132);
      t.deepEqual(u.data!.subarray(0, 12), plain, 'flags 0, gso NONE, no checksum fields, num_buffers 1');
      t.deepEqual(u.data!.subarray(12), frame, 'frame unchanged (no checksum written into it)');
    }
    t.is(a.txRing.queue.stats.poppedDirect, 1, 'the one-descriptor buffer took the direct path');
    t.is(a.dev.stats.txFrames, 2);
    t.is(b.dev.stats.rxSwChecksums, 0);
  });

  test(`${kind}: a frame from a port (deliver) into a one-descriptor RX buffer: the header written field by field, aligned or not`, (t) => {
    const { b } = pair(kind, MRG, MRG | bit(VirtioF.NET_F_GUEST_CSUM), undefined, offsetRegions);
    const frame = frameOf(80, 3);
    const hdr = new NetHdr();
    hdr.flags = 2; // DATA_VALID: kept for a guest with GUEST_CSUM
    hdr.hdrLen = 54;
    hdr.gsoSize = 0x0540;
    hdr.csumStart = 34;
    hdr.csumOffset = 16;
    // Buffers at 4-byte aligned and odd addresses, in the first region (its view starts 8 bytes into its
    // ArrayBuffer) and in the second (16 bytes in): word stores where the address in the buffer is aligned.
    const at = [0x70000, 0x71003, 0x72002, MEM / 2 + 0x1000, MEM / 2 + 0x2001];
    for (const addr of at) b.rx.addChain([{ byteLen: 2048, write: true, addr }]);
    for (let i = 0; i < at.length; i++) t.is(b.dev.deliver(frame, hdr), 'ok');
    const want = new Uint8Array([2, 0, 54, 0, 0x40, 0x05, 34, 0, 16, 0, 1, 0]);
    const used = b.rx.readUsed();
    t.is(used.length, at.length);
    for (const u of used) {
      t.deepEqual(u.data!.subarray(0, 12), want);
      t.deepEqual(u.data!.subarray(12, 92), frame);
    }
    t.is(b.rxRing.queue.stats.poppedDirect, at.length, 'all took the direct path');
    // Nothing written outside the buffers: the bytes in front of each are still zero.
    for (const addr of at) {
      const before = new Uint8Array(16);
      readBytes(b.mem, addr - 16, before);
      t.deepEqual(before, new Uint8Array(16), `nothing written before ${addr.toString(16)}`);
    }
  });

  test(`${kind}: direct TX into RX buffers the fast path cannot take (too small, a chain, none): mergeable gather, chain copy, busy`, (t) => {
    const { a, b } = pair(kind, MRG);
    const big = frameOf(1500, 2);
    // Too small: the first buffer goes back and the general path merges two.
    b.rx.addChain([{ byteLen: 1000, write: true }]);
    b.rx.addChain([{ byteLen: 1000, write: true }]);
    a.tx.addChain(txOne(big));
    a.dev.kick(1);
    let used = b.rx.readUsed();
    t.deepEqual(used.map((u) => u.len), [1000, 512]);
    const all = new Uint8Array(1512);
    all.set(used[0]!.data!, 0);
    all.set(used[1]!.data!, 1000);
    t.is(all[10], 2, 'num_buffers 2');
    t.deepEqual(all.subarray(12), big);
    // An RX chain of two descriptors.
    b.rx.addChain([{ byteLen: 30, write: true }, { byteLen: 500, write: true }]);
    const f = frameOf(200, 8);
    a.tx.addChain(txOne(f));
    a.dev.kick(1);
    used = b.rx.readUsed();
    t.is(used.length, 1);
    t.deepEqual(used[0]!.data!.subarray(12, 212), f);
    // No RX buffer: busy, the TX buffer stays; a buffer and a kick resume it with the same bytes.
    const g = frameOf(64, 9);
    a.tx.addChain(txOne(g));
    a.dev.kick(1);
    t.is(b.rx.readUsed().length, 0);
    t.is(a.tx.readUsed().length, 2, 'the third TX buffer is held');
    b.rx.addChain([{ byteLen: 2048, write: true }]);
    b.dev.kick(0);
    used = b.rx.readUsed();
    t.deepEqual(used[0]!.data!.subarray(12), g);
    t.is(a.tx.readUsed().length, 1);
    t.is(a.dev.stats.txDropped, 0);
  });

  test(`${kind}: a burst into mixed RX buffers: the RX reservoir gives back what it did not fill, the general path goes on in ring order, a dry ring holds the rest`, (t) => {
    const { a, b, pa, pb } = pair(kind, MRG);
    // Each RX span reported to the dirty log must already hold its frame (byte 12 on: frame bytes).
    let early = 0;
    b.onDirty = (gpa, len) => {
      if (len < 100) return; // ring writes and the 60-byte buffer
      const seen = new Uint8Array(len);
      readBytes(b.mem, gpa, seen);
      if (seen[12] === 0 && seen[13] === 0) early++;
    };
    // B's RX ring, in ring order: two good buffers, one too small (merged with the next by the
    // general path), a good one, a two-descriptor chain, two good ones.
    const rxIds = [
      b.rx.addChain([{ byteLen: 2048, write: true }]),
      b.rx.addChain([{ byteLen: 2048, write: true }]),
      b.rx.addChain([{ byteLen: 60, write: true }]),
      b.rx.addChain([{ byteLen: 2048, write: true }]),
      b.rx.addChain([{ byteLen: 2048, write: true }]),
      b.rx.addChain([{ byteLen: 30, write: true }, { byteLen: 500, write: true }]),
      b.rx.addChain([{ byteLen: 2048, write: true }]),
      b.rx.addChain([{ byteLen: 2048, write: true }]),
    ];
    const frames = Array.from({ length: 9 }, (_, i) => frameOf(100 + i, 20 + i));
    for (const f of frames) a.tx.addChain(txOne(f));
    a.dev.kick(1);
    const used = b.rx.readUsed();
    t.deepEqual(used.map((u) => u.id), rxIds, 'every RX buffer used once, in ring order');
    // Frames 0, 1 whole; frame 2 over the 60-byte buffer and the next; frames 3..5 one buffer each.
    const got: Uint8Array[] = [used[0]!.data!, used[1]!.data!];
    const merged = new Uint8Array(used[2]!.len + used[3]!.len);
    merged.set(used[2]!.data!, 0);
    merged.set(used[3]!.data!, used[2]!.len);
    t.is(merged[10], 2, 'num_buffers 2 for the merged frame');
    got.push(merged);
    for (const u of used.slice(4)) got.push(u.data!);
    t.is(got.length, 7);
    got.forEach((g, i) => t.deepEqual(g.subarray(12, 12 + frames[i]!.length), frames[i]!, `frame ${i}`));
    t.is(a.tx.readUsed().length, 7, 'two TX buffers held: B ran dry');
    t.is(a.dev.stats.txDropped, 0);
    t.true(b.rxRing.queue.stats.poppedDirect >= 5, 'the reservoir filled the plain buffers');
    // More buffers and a kick: the held frames follow, in order.
    b.rx.addChain([{ byteLen: 2048, write: true }]);
    b.rx.addChain([{ byteLen: 2048, write: true }]);
    b.dev.kick(0);
    const rest = b.rx.readUsed();
    t.deepEqual(rest.map((u) => u.data!.subarray(12)), [frames[7], frames[8]]);
    t.is(a.tx.readUsed().length, 2);
    t.is(b.dev.stats.rxFrames, 9);
    const bytesSent = frames.reduce((n, f) => n + f.length, 0);
    t.is(b.dev.stats.rxBytes, bytesSent);
    t.deepEqual([a.dev.stats.txFrames, a.dev.stats.txBytes, a.dev.stats.txDropped], [9, bytesSent, 0]);
    t.deepEqual([pa.stats.txFrames, pa.stats.txBytes, pb.stats.rxFrames, pb.stats.rxBytes], [9, bytesSent, 9, bytesSent]);
    t.is(early, 0, 'no RX buffer reported to the dirty log before its bytes landed');
    t.true(b.dirty.length >= 9);
  });
}
