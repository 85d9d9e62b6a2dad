/**
 * In-process microbenchmark of the switching hot path: two NetDevices joined by a port pair, each on
 * its own FlatMemory with split rings, driven by a minimal in-order "driver" that only moves avail.idx
 * (descriptor i always points at buffer i, avail[i] = i). One process, one thread: this measures the
 * backend's own instructions per frame (TX pop + walk, header, copy into the peer's RX chain, used
 * entries, publication), without the cross-core cache traffic of the real rig (bench.ts).
 *
 *   node --import tsx test/bench/switch-micro.ts [--size 64] [--burst 32] [--seconds 3] [--ring 1024] [--single]
 *   node --cpu-prof --cpu-prof-dir=/tmp/mprof --import tsx test/bench/switch-micro.ts ...
 *
 * `--packed`: packed rings (virtio v1.2 2.8) with an in-order driver that re-posts each position with
 * the lap's AVAIL/USED bits (one descriptor per buffer).
 *
 * `--v8-defaults`: V8's default inlining budget instead of the CLI's (bin/vhost-user-ts.js).
 *
 * `--single`: one descriptor per TX chain (header + frame, like DPDK virtio-user's can_push) instead
 * of header and frame in two descriptors.
 */
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { VirtioF, bit } from '../../protocol/index.ts';
import { FlatMemory, PackedQueue, SplitQueue, type Virtqueue } from '../../virtqueue/index.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import { portPair } from '../../backend/net/ports/pair.ts';
import type { ReadyQueue } from '../../backend/core/device.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '64' },
    burst: { type: 'string', default: '32' },
    seconds: { type: 'string', default: '3' },
    ring: { type: 'string', default: '1024' },
    single: { type: 'boolean', default: false },
    packed: { type: 'boolean', default: false },
    'v8-defaults': { type: 'boolean', default: false },
  },
});
// The same V8 inlining budget as bin/vhost-user-ts.js (set before the hot path is optimized).
if (!values['v8-defaults']) {
  setFlagsFromString('--max-inlined-bytecode-size=800');
  setFlagsFromString('--max-inlined-bytecode-size-cumulative=4000');
}
const FRAME = Number(values.size);
const BURST = Number(values.burst);
const SECONDS = Number(values.seconds);
const RING = Number(values.ring);
const HDR = 12;
const BUF = 2048;

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.IN_ORDER);

/** Rings at 0 (desc), avail, used; buffers from 1 MiB on. */
function rings(mem: FlatMemory, base: number, bufBase: number, write: boolean, frameLen: number) {
  const desc = base;
  const avail = base + 16 * RING;
  const used = (avail + 6 + 2 * RING + 4095) & ~4095;
  const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);
  const twoDesc = !write && !values.single;
  const n = twoDesc ? RING / 2 : RING;
  for (let i = 0; i < n; i++) {
    const buf = bufBase + i * BUF;
    if (twoDesc) {
      // header and frame in two descriptors: 2i -> 2i+1
      const d0 = desc + 32 * i;
      dv.setUint32(d0, buf + 128 - HDR, true);
      dv.setUint32(d0 + 8, HDR, true);
      dv.setUint16(d0 + 12, 1, true); // NEXT
      dv.setUint16(d0 + 14, 2 * i + 1, true);
      dv.setUint32(d0 + 16, buf + 128, true);
      dv.setUint32(d0 + 24, frameLen, true);
      dv.setUint16(d0 + 28, 0, true);
      dv.setUint16(avail + 4 + 2 * i, 2 * i, true);
      dv.setUint16(avail + 4 + 2 * (i + n), 2 * i, true);
    } else {
      const d = desc + 16 * i;
      dv.setUint32(d, buf + 128 - HDR, true);
      dv.setUint32(d + 8, write ? BUF - 128 + HDR : HDR + frameLen, true);
      dv.setUint16(d + 12, write ? 2 : 0, true);
      dv.setUint16(avail + 4 + 2 * i, i, true);
    }
    for (let k = 0; k < frameLen; k++) mem.bytes[buf + 128 + k] = (k * 7 + i) & 0xff;
  }
  const q = new SplitQueue({ size: RING, descAddr: desc, availAddr: avail, usedAddr: used, eventIdx: false, indirect: false }, mem);
  const availU16 = new Uint16Array(mem.bytes.buffer, mem.bytes.byteOffset + avail, 2);
  // A two-descriptor chain takes two slots: only RING / 2 chains fit.
  return { q, availU16, capacity: n };
}

/** A packed ring at `base` (descriptors, then the two event areas); buffer i at bufBase + i * BUF. */
function packedRing(mem: FlatMemory, base: number, bufBase: number, write: boolean, frameLen: number) {
  const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);
  const drvEvt = base + 16 * RING;
  const devEvt = drvEvt + 4;
  for (let i = 0; i < RING; i++) {
    const buf = bufBase + i * BUF;
    dv.setUint32(base + 16 * i, buf + 128 - HDR, true);
    for (let k = 0; k < frameLen; k++) mem.bytes[buf + 128 + k] = (k * 7 + i) & 0xff;
  }
  const q = new PackedQueue(
    { size: RING, descAddr: base, driverEventAddr: drvEvt, deviceEventAddr: devEvt, eventIdx: false, indirect: false, inOrder: true },
    mem,
  );
  const u32 = new Uint32Array(mem.bytes.buffer, mem.bytes.byteOffset + base, 4 * RING);
  const u16 = new Uint16Array(mem.bytes.buffer, mem.bytes.byteOffset + base, 8 * RING);
  let pos = 0;
  let wrap = 1;
  const len = write ? BUF - 128 + HDR : HDR + frameLen;
  const wbit = write ? 2 : 0;
  /**
   * Makes the next n positions available (in order, flags last). Plain stores: one thread, and the
   * figure should be the backend's cost, not a seq-cst store per descriptor of this fake driver.
   */
  const post = (n: number): void => {
    for (let k = 0; k < n; k++) {
      u32[4 * pos + 2] = len;
      u16[8 * pos + 6] = pos;
      u16[8 * pos + 7] = wbit | (wrap ? 0x80 : 0x8000);
      if (++pos === RING) {
        pos = 0;
        wrap ^= 1;
      }
    }
  };
  return { q, post, capacity: RING };
}

function side(label: string, frameLen: number) {
  const mem = new FlatMemory(16 << 20);
  const rx = values.packed ? packedRing(mem, 0, 1 << 20, true, 0) : splitPoster(rings(mem, 0, 1 << 20, true, 0));
  const tx = values.packed ? packedRing(mem, 0x10000, 8 << 20, false, frameLen) : splitPoster(rings(mem, 0x10000, 8 << 20, false, frameLen));
  const dev = new NetDevice({ queuePairs: 1, label });
  dev.setFeatures(FEATURES);
  const ready = (index: number, queue: Virtqueue): ReadyQueue => ({
    index,
    queue,
    memory: mem,
    notify: () => undefined,
    fail: (e) => {
      throw e;
    },
  });
  return { dev, rx, tx, rxReady: ready(0, rx.q), txReady: ready(1, tx.q) };
}

function splitPoster(r: ReturnType<typeof rings>) {
  const post = (n: number): void => void Atomics.store(r.availU16, 1, (r.availU16[1]! + n) & 0xffff);
  return { q: r.q, post, capacity: r.capacity };
}

const a = side('A', FRAME);
const b = side('B', FRAME);
const [pa, pb] = portPair('a', 'b');
a.dev.attachPort(pa);
b.dev.attachPort(pb);
a.dev.ringReady(a.rxReady);
b.dev.ringReady(b.rxReady);
a.dev.ringReady(a.txReady);
b.dev.ringReady(b.txReady);

let gcs = 0;
new PerformanceObserver((l) => (gcs += l.getEntries().length)).observe({ entryTypes: ['gc'] });

/** One burst each way: A's TX -> B's RX, B's TX -> A's RX. */
const DIRS = [
  [a, b],
  [b, a],
] as const;
function step(): void {
  for (let k = 0; k < 2; k++) {
    const s = DIRS[k]![0];
    const d = DIRS[k]![1];
    d.rx.post(BURST);
    s.tx.post(BURST);
    s.dev.kick(1);
  }
}

/**
 * ns is CPU time of this process (user + system), so a neighbour sharing the core inflates it less than
 * wall time. The loop yields to the event loop every ~20 ms so the GC observer's entries are delivered.
 */
async function run(seconds: number): Promise<{ frames: number; ns: number; wallNs: number }> {
  let frames = 0;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const end = t0 + seconds * 1000;
  let yieldAt = t0 + 20;
  for (let now = t0; now < end; now = performance.now()) {
    for (let i = 0; i < 100; i++) step();
    frames += 100 * 2 * BURST;
    if (now >= yieldAt) {
      await new Promise((r) => setImmediate(r));
      yieldAt = now + 20;
    }
  }
  const c = process.cpuUsage(c0);
  return { frames, ns: (c.user + c.system) * 1e3, wallNs: (performance.now() - t0) * 1e6 };
}

if (a.tx.capacity < BURST) throw new Error('ring too small for the burst');
await run(0.5); // warm-up (JIT)
const g0 = gcs;
const st0 = a.dev.stats.txFrames;
const r = await run(SECONDS);
await new Promise((r) => setImmediate(r));
const moved = a.dev.stats.txFrames - st0;
if (a.dev.stats.txDropped || b.dev.stats.rxDroppedTooBig) throw new Error('frames dropped: the harness is wrong');
console.log(
  `switch-micro: ${values.packed ? 'packed' : 'split'}, ${FRAME} B frames, burst ${BURST}, ring ${RING}${values.single || values.packed ? ', one TX descriptor' : ''}: ` +
    `${(r.ns / r.frames).toFixed(1)} ns/frame of CPU (${(r.wallNs / r.frames).toFixed(1)} wall), ${((r.frames / r.ns) * 1e3).toFixed(2)} Mpps switched per core ` +
    `(A tx ${moved}), ${gcs - g0} GCs`,
);
