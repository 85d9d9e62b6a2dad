/**
 * Randomized op sequences (deterministic seeds), in the spirit of vm-virtio's fuzz
 * `VirtioQueueFunction` list: a driver (SplitDriver) and a device (SplitQueue + reader/writer) take
 * turns at random. Without corruption every byte and length must round-trip exactly and no wakeup
 * may be lost; with corruption the engine must never throw, and either keep working or be broken.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Chain, ChainReader, ChainWriter, SplitDriver, RegionMemory, SplitQueue, createDrainPlan } from '../../virtqueue/index.ts';
import type { DriverBuffer } from '../../virtqueue/index.ts';
import { prng } from './virtqueue-fixtures.ts';

const SIZE = 16;
const OPS = 2000;

interface Expect {
  read: Uint8Array;
  writeCap: number;
}

function setup(eventIdx: boolean) {
  // Two adjacent regions; the heap straddles their boundary so chains cross regions regularly.
  const mem = new RegionMemory([
    { gpa: 0, uva: 0x7f00_0000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) },
    { gpa: 0x10000, uva: 0x7f10_0000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) },
  ]);
  const drv = new SplitDriver(mem, { size: SIZE, eventIdx, heapAddr: 0x4000, heapByteLen: 0x18000 });
  const q = new SplitQueue(drv.queueConfig(), mem);
  return { mem, drv, q };
}

function run(t: ExecutionContext, seed: number, eventIdx: boolean, corruptRate: number): { code: string | null; completed: number } {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const { drv, q } = setup(eventIdx);
  const chain = new Chain();
  const reader = new ChainReader();
  const writer = new ChainWriter();
  const expect = new Map<number, Expect>();
  /** What the device wrote per head (length + bytes), checked when the driver reads used. */
  const wrote = new Map<number, Uint8Array>();
  const held: number[] = []; // popped, not yet pushed (pop order)
  let lastPopHeld = false; // the most recent pop is still held (unpop(1) is legal)
  let completed = 0;
  let tainted = false; // corruption happened: data checks off
  const readBuf = new Uint8Array(4096);

  const device = (c: Chain): number => {
    reader.reset(c);
    const n = reader.read(readBuf);
    if (!tainted) {
      const e = expect.get(c.head);
      if (!e) throw new Error(`popped unknown head ${c.head}`);
      t.is(n, e.read.length);
      if (n !== e.read.length || !readBuf.subarray(0, n).every((b, i) => b === e.read[i])) {
        throw new Error(`seed ${seed}: head ${c.head} read mismatch`);
      }
      t.is(c.writeByteLen, e.writeCap);
    }
    writer.reset(c);
    const len = int(c.writeByteLen + 1);
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = (c.head * 13 + i + seed) & 0xff;
    t.is(writer.write(data), len);
    wrote.set(c.head, data);
    return writer.written;
  };

  const push = (head: number) => {
    if (q.pendingUsed >= SIZE) q.flushUsed();
    q.pushUsed(head, wrote.get(head)!.length);
  };

  const checkUsed = () => {
    for (const u of drv.readUsed()) {
      completed++;
      if (tainted) continue;
      const w = wrote.get(u.id);
      t.truthy(w, `used id ${u.id} was never processed`);
      t.is(u.len, w!.length);
      t.deepEqual(u.data, w);
      expect.delete(u.id);
    }
  };

  const addRandom = () => {
    const nr = int(3);
    const nw = int(3) + (nr === 0 ? 1 : 0);
    const indirect = rnd() < 0.3;
    if (drv.freeDescCount < (indirect ? 1 : nr + nw)) return;
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
    let head: number;
    try {
      head = drv.addChain(bufs, { indirect });
    } catch {
      return; // driver heap full: fine, try later
    }
    const read = new Uint8Array(reads.reduce((s, r) => s + r.length, 0));
    let off = 0;
    for (const r of reads) {
      read.set(r, off);
      off += r.length;
    }
    expect.set(head, { read, writeCap: cap });
  };

  const corruptRandom = () => {
    tainted = true;
    switch (int(6)) {
      case 0:
        drv.writeDesc(int(SIZE), { addr: int(0x30000), len: int(0x2000), flags: int(8), next: int(SIZE + 2) });
        break;
      case 1:
        drv.pushHead(int(SIZE + 4));
        break;
      case 2:
        drv.setAvailIdx(q.lastAvailIdx + int(3 * SIZE));
        break;
      case 3: {
        const tb = drv.addTable([
          { addr: int(0x30000), len: int(0x100), flags: int(8), next: int(3) },
          { addr: int(0x30000), len: int(0x100), flags: int(8), next: int(3) },
        ]);
        drv.writeDesc(int(SIZE), { addr: tb, len: 16 * (1 + int(3)), flags: 4, next: 0 });
        break;
      }
      case 4: {
        const d = int(SIZE);
        drv.writeDesc(d, { addr: 0x8000, len: 16, flags: 1, next: d }); // self loop
        break;
      }
      default:
        drv.writeDesc(int(SIZE), { addr: 2n ** 60n + BigInt(int(100)), len: 16, flags: 0, next: 0 });
    }
  };

  for (let op = 0; op < OPS; op++) {
    const r = rnd();
    if (r < 0.3) addRandom();
    else if (r < 0.55) {
      if (held.length < SIZE && q.pop(chain)) {
        device(chain);
        held.push(chain.head);
        lastPopHeld = true;
      }
    } else if (r < 0.7) {
      if (held.length > 0) {
        const i = int(held.length);
        const [h] = held.splice(i, 1);
        if (i === held.length) lastPopHeld = false;
        push(h!);
      }
    } else if (r < 0.75) {
      if (lastPopHeld) {
        held.pop();
        q.unpop(1);
        lastPopHeld = false;
      }
    } else if (r < 0.83) q.flushUsed();
    else if (r < 0.91) checkUsed();
    else if (r < 0.96) {
      // Drain everything available (what a kick handler does). Afterwards the driver's next add
      // must produce a kick (no lost wakeup), unless the queue broke.
      while (held.length) push(held.shift()!);
      lastPopHeld = false;
      const res = q.drain(createDrainPlan(device, 1 + int(2 * SIZE)));
      if (!res.more && !res.stopped && q.broken === null && !tainted) {
        t.true(q.notificationsEnabled);
        const before = drv.freeDescCount;
        addRandom();
        if (drv.freeDescCount !== before) t.true(drv.kick(), `seed ${seed} op ${op}: lost wakeup`);
      }
    } else if (r < 0.96 + corruptRate) corruptRandom();
    else drv.kick();
  }
  // Wind down: complete everything held and read it back.
  while (held.length) push(held.shift()!);
  q.flushUsed();
  if (q.broken === null && !tainted) {
    q.drain(createDrainPlan(device, 1000));
    checkUsed();
    t.is(expect.size, 0, `seed ${seed}: every chain added was completed`);
    t.is(drv.inFlightCount, 0);
  } else checkUsed();
  if (q.broken !== null) {
    t.false(q.pop(chain));
    t.is(typeof q.broken.code, 'string');
  }
  return { code: q.broken?.code ?? null, completed };
}

test('random op sequences without corruption round-trip every byte (split, with and without EVENT_IDX)', (t) => {
  for (let seed = 1; seed <= 6; seed++) {
    const res = run(t, seed, seed % 2 === 0, 0);
    t.is(res.code, null, `seed ${seed}`);
    t.true(res.completed > 100, `seed ${seed}: only ${res.completed} chains completed`);
  }
});

test('random op sequences with corruption never throw; the queue either keeps working or is broken', (t) => {
  const codes = new Set<string>();
  let broken = 0;
  let survived = 0;
  for (let seed = 100; seed < 140; seed++) {
    // Any exception out of run() (engine or device code) fails the test.
    const res = run(t, seed, seed % 2 === 0, seed % 4 < 2 ? 0.01 : 0.0005);
    if (res.code !== null) {
      broken++;
      codes.add(res.code);
    } else survived++;
  }
  t.true(broken > 0, 'corruption must break some queues');
  t.true(survived > 0, 'light corruption (e.g. of free descriptors) must leave some queues working');
  t.true(codes.size >= 3, `several distinct error codes expected, got ${[...codes].join(',')}`);
  t.log(`broken ${broken}, survived ${survived}, codes ${[...codes].sort().join(' ')}`);
});
