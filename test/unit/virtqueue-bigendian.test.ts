/**
 * Legacy big-endian split rings (vhost-user.rst SET_VRING_ENDIAN, protocol feature CROSS_ENDIAN):
 * SplitQueue with `bigEndian` against SplitDriver with `bigEndian`, on fake memory. Every ring field
 * the device reads (descriptors, indirect tables, avail flags/idx/ring/used_event) and writes (used
 * flags/idx/elements/avail_event) is checked in big-endian byte order on the wire, with values whose
 * little-endian reading differs, so a missing swap fails the test.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import {
  Chain,
  ChainReader,
  ChainWriter,
  FlatMemory,
  SplitDriver,
  SplitChainWalkerBE,
  SplitInflight,
  SplitQueue,
  SplitQueueBE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  bswap16,
  bswap32,
  inflightQueueSize,
} from '../../virtqueue/index.ts';
import type { GuestMemory, DriverBuffer, VirtqErrorCode } from '../../virtqueue/index.ts';
import { bytes, prng } from './virtqueue-fixtures.ts';

/** Big-endian rig: driver and queue on the same rings; memory at `base` (gpa). */
function beRig(size = 16, opts: { eventIdx?: boolean; base?: number; byteLen?: number } = {}) {
  const base = opts.base ?? 0;
  const mem = new FlatMemory(opts.byteLen ?? 1 << 20, base);
  const drv = new SplitDriver(mem, { size, base, eventIdx: opts.eventIdx ?? false, bigEndian: true });
  const q = new SplitQueue(drv.queueConfig(), mem);
  return { mem, drv, q, chain: new Chain(), reader: new ChainReader(), writer: new ChainWriter() };
}

/** Raw big-endian reads of guest memory (FlatMemory at `mem.base`). */
function be16(mem: FlatMemory, gpa: number): number {
  return new DataView(mem.bytes.buffer, mem.bytes.byteOffset).getUint16(gpa - mem.base, false);
}
function be32(mem: FlatMemory, gpa: number): number {
  return new DataView(mem.bytes.buffer, mem.bytes.byteOffset).getUint32(gpa - mem.base, false);
}

function expectBroken(t: ExecutionContext, q: SplitQueue, code: VirtqErrorCode): void {
  t.false(q.pop(new Chain()), 'pop must refuse');
  t.is(q.broken?.code, code, q.broken?.message);
}

test('bswap16 / bswap32', (t) => {
  t.is(bswap16(0x1234), 0x3412);
  t.is(bswap16(0x00ff), 0xff00);
  t.is(bswap32(0x12345678), 0x78563412);
  t.is(bswap32(0xff000001), 0x010000ff);
  t.is(bswap32(bswap32(0xdeadbeef)), 0xdeadbeef);
});

test('the bigEndian option selects SplitQueueBE; the little-endian queue is the plain class', (t) => {
  const { q } = beRig();
  t.true(q instanceof SplitQueueBE);
  t.true(q instanceof SplitQueue);
  t.true(q.bigEndian);
  const mem = new FlatMemory(1 << 20);
  const le = new SplitQueue(new SplitDriver(mem, { size: 16 }).queueConfig(), mem);
  t.false(le instanceof SplitQueueBE);
  t.false(le.bigEndian);
  // Constructed directly, the subclass is big-endian whatever the config says.
  const direct = new SplitQueueBE(new SplitDriver(mem, { size: 16 }).queueConfig({ bigEndian: false }), mem);
  t.true(direct.bigEndian);
});

test('big-endian ring: chain round trip at a gpa above 4 GiB; descriptors and used ring are big-endian on the wire', (t) => {
  // Both halves of every 64-bit address are non-zero: a swapped lo/hi order cannot go unnoticed.
  const base = 0x1_2345_0000;
  const { mem, drv, q, chain, reader, writer } = beRig(16, { base });
  const req = bytes(20, 3);
  const head = drv.addChain([
    { byteLen: 20, write: false, data: req },
    { byteLen: 300, write: true },
  ]);
  // The driver wrote a big-endian descriptor (be64 addr, be32 len, be16 flags, be16 next).
  const d = drv.descAddr + 16 * head;
  t.is(be32(mem, d), 0x1, 'addr high half first');
  t.true(be32(mem, d + 4) >= 0x2345_0000, 'addr low half second');
  t.is(be32(mem, d + 8), 20);
  t.is(be16(mem, d + 12), VIRTQ_DESC_F_NEXT);
  t.is(be16(mem, drv.availAddr + 2), 1, 'avail.idx');
  t.is(be16(mem, drv.availAddr + 4), head, 'avail.ring[0]');

  t.is(q.availableCount(), 1);
  t.true(q.pop(chain));
  t.is(chain.head, head);
  t.is(chain.descCount, 2);
  t.deepEqual(
    chain.segments().map((s) => [s.byteLen, s.write, s.addr >= base]),
    [
      [20, false, true],
      [300, true, true],
    ],
  );
  const got = new Uint8Array(20);
  reader.reset(chain).read(got);
  t.deepEqual(got, req);
  writer.reset(chain);
  const resp = bytes(258, 9); // 258 = 0x0102: its byte swap is another plausible length
  writer.write(resp);
  q.pushUsed(chain.head, writer.written);
  t.true(q.flushUsed());
  // used.idx, used.ring[0].id and .len are big-endian on the wire.
  t.is(be16(mem, drv.usedAddr + 2), 1);
  t.is(be32(mem, drv.usedAddr + 4), head);
  t.is(be32(mem, drv.usedAddr + 8), 258);
  const used = drv.readUsed();
  t.deepEqual(used.map((u) => [u.id, u.len]), [[head, 258]]);
  t.deepEqual(used[0]!.data, resp);
  t.is(q.broken, null);
});

test('big-endian ring: indirect tables, and direct descriptors followed by an indirect one (above 4 GiB)', (t) => {
  const { mem, drv, q, chain, reader } = beRig(16, { base: 0x2_0000_0000 });
  const a = bytes(40, 1);
  const b = bytes(70, 2);
  const head = drv.addChain(
    [
      { byteLen: 40, write: false, data: a },
      { byteLen: 70, write: false, data: b },
      { byteLen: 512, write: true },
    ],
    { indirect: true },
  );
  t.is(be16(mem, drv.descAddr + 16 * head + 12), VIRTQ_DESC_F_INDIRECT, 'ring descriptor flags big-endian');
  t.true(q.pop(chain));
  t.true(chain.indirect);
  t.is(chain.descCount, 1);
  t.deepEqual(chain.segments().map((s) => [s.byteLen, s.write]), [
    [40, false],
    [70, false],
    [512, true],
  ]);
  const got = new Uint8Array(110);
  reader.reset(chain).read(got);
  t.deepEqual(got, new Uint8Array([...a, ...b]));
  q.pushUsed(chain.head, 0);
  q.flushUsed();

  // 2.7.5.3.2: a direct readable descriptor, then the indirect one holding a readable and a writable buffer.
  const buf0 = drv.alloc(16);
  const buf1 = drv.alloc(32);
  const buf2 = drv.alloc(64);
  const table = drv.addTable([
    { addr: buf1, len: 32, flags: VIRTQ_DESC_F_NEXT, next: 1 },
    { addr: buf2, len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 },
  ]);
  const d0 = drv.takeDesc();
  const d1 = drv.takeDesc();
  drv.writeDesc(d0, { addr: buf0, len: 16, flags: VIRTQ_DESC_F_NEXT, next: d1 });
  drv.writeDesc(d1, { addr: table, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
  drv.pushHead(d0);
  t.true(q.pop(chain));
  t.deepEqual(chain.segments(), [
    { addr: buf0, byteLen: 16, write: false },
    { addr: buf1, byteLen: 32, write: false },
    { addr: buf2, byteLen: 64, write: true },
  ]);
  t.is(q.broken, null);
});

test('big-endian ring: every walker check still holds (loop, bad next, nested indirect, write before read, bad indirect length)', (t) => {
  const cases: [string, (drv: SplitDriver) => void, VirtqErrorCode][] = [
    [
      'loop',
      (drv) => {
        const a = drv.takeDesc();
        const b = drv.takeDesc();
        const buf = drv.alloc(64);
        drv.writeDesc(a, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: b });
        drv.writeDesc(b, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: a });
        drv.pushHead(a);
      },
      'VQ_LOOP',
    ],
    [
      // next 0x0100 read little-endian would be 1, a valid index.
      'next out of range',
      (drv) => {
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: drv.alloc(64), len: 64, flags: VIRTQ_DESC_F_NEXT, next: 0x100 });
        drv.pushHead(a);
      },
      'VQ_BAD_NEXT',
    ],
    [
      'next out of range in an indirect table',
      (drv) => {
        const table = drv.addTable([{ addr: drv.alloc(16), len: 16, flags: VIRTQ_DESC_F_NEXT, next: 0x100 }]);
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: table, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        drv.pushHead(a);
      },
      'VQ_BAD_NEXT',
    ],
    [
      'loop in an indirect table',
      (drv) => {
        const buf = drv.alloc(16);
        const table = drv.addTable([
          { addr: buf, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 },
          { addr: buf, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 0 },
        ]);
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: table, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        drv.pushHead(a);
      },
      'VQ_LOOP',
    ],
    [
      'nested indirect',
      (drv) => {
        const inner = drv.addTable([{ addr: drv.alloc(16), len: 16, flags: 0, next: 0 }]);
        const table = drv.addTable([{ addr: inner, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }]);
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: table, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        drv.pushHead(a);
      },
      'VQ_NESTED_INDIRECT',
    ],
    [
      'readable after writable',
      (drv) => {
        drv.addChain([
          { byteLen: 16, write: true },
          { byteLen: 16, write: false },
        ]);
      },
      'VQ_WRITE_BEFORE_READ',
    ],
    [
      // len 0x1000_0000 swapped is 16: a valid table length if read little-endian.
      'indirect table length',
      (drv) => {
        const table = drv.addTable([{ addr: drv.alloc(16), len: 16, flags: 0, next: 0 }]);
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: table, len: 0x1000_0000, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        drv.pushHead(a);
      },
      'VQ_BAD_INDIRECT',
    ],
    [
      // An address above 2^53 (hi half >= 2^21) in big-endian order.
      'address above 2^53',
      (drv) => {
        const a = drv.takeDesc();
        drv.writeDesc(a, { addr: 1n << 60n, len: 16, flags: 0, next: 0 });
        drv.pushHead(a);
      },
      'VQ_UNMAPPED',
    ],
  ];
  for (const [what, build, code] of cases) {
    const { drv, q } = beRig(16);
    build(drv);
    expectBroken(t, q, code);
    t.log(`${what}: ${q.broken?.message}`);
  }
});

test('big-endian ring: avail.ring heads and avail.idx are read big-endian (bad head, index jump)', (t) => {
  {
    // Head 0x0100 reads as 1 little-endian (in range); big-endian it is 256 >= 16.
    const { drv, q } = beRig(16);
    drv.pushHead(0x100);
    expectBroken(t, q, 'VQ_BAD_HEAD');
  }
  {
    // avail.idx 0x0100 reads as 1 little-endian (one entry); big-endian it is 256 ahead.
    const { drv, q } = beRig(16);
    drv.setAvailIdx(0x100);
    t.is(q.availableCount(), 0);
    t.is(q.broken?.code, 'VQ_AVAIL_JUMP');
  }
  {
    // The used index the queue starts from is read big-endian too.
    const mem = new FlatMemory(1 << 20);
    const drv = new SplitDriver(mem, { size: 16, bigEndian: true });
    drv.startAt(0x0102);
    const q = new SplitQueue(drv.queueConfig({ lastAvailIdx: 0x0102 }), mem);
    t.is(q.usedIdx, 0x0102);
    drv.addChain([{ byteLen: 8, write: true }]);
    const c = new Chain();
    t.true(q.pop(c));
    q.pushUsed(c.head, 8);
    q.flushUsed();
    t.is(be16(mem, drv.usedAddr + 2), 0x0103);
    t.deepEqual(drv.readUsed().map((u) => u.id), [c.head]);
  }
});

test('big-endian ring, EVENT_IDX: used_event read and avail_event written big-endian', (t) => {
  const { mem, drv, q, chain } = beRig(16, { eventIdx: true });
  // used_event 1: "notify when used.idx goes past 1". Little-endian it would read 256: never.
  drv.setUsedEvent(1);
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 8, write: true }]);
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  t.false(q.flushUsed(), 'used.idx 0 -> 1 does not cross used_event 1');
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  t.true(q.flushUsed(), 'used.idx 1 -> 2 crosses used_event 1');
  // avail_event := the avail index seen (3), big-endian; used.flags untouched (2.7.10 with EVENT_IDX).
  q.disableNotification();
  t.false(q.enableNotification(), 'nothing raced');
  t.is(be16(mem, drv.usedAddr + 4 + 8 * 16), 3);
  t.is(drv.availEvent, 3);
  t.is(be16(mem, drv.usedAddr), 0);
  // The race re-check reads avail.idx big-endian: one more entry is reported.
  t.true(q.pop(chain));
  drv.addChain([{ byteLen: 8, write: true }]);
  t.true(q.enableNotification(), 'the entry added meanwhile is seen');
  // The driver reads avail_event 3 big-endian: its 4th entry crosses it, so it kicks.
  t.true(drv.kick(), 'avail_event 3 is crossed by the 4th entry');
});

test('big-endian ring without EVENT_IDX: used.flags NO_NOTIFY written and avail.flags NO_INTERRUPT read big-endian', (t) => {
  const { mem, drv, q, chain } = beRig(16);
  q.disableNotification();
  t.is(be16(mem, drv.usedAddr), 1, 'used.flags = NO_NOTIFY, big-endian');
  t.is(drv.usedFlags, 1);
  drv.addChain([{ byteLen: 8, write: true }]);
  t.false(drv.kick(), 'the driver sees NO_NOTIFY');
  t.true(q.enableNotification(), 'the entry is reported by the re-check');
  t.is(be16(mem, drv.usedAddr), 0);
  // avail.flags NO_INTERRUPT (big-endian 0x0001; little-endian it would read 0x0100, no bit 0).
  drv.setNoInterrupt(true);
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  t.false(q.flushUsed(), 'the driver asked for no interrupt');
  drv.setNoInterrupt(false);
  drv.addChain([{ byteLen: 8, write: true }]);
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  t.true(q.flushUsed());
});

test('big-endian ring: 16-bit index wrap-around (65535 -> 0)', (t) => {
  const { mem, drv, chain } = beRig(8);
  drv.startAt(0xfffd);
  const q2 = new SplitQueue(drv.queueConfig({ lastAvailIdx: 0xfffd }), drv.mem);
  t.is(q2.usedIdx, 0xfffd);
  const heads: number[] = [];
  for (let i = 0; i < 6; i++) heads.push(drv.addChain([{ byteLen: 4, write: true }]));
  const got: number[] = [];
  while (q2.pop(chain)) {
    got.push(chain.head);
    q2.pushUsed(chain.head, 4);
  }
  q2.flushUsed();
  t.deepEqual(got, heads);
  t.is(q2.lastAvailIdx, 3);
  t.is(be16(mem, drv.usedAddr + 2), 3);
  t.deepEqual(drv.readUsed().map((u) => u.id), heads);
  t.is(q2.broken, null);
});

test('big-endian ring: inflight attach/recover reads used.idx and avail.idx big-endian', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 16, bigEndian: true });
  drv.startAt(0x0102);
  const region = new Uint8Array(inflightQueueSize('split', 16));
  const q1 = new SplitQueue(drv.queueConfig({ lastAvailIdx: 0x0102 }), mem);
  t.deepEqual(q1.attachInflight(new SplitInflight(region, 16)), { fresh: true, resubmitted: 0 });
  const c = new Chain();
  const order: number[] = [];
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 8, write: true }]);
  for (let i = 0; i < 3; i++) {
    t.true(q1.pop(c));
    order.push(c.head);
  }
  q1.pushUsed(order[0]!, 8);
  q1.flushUsed();
  // q1 "crashes"; a new queue recovers the two chains still in flight.
  const q2 = new SplitQueue(drv.queueConfig({ lastAvailIdx: 0x0103 }), mem);
  t.deepEqual(q2.attachInflight(new SplitInflight(region, 16)), { fresh: false, resubmitted: 2 });
  t.is(q2.usedIdx, 0x0103);
  t.is(q2.lastAvailIdx, 0x0105);
  const got: number[] = [];
  while (q2.pop(c)) got.push(c.head);
  t.deepEqual(got, order.slice(1));
  t.is(q2.broken, null);
});

test('SplitChainWalkerBE is what a big-endian queue walks with (rebinds on setMemory)', (t) => {
  const { drv, q, chain, mem } = beRig(16);
  t.true((q as unknown as { walker: unknown }).walker instanceof SplitChainWalkerBE);
  t.true(q.setMemory(mem as GuestMemory));
  drv.addChain([{ byteLen: 10, write: false, data: bytes(10) }]);
  t.true(q.pop(chain));
  t.is(chain.readByteLen, 10);
});

/**
 * The same random driver script against a little-endian and a big-endian ring: the device must see
 * the same chains and the driver the same used elements and bytes. Only the byte order differs.
 */
test('random scripts: a big-endian ring behaves exactly like a little-endian one', (t) => {
  for (let seed = 1; seed <= 20; seed++) {
    const runs = [false, true].map((bigEndian) => {
      const rnd = prng(seed);
      const mem = new FlatMemory(1 << 20);
      const eventIdx = seed % 2 === 0;
      const drv = new SplitDriver(mem, { size: 32, eventIdx, bigEndian, heapByteLen: 1 << 18 });
      drv.startAt(0xfff0 + (seed & 7)); // cross the 16-bit wrap
      const q = new SplitQueue(drv.queueConfig({ lastAvailIdx: drv.availIdx }), mem);
      const c = new Chain();
      const w = new ChainWriter();
      const r = new ChainReader();
      const log: unknown[] = [];
      for (let step = 0; step < 60; step++) {
        const op = rnd();
        if (op < 0.4 && drv.freeDescCount >= 4) {
          const n = 1 + Math.floor(rnd() * 3);
          const bufs: DriverBuffer[] = [];
          for (let i = 0; i < n; i++) {
            const write = i === n - 1 && rnd() < 0.7;
            const len = 1 + Math.floor(rnd() * 300);
            bufs.push(write ? { byteLen: len, write } : { byteLen: len, write, data: bytes(len, step + i) });
          }
          if (eventIdx) drv.setUsedEvent(Math.floor(rnd() * 0x10000));
          else drv.setNoInterrupt(rnd() < 0.3);
          log.push(['add', drv.addChain(bufs, { indirect: rnd() < 0.4 })]);
        } else if (op < 0.8) {
          while (q.pop(c)) {
            const seen = new Uint8Array(c.readByteLen);
            r.reset(c).read(seen);
            w.reset(c);
            const n = w.write(bytes(Math.min(w.remaining, 1 + Math.floor(rnd() * 400)), step));
            log.push(['pop', c.head, c.descCount, c.indirect, c.readByteLen, c.writeByteLen, Array.from(seen.subarray(0, 8))]);
            q.pushUsed(c.head, n);
          }
          log.push(['flush', q.flushUsed(), q.usedIdx]);
        } else if (op < 0.9) {
          q.disableNotification();
          log.push(['enable', q.enableNotification(), drv.kickable]);
        } else {
          log.push(['used', drv.readUsed().map((u) => [u.id, u.len, Array.from(u.data ?? [])])]);
        }
      }
      log.push(['broken', q.broken?.code ?? null]);
      return log;
    });
    t.deepEqual(runs[1], runs[0], `seed ${seed}`);
  }
});
