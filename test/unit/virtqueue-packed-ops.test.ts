/**
 * Randomized op sequences (deterministic seeds) for packed rings, like virtqueue-ops.test.ts for
 * split: a driver (PackedDriver) and a device (PackedQueue + reader/writer) take turns at random,
 * over sizes that are and are not powers of two, with completion out of order, unpop, batches and
 * many laps of the ring. Without corruption every byte, length and id must round-trip exactly and no
 * wakeup may be lost; with corruption the engine must never throw, and either keep working or be broken.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Chain, ChainReader, ChainWriter, PackedDriver, PackedQueue, RegionMemory, createDrainPlan } from '../../virtqueue/index.ts';
import type { DriverBuffer, RawPackedDesc } from '../../virtqueue/index.ts';
import { prng } from './virtqueue-fixtures.ts';

const OPS = 2500;

interface Expect {
  read: Uint8Array;
  writeCap: number;
}

function setup(size: number, eventIdx: boolean) {
  // Two adjacent regions; the heap straddles their boundary so buffers cross regions regularly.
  const mem = new RegionMemory([
    { gpa: 0, uva: 0x7f00_0000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) },
    { gpa: 0x10000, uva: 0x7f10_0000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) },
  ]);
  const drv = new PackedDriver(mem, { size, eventIdx, heapAddr: 0x4000, heapByteLen: 0x18000 });
  const q = new PackedQueue(drv.queueConfig(), mem);
  return { mem, drv, q };
}

interface RunResult {
  code: string | null;
  completed: number;
  availFlips: number;
}

function run(t: ExecutionContext, seed: number, size: number, eventIdx: boolean, corruptRate: number): RunResult {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const { drv, q } = setup(size, eventIdx);
  const chain = new Chain();
  const reader = new ChainReader();
  const writer = new ChainWriter();
  const expect = new Map<number, Expect>();
  const wrote = new Map<number, Uint8Array>();
  const held: number[] = []; // popped, not yet pushed (pop order)
  /** The last `streak` entries of `held` are exactly the most recent pops: unpop(<= streak) is legal. */
  let streak = 0;
  let completed = 0;
  let tainted = false;
  let availFlips = 0;
  let lastWrap = q.availWrapCounter;
  const readBuf = new Uint8Array(4096);

  const device = (c: Chain): number => {
    reader.reset(c);
    const n = reader.read(readBuf);
    if (!tainted) {
      const e = expect.get(c.head);
      if (!e) throw new Error(`seed ${seed}: popped unknown id ${c.head}`);
      if (n !== e.read.length || !readBuf.subarray(0, n).every((b, i) => b === e.read[i])) {
        throw new Error(`seed ${seed}: id ${c.head} read mismatch`);
      }
      t.is(c.writeByteLen, e.writeCap);
    }
    writer.reset(c);
    const len = int(c.writeByteLen + 1);
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = (c.head * 13 + i + seed) & 0xff;
    t.is(writer.write(data), len);
    wrote.set(c.head, data);
    if (q.availWrapCounter !== lastWrap) {
      availFlips++;
      lastWrap = q.availWrapCounter;
    }
    return writer.written;
  };

  const push = (id: number) => q.pushUsed(id, wrote.get(id)!.length);

  const checkUsed = () => {
    for (const u of drv.readUsed()) {
      completed++;
      if (tainted) continue;
      const w = wrote.get(u.id);
      if (!w) throw new Error(`seed ${seed}: used id ${u.id} was never processed`);
      t.is(u.len, w.length);
      t.deepEqual(u.data, w);
      expect.delete(u.id);
      wrote.delete(u.id);
    }
  };

  const addRandom = (): boolean => {
    const nr = int(3);
    const nw = int(3) + (nr === 0 ? 1 : 0);
    const indirect = rnd() < 0.3;
    if (drv.freeDescCount < (indirect ? 1 : nr + nw)) return false;
    const bufs: DriverBuffer[] = [];
    const reads: Uint8Array[] = [];
    for (let i = 0; i < nr; i++) {
      const d = Uint8Array.from({ length: 1 + int(300) }, () => int(256));
      reads.push(d);
      bufs.push({ byteLen: d.length, write: false, data: d });
    }
    let cap = 0;
    for (let i = 0; i < nw; i++) {
      const n = 1 + int(300);
      cap += n;
      bufs.push({ byteLen: n, write: true });
    }
    let id: number;
    try {
      id = drv.addChain(bufs, { indirect, publish: rnd() < 0.8 });
    } catch {
      return false; // driver heap full / no ids: fine, try later
    }
    if (rnd() < 0.5) drv.publish();
    const read = new Uint8Array(reads.reduce((s, r) => s + r.length, 0));
    let off = 0;
    for (const r of reads) {
      read.set(r, off);
      off += r.length;
    }
    expect.set(id, { read, writeCap: cap });
    return true;
  };

  const rawDesc = (): RawPackedDesc => ({
    addr: rnd() < 0.2 ? 2n ** 60n + BigInt(int(100)) : int(0x30000),
    len: int(0x2000),
    id: int(size + 3),
    flags: int(8) | (rnd() < 0.5 ? 0x80 : 0) | (rnd() < 0.5 ? 0x8000 : 0),
  });

  const corruptRandom = () => {
    tainted = true;
    switch (int(6)) {
      case 0:
        drv.writeDesc(int(size), rawDesc());
        break;
      case 1:
        drv.pushRaw(Array.from({ length: 1 + int(3) }, rawDesc));
        break;
      case 2: {
        // A list reusing an id (maybe one in flight).
        drv.pushRaw([{ addr: 0x8000, len: 16, id: int(size), flags: 2 }]);
        break;
      }
      case 3: {
        const tb = drv.addTable([rawDesc(), rawDesc()]);
        drv.pushRaw([{ addr: tb, len: 16 * (1 + int(3)), id: int(size), flags: 4 | (int(2) ? 1 : 0) }]);
        break;
      }
      case 4:
        // NEXT on everything: a loop unless something ends it.
        drv.pushRaw(Array.from({ length: size }, () => ({ addr: 0x8000, len: 16, id: 0, flags: 1 })));
        break;
      default:
        // Flip a random descriptor to "available" under either wrap counter.
        drv.writeDesc(int(size), { addr: 0x8000, len: 16, id: int(size), flags: rnd() < 0.5 ? 0x80 : 0x8000 });
    }
  };

  for (let op = 0; op < OPS; op++) {
    const r = rnd();
    if (r < 0.3) addRandom();
    else if (r < 0.55) {
      if (held.length < size && q.pop(chain)) {
        device(chain);
        held.push(chain.head);
        streak++;
      }
    } else if (r < 0.7) {
      if (held.length > 0) {
        const i = int(held.length);
        const [h] = held.splice(i, 1);
        if (i >= held.length + 1 - streak) streak = held.length - i;
        push(h!);
      }
    } else if (r < 0.75) {
      if (streak > 0) {
        // Give back 1..3 of the most recent pops (mergeable RX short of buffers).
        const k = 1 + int(Math.min(streak, 3));
        held.splice(held.length - k, k);
        q.unpop(k);
        streak -= k;
      }
    } else if (r < 0.83) q.flushUsed();
    else if (r < 0.91) checkUsed();
    else if (r < 0.96) {
      // Drain everything available (a kick handler). Afterwards the driver's next add must produce a
      // kick (no lost wakeup), unless the queue broke.
      while (held.length) push(held.shift()!);
      streak = 0;
      drv.publish();
      const res = q.drain(createDrainPlan(device, 1 + int(2 * size)));
      if (!res.more && !res.stopped && q.broken === null && !tainted) {
        t.true(q.notificationsEnabled);
        t.false(q.hasAvailable());
        if (addRandom()) {
          drv.publish();
          t.true(drv.kick(), `seed ${seed} op ${op}: lost wakeup`);
        }
      }
    } else if (r < 0.96 + corruptRate) corruptRandom();
    else drv.kick();
  }
  // Wind down: publish, complete everything held and read it back.
  drv.publish();
  while (held.length) push(held.shift()!);
  q.flushUsed();
  if (q.broken === null && !tainted) {
    for (let i = 0; i < 4; i++) {
      q.drain(createDrainPlan(device, 1000));
      checkUsed();
    }
    t.is(expect.size, 0, `seed ${seed}: every list added was completed`);
    t.is(drv.inFlightCount, 0);
    t.is(drv.freeDescCount, size);
    t.is(q.lastAvailIdx, drv.availPos);
    t.is(q.usedIdx, drv.usedPos);
    t.is(q.usedWrapCounter, drv.usedWrap);
  } else checkUsed();
  if (q.broken !== null) {
    t.false(q.pop(chain));
    t.is(typeof q.broken.code, 'string');
  }
  return { code: q.broken?.code ?? null, completed, availFlips };
}

const SIZES = [16, 13, 7, 100];

test('packed: random op sequences without corruption round-trip every byte (sizes 16/13/7/100, with and without EVENT_IDX)', (t) => {
  for (let seed = 1; seed <= 8; seed++) {
    const size = SIZES[seed % SIZES.length]!;
    const res = run(t, seed, size, seed % 2 === 0, 0);
    t.is(res.code, null, `seed ${seed}`);
    t.true(res.completed > 150, `seed ${seed}: only ${res.completed} lists completed`);
    if (size < 50) t.true(res.availFlips > 10, `seed ${seed}: only ${res.availFlips} wrap flips`);
  }
});

test('packed: random op sequences with corruption never throw; the queue either keeps working or is broken', (t) => {
  const codes = new Set<string>();
  let broken = 0;
  let survived = 0;
  for (let seed = 100; seed < 160; seed++) {
    const size = SIZES[seed % SIZES.length]!;
    // Any exception out of run() (engine or device code) fails the test.
    const res = run(t, seed, size, seed % 2 === 0, seed % 4 < 2 ? 0.01 : 0.0005);
    if (res.code !== null) {
      broken++;
      codes.add(res.code);
    } else survived++;
  }
  t.true(broken > 0, 'corruption must break some queues');
  t.true(survived > 0, 'light corruption must leave some queues working');
  t.true(codes.size >= 4, `several distinct error codes expected, got ${[...codes].join(',')}`);
  t.log(`broken ${broken}, survived ${survived}, codes ${[...codes].sort().join(' ')}`);
});
