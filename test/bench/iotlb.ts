/**
 * IOTLB benchmark: lookups/s with 1, 64 and 4096 entries (ring-like and random access) and the whole
 * translate path (IotlbMemory vs RegionMemory). Moved out of test/unit/virtqueue-iotlb.test.ts (issue
 * 21): it measured and asserted nothing, so it counted as a test that could not fail.
 *
 *   node --import tsx test/bench/iotlb.ts
 */
import { performance } from 'node:perf_hooks';
import { IotlbCache, IotlbMemory } from '../../virtqueue/iotlb.ts';
import { RegionMemory, createSpan } from '../../virtqueue/memory.ts';
import { filledIotlb, timeLookups } from '../unit/virtqueue-fixtures.ts';

const PAGE = 0x1000;
const UVA = 0x7f00_0000_0000;
const IOVA = 0x4000_0000;


function regions() {
  const a = { gpa: 0x0, uva: UVA, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  const b = { gpa: 0x100000, uva: UVA + 0x10000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  const ro = { gpa: 0x200000, uva: 0x7f10_0000_0000, byteLen: PAGE, bytes: new Uint8Array(PAGE), writable: false };
  return { a, b, ro, mem: new RegionMemory([b, ro, a]) };
}

function main(): void {
  const lines: string[] = [];
  for (const n of [1, 64, 4096]) {
    for (const pattern of ['ring', 'random'] as const) {
      const { c, addrs } = filledIotlb(n, 200_000, n);
      if (pattern === 'ring') {
        // Runs of 16 consecutive accesses in one entry (descriptor table, avail ring, a buffer).
        for (let i = 0; i < addrs.length; i++) addrs[i] = addrs[i - (i % 16)]! - (addrs[i - (i % 16)]! % PAGE) + (i % 16) * 64;
      }
      timeLookups(c, addrs);
      const before = c.stats();
      const ms = timeLookups(c, addrs);
      const after = c.stats();
      const lookups = after.lookups - before.lookups;
      const rate = after.lastHits - before.lastHits;
      if (after.hits - before.hits !== lookups) throw new Error('not every lookup hit');
      lines.push(
        `${String(n).padStart(4)} entries, ${pattern.padEnd(6)}: ${((lookups / ms) * 1000 / 1e6).toFixed(1)} M lookups/s, ` +
          `last-hit ${((100 * rate) / lookups).toFixed(1)}%`,
      );
    }
  }
  // The whole path the engine takes: IotlbMemory.translate (IOTLB + region by uaddr) vs RegionMemory.
  const r = regions();
  const c = new IotlbCache();
  for (let i = 0; i < 16; i++) c.update(IOVA + i * 2 * PAGE, PAGE, UVA + i * PAGE, 'rw');
  const im = new IotlbMemory(c, r.mem);
  const span = createSpan();
  const rate = (f: (i: number) => boolean): number => {
    for (let i = 0; i < 50_000; i++) f(i);
    const t0 = performance.now();
    for (let i = 0; i < 200_000; i++) if (!f(i)) throw new Error('translate failed');
    return 200_000 / (performance.now() - t0) / 1000;
  };
  const viaIotlb = rate((i) => im.translate(IOVA + ((i >> 4) & 15) * 2 * PAGE + (i & 15) * 64, 64, true, span));
  const direct = rate((i) => r.mem.translate(((i >> 4) & 15) * PAGE + (i & 15) * 64, 64, true, span));
  lines.push(`translate, ring-like: IotlbMemory ${viaIotlb.toFixed(1)} M/s, RegionMemory ${direct.toFixed(1)} M/s`);
  console.log(lines.join('\n'));
}

main();
