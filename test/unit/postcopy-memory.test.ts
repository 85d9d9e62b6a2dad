/**
 * backend/core/postcopy-memory.ts with the real ring engine and a stand-in for the native residency calls
 * (`mincore` answers from a set of missing pages, `prefault` records its request and is completed by the test):
 * a page not migrated yet parks the ring exactly like an IOTLB miss (nothing consumed, not broken), is fetched
 * once, resumes the session when it arrives; ring areas on a missing page keep a queue from being built;
 * prefaults are bounded per session; the dirty-log hook goes through to the wrapped memory.
 */
import test from 'ava';
import { PageMissing, PostcopyMemory, PostcopyPages, type PostcopyNative } from '../../backend/core/postcopy-memory.ts';
import {
  Chain,
  createDirectBuffer,
  DIRECT_EMPTY,
  DIRECT_OK,
  FlatMemory,
  SplitDriver,
  SplitQueue,
  VirtqError,
} from '../../virtqueue/index.ts';

const PAGE = 4096;
const MEM = 64 * PAGE;

interface Request {
  offset: number;
  byteLen: number;
  done: () => void;
}

/** The native calls over one ArrayBuffer whose pages in `missing` are not there yet. */
function fakePages(ab: ArrayBuffer) {
  const missing = new Set<number>();
  const requests: Request[] = [];
  let mincoreCalls = 0;
  const sys: PostcopyNative = {
    mincore(target, offset, byteLen) {
      if (target !== ab) throw new Error('mincore on another mapping');
      mincoreCalls++;
      for (let p = Math.floor(offset / PAGE); p * PAGE < offset + byteLen; p++) {
        if (missing.has(p)) return Math.max(p * PAGE, offset);
      }
      return -1;
    },
    prefault(target, offset, byteLen, done) {
      if (target !== ab) throw new Error('prefault on another mapping');
      requests.push({ offset, byteLen, done });
    },
    mmapAddress: () => 0x7f0000000000n,
  };
  return {
    sys,
    missing,
    requests,
    get mincoreCalls() {
      return mincoreCalls;
    },
    /** The frontend placed page `p`: the helper's touch returns, its callback runs. */
    arrive(p: number) {
      missing.delete(p);
      const i = requests.findIndex((r) => Math.floor(r.offset / PAGE) === p);
      if (i >= 0) requests.splice(i, 1)[0]!.done();
    },
  };
}

function rig(maxInFlight = 8) {
  const flat = new FlatMemory(MEM);
  const ab = flat.bytes.buffer as ArrayBuffer;
  const f = fakePages(ab);
  let resumed = 0;
  const pages = new PostcopyPages(f.sys, (v) => v, () => resumed++, 'test', maxInFlight);
  const mem = new PostcopyMemory(flat, pages);
  // The driver writes guest memory directly (it is the guest); the queue sees it through the wrapper.
  const drv = new SplitDriver(flat, { size: 8, base: 0, heapAddr: 16 * PAGE, heapByteLen: 32 * PAGE });
  return { flat, f, pages, mem, drv, resumed: () => resumed };
}

test('a buffer on a missing page parks pop: nothing consumed, not broken, one prefault; the chain pops once the page is there', (t) => {
  const { f, pages, mem, drv, resumed } = rig();
  const q = new SplitQueue(drv.queueConfig(), mem);
  drv.addChain([{ byteLen: 64, write: false, addr: 20 * PAGE + 100 }]);
  f.missing.add(20);
  const chain = new Chain();
  t.false(q.pop(chain));
  t.is(q.broken, null);
  t.is(q.lastAvailIdx, 0, 'nothing consumed');
  t.is(q.pageMisses, 1);
  t.is(q.iotlbMisses, 0);
  t.deepEqual(f.requests.map((r) => [r.offset, r.byteLen]), [[20 * PAGE, 164]], 'from the missing page to the end of the buffer');
  t.false(q.pop(chain), 'still parked');
  t.is(f.requests.length, 1, 'the page is fetched once');
  t.is(pages.inFlight, 1);

  f.arrive(20);
  t.is(resumed(), 1, 'the session is told');
  t.is(pages.inFlight, 0);
  t.true(q.pop(chain));
  t.deepEqual(chain.segments(), [{ addr: 20 * PAGE + 100, byteLen: 64, write: false }]);
  t.is(q.broken, null);
  // The page is remembered: the next translation of it asks nothing.
  const calls = f.mincoreCalls;
  drv.addChain([{ byteLen: 32, write: false, addr: 20 * PAGE + 500 }]);
  t.true(q.pop(chain));
  t.is(f.mincoreCalls, calls);
});

test('popDirect parks the same way (DIRECT_EMPTY, nothing consumed) and resumes', (t) => {
  const { f, mem, drv } = rig();
  const q = new SplitQueue(drv.queueConfig(), mem);
  drv.addChain([{ byteLen: 2 * PAGE, write: true, addr: 24 * PAGE }]);
  f.missing.add(25);
  const out = createDirectBuffer(true);
  t.is(q.popDirect(out), DIRECT_EMPTY);
  t.is(q.broken, null);
  t.is(q.lastAvailIdx, 0);
  t.deepEqual(f.requests.map((r) => r.offset), [25 * PAGE], 'only the missing page and what follows');
  f.arrive(25);
  t.is(q.popDirect(out), DIRECT_OK);
  t.is(out.byteLen, 2 * PAGE);
});

test('ring areas on a missing page: the queue cannot be built (PageMissing, as an IOTLB miss on a ring address); built once they are there', (t) => {
  const { f, mem, drv } = rig();
  f.missing.add(Math.floor(drv.usedAddr / PAGE));
  const e = t.throws(() => new SplitQueue(drv.queueConfig(), mem));
  t.true(e instanceof PageMissing);
  t.true(e instanceof VirtqError);
  t.is((e as VirtqError).code, 'VQ_PAGE_MISSING');
  t.is((e as PageMissing).addr, drv.usedAddr);
  t.is(f.requests.length, 1);
  f.arrive(Math.floor(drv.usedAddr / PAGE));
  t.notThrows(() => new SplitQueue(drv.queueConfig(), mem));
});

test('prefaults are bounded per session: a page missing beyond the bound is fetched after a completion', (t) => {
  const { f, pages, mem, drv, resumed } = rig(2);
  const q = new SplitQueue(drv.queueConfig(), mem);
  for (const p of [30, 31, 32]) {
    f.missing.add(p);
    drv.addChain([{ byteLen: 16, write: false, addr: p * PAGE }]);
  }
  const chain = new Chain();
  // Each pop parks on the head chain; the ring is not walked past it. Ask for the pages directly.
  const span = { bytes: new Uint8Array(0), offset: 0, byteLen: 0 };
  for (const p of [30, 31, 32]) t.throws(() => mem.translate(p * PAGE, 16, false, span), { instanceOf: PageMissing });
  t.is(f.requests.length, 2);
  t.is(pages.inFlight, 2);
  t.is(pages.stats.deferred, 1);
  f.arrive(31);
  t.is(resumed(), 1);
  t.throws(() => mem.translate(32 * PAGE, 16, false, span), { instanceOf: PageMissing });
  t.deepEqual(f.requests.map((r) => r.offset / PAGE).sort(), [30, 32], 'page 32 fetched once there was room');
  f.arrive(30);
  f.arrive(32);
  for (let i = 0; i < 3; i++) t.true(q.pop(chain));
  t.is(q.broken, null);
});

test('closed: a prefault completing afterwards tells nobody; the dirty-log hook is the wrapped memory\'s', (t) => {
  const { flat, f, pages, mem, resumed } = rig();
  const span = { bytes: new Uint8Array(0), offset: 0, byteLen: 0 };
  f.missing.add(40);
  t.throws(() => mem.translate(40 * PAGE, 8, true, span), { instanceOf: PageMissing });
  pages.close();
  f.arrive(40);
  t.is(resumed(), 0);
  t.is(pages.inFlight, 0);

  const hook = (_gpa: number, _n: number) => {};
  mem.onWrite = hook;
  t.is(flat.onWrite, hook);
  t.is(mem.onWrite, hook);
  mem.onWrite = undefined;
  t.is(flat.onWrite, undefined);
  t.true(mem.translate(40 * PAGE, 8, true, span));
  t.is(span.offset, 40 * PAGE);
});
