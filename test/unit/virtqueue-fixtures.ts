/** Shared setup for the virtqueue-*.test.ts files (not a test file itself). */
import { Chain, ChainReader, ChainWriter, FlatMemory, SplitDriver, PackedDriver, PackedQueue, SplitQueue } from '../../virtqueue/index.ts';
import type { GuestMemory, DriverBuffer, SplitDriverOptions, SplitQueueConfig, UsedEntry } from '../../virtqueue/index.ts';
import { IotlbCache, createIotlbLookup } from '../../virtqueue/iotlb.ts';

export interface Rig {
  mem: GuestMemory;
  drv: SplitDriver;
  q: SplitQueue;
  chain: Chain;
  reader: ChainReader;
  writer: ChainWriter;
}

/** A FlatMemory of `byteLen` with a SplitDriver and a SplitQueue on the same rings. */
export function rig(
  size = 16,
  opts: Partial<SplitDriverOptions> & { byteLen?: number; mem?: GuestMemory; queue?: Partial<SplitQueueConfig> } = {},
): Rig {
  const mem = opts.mem ?? new FlatMemory(opts.byteLen ?? 1 << 20);
  const drv = new SplitDriver(mem, { size, ...opts });
  const q = new SplitQueue(drv.queueConfig(opts.queue), mem);
  return { mem, drv, q, chain: new Chain(), reader: new ChainReader(), writer: new ChainWriter() };
}

export function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

/** Deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A queue of either format with its driver (SplitDriver or PackedDriver), for tests that run on both (16 entries). */
export interface FormatRig {
  mem: GuestMemory;
  q: SplitQueue | PackedQueue;
  add(bufs: readonly DriverBuffer[], opts?: { indirect?: boolean }): number;
  used(): UsedEntry[];
  split?: SplitDriver;
  packed?: PackedDriver;
}

export function formatRig(kind: 'split' | 'packed', mem: GuestMemory = new FlatMemory(1 << 20), base = 0, size = 16): FormatRig {
  if (kind === 'split') {
    const d = new SplitDriver(mem, { size, base });
    const q = new SplitQueue(d.queueConfig(), mem);
    return { mem, q, add: (b, o) => d.addChain(b, o), used: () => d.readUsed(), split: d };
  }
  const d = new PackedDriver(mem, { size, base });
  const q = new PackedQueue(d.queueConfig(), mem);
  return { mem, q, add: (b, o) => d.addChain(b, o), used: () => d.readUsed(), packed: d };
}

/** Milliseconds for one lookup of each address in `addrs` (64 bytes each, read). */
export function timeLookups(c: IotlbCache, addrs: Float64Array): number {
  const r = createIotlbLookup();
  const t0 = performance.now();
  let sink = 0;
  for (let i = 0; i < addrs.length; i++) sink += c.lookup(addrs[i]!, 64, false, r).byteLen;
  const dt = performance.now() - t0;
  if (sink < 0) throw new Error('unreachable');
  return dt;
}

/** A cache of exactly n disjoint entries (every other 4 KiB page), and `count` lookup addresses inside them. */
export function filledIotlb(n: number, count: number, seed: number): { c: IotlbCache; addrs: Float64Array } {
  const PAGE = 0x1000;
  const c = new IotlbCache({ maxEntries: Math.max(n, 1) });
  for (let i = 0; i < n; i++) c.update(i * 2 * PAGE, PAGE, 0x4000_0000 + i * 4 * PAGE, 'rw');
  const rnd = prng(seed);
  const addrs = new Float64Array(count);
  for (let i = 0; i < count; i++) addrs[i] = Math.floor(rnd() * n) * 2 * PAGE + Math.floor(rnd() * (PAGE - 64));
  return { c, addrs };
}
