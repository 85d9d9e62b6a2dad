/**
 * Postcopy (vhost-user.rst "Postcopy migration", PAGEFAULT) against the real backend process: the test
 * plays QEMU's destination. It takes the userfaultfd from POSTCOPY_ADVISE, reads the faults our backend
 * takes on guest pages that have "not arrived yet", places the page in guest memory (the memfd) and wakes
 * the backend at the address it reported in the SET_MEM_TABLE reply — what QEMU's fault thread does.
 * The backend must block on the missing page, then go on with the right data.
 */
import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../native/index.ts';
import {
  FrontendReq as R,
  ProtoF,
  VirtioF,
  bit,
  encodeRaw,
  VHOST_USER_VERSION,
  type MemoryTable,
  type ScriptedFrontend,
  type VhostMessage,
} from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { startBackend } from '../helpers/backend.ts';
import { DriverFrontend } from '../helpers/driver-frontend.ts';
import { connectFrontend, vringAddrAt } from '../helpers/frontend-socket.ts';
import { frameOf, until } from '../helpers/loopback.ts';

const dir = mkdtempSync(join(tmpdir(), 'vut-pc-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const MEM = 2 << 20;
const UVA = 0x7f5500000000;
const PAGE = 4096;
const QSIZE = 16;
// NET_F_CSUM: the backend then reads each TX header (without host offloads it would not, D40, and a
// backend with no port would drop the frame without touching the page this test leaves missing).
const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.NET_F_CSUM);
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/**
 * `connect()` retried while it is refused: the socket file exists from bind(), before listen() (startBackend
 * waits for the file only; with several backends starting at once the window shows).
 */
async function retryRefused<T>(connect: () => T, ms = 3000): Promise<T> {
  for (const end = Date.now() + ms; ; await new Promise((r) => setTimeout(r, 20))) {
    try {
      return connect();
    } catch (e) {
      if ((e as { code?: string }).code !== 'ECONNREFUSED' || Date.now() > end) throw e;
    }
  }
}

/** The TX ring (index 1) of `drv` configured, started and enabled, its rings at user address UVA + gpa. */
async function txRing(fe: ScriptedFrontend, drv: SplitDriver, kick: number, call: number): Promise<void> {
  const opt = { needReply: true };
  await fe.request(R.SET_VRING_NUM, { index: 1, num: QSIZE }, opt);
  await fe.request(R.SET_VRING_BASE, { index: 1, num: 0 }, opt);
  await fe.request(R.SET_VRING_ADDR, vringAddrAt(1, UVA, drv.descAddr, drv.availAddr, drv.usedAddr), opt);
  await fe.request(R.SET_VRING_CALL, { index: 1, noFd: false }, { ...opt, fds: [call] });
  await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [kick] });
  await fe.request(R.SET_VRING_ENABLE, { index: 1, num: 1 }, opt);
}

async function destination(t: import('ava').ExecutionContext, name: string) {
  const sock = join(dir, `${name}.sock`);
  const be = await startBackend(['net', '--socket', sock], { waitSockets: [sock], debug: 'vhost:migration,vhost:session' });
  t.teardown(() => be.stop());
  const sf = await retryRefused(() => connectFrontend(native, { path: sock }, { timeoutMs: 5000 }));
  t.teardown(() => sf.close());
  const fe = sf.fe;
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM);
  const ab = native.mmap(memfd, 0, MEM, true);
  t.teardown(() => {
    native.munmap(ab);
    native.close(memfd);
  });
  const proto = value(await fe.request(R.GET_PROTOCOL_FEATURES));
  t.true((proto & bit(ProtoF.PAGEFAULT)) !== 0n, 'PAGEFAULT offered');
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT));
  await fe.request(R.SET_OWNER);
  return { be, fe, memfd, mem: new FlatMemory(ab, 0), ab };
}

test('postcopy: ADVISE hands out a userfaultfd, SET_MEM_TABLE answers with our mapping, a missing page holds its ring (nothing consumed) until the frontend places it', async (t) => {
  const { be, fe, memfd, mem, ab } = await destination(t, 'a');

  const advise = await fe.request(R.POSTCOPY_ADVISE);
  t.is(advise!.fds.length, 1, 'reply carries the userfaultfd');
  const ufd = advise!.fds[0]!;
  t.teardown(() => native.close(ufd));
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 0n);
  t.is(value(await fe.request(R.SET_FEATURES, FEATURES, { needReply: true })), 0n);

  // The TX ring as the source left it: rings and one frame are in guest memory, but the page with
  // the frame's buffer has not been migrated yet.
  const drv = new SplitDriver(mem, { size: QSIZE, base: 0, heapAddr: 0x100000, heapByteLen: 0x10000 });
  const frame = frameOf(200, 5);
  drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: frame.length, write: false, data: frame },
  ]);
  const bufPage = 0x100000;
  const saved = new Uint8Array(ab, bufPage, PAGE).slice();
  t.true(saved.some((b) => b !== 0), 'the frame lives in that page');
  t.is(native.madvise(ab, bufPage, PAGE, 'remove'), PAGE, 'page punched out of guest memory (not arrived)');

  const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
  const reply = await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { fds: [memfd], expectReply: true });
  const back = reply!.payload as MemoryTable;
  t.is(back.nregions, 1);
  t.is(back.regions[0]!.guestPhysAddr, 0n);
  const base = back.regions[0]!.userspaceAddr;
  t.not(base, BigInt(UVA), 'the backend answers with its own mapping address');
  t.is(base % BigInt(PAGE), 0n);

  // Rings must not start before our ack: set them up, check nothing is consumed, then ack.
  const kick = native.eventfd(0);
  const call = native.eventfd(0);
  t.teardown(() => [kick, call].forEach((fd) => native.close(fd)));
  await txRing(fe, drv, kick, call);
  native.eventfdWrite(kick, 1n);
  await new Promise((r) => setTimeout(r, 200));
  t.is(drv.usedIdx, 0, 'no ring runs before the postcopy ack');

  // QEMU's ack: the same request id with a u64 0 body.
  const ack = new Uint8Array(8);
  fe.sendRaw(encodeRaw(R.SET_MEM_TABLE, VHOST_USER_VERSION, ack));
  native.eventfdWrite(kick, 1n);

  // The backend now reads the TX buffer and faults on the missing page.
  let fault: ReturnType<typeof native.uffdRead> = null;
  await until('fault', () => (fault = native.uffdRead(ufd)) !== null, 5000);
  t.is(fault!.event, 'pagefault');
  t.is(fault!.address & ~BigInt(PAGE - 1), base + BigInt(bufPage), 'fault at our mapping of the missing page');
  await new Promise((r) => setTimeout(r, 200));
  t.is(drv.usedIdx, 0, 'the ring waits for the page');
  t.true(be.proc.exitCode === null);

  // Place the page (QEMU: UFFDIO_COPY into its own mapping, then wake the backend's range).
  new Uint8Array(ab, bufPage, PAGE).set(saved);
  native.uffdWake(ufd, base + BigInt(bufPage), 0, PAGE);
  await until('TX completed', () => drv.usedIdx === 1, 5000);
  t.deepEqual(drv.readUsed().map((u) => u.len), [0]);

  // POSTCOPY_END: u64 0, and the ring keeps running without the userfaultfd.
  t.is(value(await fe.request(R.POSTCOPY_END)), 0n);
  drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 6) },
  ]);
  native.eventfdWrite(kick, 1n);
  await until('second TX', () => drv.usedIdx === 2, 5000);
  t.regex(be.log, /registered gpa 0x0 \+0x200000 with the userfaultfd/);
});

test('postcopy: LISTEN before ADVISE, or with memory already mapped, is refused; the session goes on', async (t) => {
  const { fe, memfd } = await destination(t, 'b');
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 1n, 'LISTEN before ADVISE');
  const advise = await fe.request(R.POSTCOPY_ADVISE);
  for (const fd of advise!.fds) native.close(fd);
  const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
  t.is(value(await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { fds: [memfd], needReply: true })), 0n);
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 1n, 'LISTEN with memory mapped');
  t.true(value(await fe.request(R.GET_FEATURES)) > 0n);
});

test('postcopy with CONFIGURE_MEM_SLOTS (what QEMU 7.2 sends): each ADD_MEM_REG is answered with our address, one ack registers them all, and a fault in the second region is served there', async (t) => {
  const sock = join(dir, 'c.sock');
  const be = await startBackend(['net', '--socket', sock], { waitSockets: [sock], debug: 'vhost:migration' });
  t.teardown(() => be.stop());
  const sf = await retryRefused(() => connectFrontend(native, { path: sock }, { timeoutMs: 5000 }));
  t.teardown(() => sf.close());
  const fe = sf.fe;
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT) | bit(ProtoF.CONFIGURE_MEM_SLOTS));
  await fe.request(R.SET_OWNER);
  const advise = await fe.request(R.POSTCOPY_ADVISE);
  const ufd = advise!.fds[0]!;
  t.teardown(() => native.close(ufd));
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 0n);
  t.is(value(await fe.request(R.SET_FEATURES, FEATURES, { needReply: true })), 0n);
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM);
  const ab = native.mmap(memfd, 0, MEM, true);
  t.teardown(() => {
    native.munmap(ab);
    native.close(memfd);
  });
  const half = MEM / 2;
  // The TX ring in the first region, its frame in the second, on a page that has not arrived.
  const drv = new SplitDriver(new FlatMemory(ab, 0), { size: QSIZE, base: 0, heapAddr: half, heapByteLen: 0x10000 });
  const frame = frameOf(200, 9);
  drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: frame.length, write: false, data: frame },
  ]);
  const saved = new Uint8Array(ab, half, PAGE).slice();
  t.true(saved.some((x) => x !== 0), 'the frame lives in that page');
  t.is(native.madvise(ab, half, PAGE, 'remove'), PAGE, 'page punched out (not arrived)');
  const bases: bigint[] = [];
  for (const i of [0, 1]) {
    const region = {
      guestPhysAddr: BigInt(i * half),
      memorySize: BigInt(half),
      userspaceAddr: BigInt(UVA + i * half),
      mmapOffset: BigInt(i * half),
    };
    // QEMU sets NEED_REPLY here too, but in postcopy the body reply replaces the ack.
    const r = await fe.request(R.ADD_MEM_REG, { padding: 0n, region }, { fds: [memfd], needReply: true, expectReply: true });
    const got = (r!.payload as { region: { guestPhysAddr: bigint; userspaceAddr: bigint } }).region;
    t.is(got.guestPhysAddr, BigInt(i * half), 'QEMU matches the reply by guest address');
    bases.push(got.userspaceAddr);
  }
  t.not(bases[0], bases[1]);
  t.notRegex(be.log, /registered gpa/, 'nothing registered before the ack');
  fe.sendRaw(encodeRaw(R.ADD_MEM_REG, VHOST_USER_VERSION, new Uint8Array(8)));
  await be.waitForLog(/registered gpa 0x100000 \+0x100000/, 5000);
  t.regex(be.log, /registered gpa 0x0 \+0x100000/);

  // Registration proven by a fault served: the ring runs, its frame's page is missing, the fault arrives
  // on our userfaultfd at the address we answered for the second region; placed, the frame is consumed.
  const kick = native.eventfd(0);
  const call = native.eventfd(0);
  t.teardown(() => [kick, call].forEach((fd) => native.close(fd)));
  await txRing(fe, drv, kick, call);
  native.eventfdWrite(kick, 1n);
  await faultAt(ufd, bases[1]!);
  t.is(drv.usedIdx, 0, 'the ring waits for the page');
  new Uint8Array(ab, half, PAGE).set(saved);
  native.uffdWake(ufd, bases[1]!, 0, PAGE);
  await until('TX completed once the page is placed', () => drv.usedIdx === 1, 5000);
  t.is(value(await fe.request(R.POSTCOPY_END)), 0n);
});

// ---------------------------------------------------------------------------------------------------
// A page that never arrives blocks only its own session's rings (issue 15): the backend's event loop never
// touches a missing page; a ring that needs one waits (nothing consumed) while a helper thread takes the fault.

/** `net --socket A --port vhost:B`: two sessions in one process; B is a running guest with RX buffers. */
async function pairWithGuest(t: import('ava').ExecutionContext, name: string) {
  const a = join(dir, `${name}-a.sock`);
  const bPath = join(dir, `${name}-b.sock`);
  const be = await startBackend(['net', '--socket', a, '--port', `vhost:${bPath}`], {
    waitSockets: [a, bPath],
    debug: 'vhost:migration,vhost:session',
  });
  t.teardown(() => be.stop());
  const b = await retryRefused(() => DriverFrontend.connect({ path: bPath, queueSize: 64, timeoutMs: 3000 }));
  t.teardown(() => b.close());
  await b.start();
  b.postRx(8);
  return { be, a, b };
}

/** One request's round trip on a session (ms); rejects when the backend does not answer within 3 s. */
async function roundTrip(fe: { request(id: number): Promise<unknown> }): Promise<number> {
  const t0 = performance.now();
  await fe.request(R.GET_FEATURES);
  return performance.now() - t0;
}

/** Faults the frontend reads from the userfaultfd until one is at `address` (page aligned). */
async function faultAt(ufd: number, address: bigint, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    for (let m = native.uffdRead(ufd); m !== null; m = native.uffdRead(ufd)) {
      if (m.event === 'pagefault' && (m.address & ~BigInt(PAGE - 1)) === address) return;
    }
    if (Date.now() > end) throw new Error(`no fault at 0x${address.toString(16)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Kernel functions the backend's threads sleep in (/proc/PID/task/TID/wchan), main thread first. */
function wchans(pid: number): string[] {
  const tids = readdirSync(`/proc/${pid}/task`).map(Number).sort((x, y) => (x === pid ? -1 : y === pid ? 1 : x - y));
  return tids.map((tid) => {
    try {
      return readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8');
    } catch {
      return 'gone';
    }
  });
}
const inUserfault = (pid: number) => wchans(pid).filter((w) => w === 'handle_userfault').length;

/**
 * Session A on socket `sock` goes into postcopy as QEMU's destination does, with its TX ring holding one
 * frame; the pages at `missing` (guest addresses, page aligned) are punched out of guest memory before
 * SET_MEM_TABLE (not arrived yet). The memory ack is sent, the ring kicked. Returns what is needed to place
 * the pages later.
 */
async function postcopyGuest(t: import('ava').ExecutionContext, sock: string, missing: (drv: SplitDriver) => number[]) {
  const sf = await retryRefused(() => connectFrontend(native, { path: sock }, { timeoutMs: 3000 }));
  t.teardown(() => sf.close());
  const fe = sf.fe;
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM);
  const ab = native.mmap(memfd, 0, MEM, true);
  const kick = native.eventfd(0);
  const call = native.eventfd(0);
  t.teardown(() => {
    native.munmap(ab);
    for (const fd of [memfd, kick, call]) native.close(fd);
  });
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT));
  await fe.request(R.SET_OWNER);
  const advise = await fe.request(R.POSTCOPY_ADVISE);
  const ufd = advise!.fds[0]!;
  t.teardown(() => native.close(ufd));
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 0n);
  t.is(value(await fe.request(R.SET_FEATURES, FEATURES, { needReply: true })), 0n);

  const drv = new SplitDriver(new FlatMemory(ab, 0), { size: QSIZE, base: 0, heapAddr: 0x100000, heapByteLen: 0x10000 });
  const frame = frameOf(200, 9);
  drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: frame.length, write: false, data: frame },
  ]);
  const pages = missing(drv);
  const saved = pages.map((at) => new Uint8Array(ab, at, PAGE).slice());
  for (const at of pages) t.is(native.madvise(ab, at, PAGE, 'remove'), PAGE);

  const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
  const reply = await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { fds: [memfd], expectReply: true });
  const base = (reply!.payload as MemoryTable).regions[0]!.userspaceAddr;
  await txRing(fe, drv, kick, call);
  fe.sendRaw(encodeRaw(R.SET_MEM_TABLE, VHOST_USER_VERSION, new Uint8Array(8)));
  native.eventfdWrite(kick, 1n);
  return {
    sf,
    fe,
    ufd,
    drv,
    frame,
    kick,
    /** Where the backend's registered mapping of guest address `gpa` is (faults and wakes name it). */
    at: (gpa: number) => base + BigInt(gpa),
    /** Places page `i` of `missing` as QEMU does with shared memory: fill it, wake the backend's range. */
    place(i: number) {
      new Uint8Array(ab, pages[i]!, PAGE).set(saved[i]!);
      native.uffdWake(ufd, base + BigInt(pages[i]!), 0, PAGE);
    },
  };
}

test('postcopy: a TX buffer page that never arrives parks only that ring; another session answers at once, the event loop never waits; placed, the frame flows', async (t) => {
  const { be, a, b } = await pairWithGuest(t, 'iso');
  const pid = be.proc.pid!;
  const bufPage = 0x100000;
  const g = await postcopyGuest(t, a, () => [bufPage]);

  // The frontend's side sees the fault a page request would answer: taken by a backend helper thread.
  await faultAt(g.ufd, g.at(bufPage));
  // The other session (and A's own control plane) answer promptly while the page is missing.
  for (let i = 0; i < 5; i++) t.true((await roundTrip(b.sf.fe)) < 1000, 'session B answers GET_FEATURES');
  t.true((await roundTrip(g.fe)) < 1000, "session A's control plane answers too");
  // (wchan reads 0 for a thread that is not asleep at that instant: polled.)
  await until('one helper thread waits in the kernel for the page', () => inUserfault(pid) === 1, 2000);
  t.not(wchans(pid)[0], 'handle_userfault', 'never the event loop');
  native.eventfdWrite(g.kick, 1n);
  await new Promise((r) => setTimeout(r, 200));
  t.is(g.drv.usedIdx, 0, 'the chain is not consumed while its page is missing');
  b.poll();
  t.is(b.received.length, 0);
  t.true(be.proc.exitCode === null);
  t.regex(be.log, /is missing: fetching/);

  // QEMU places the page: the parked ring resumes and the frame reaches the other guest, intact.
  g.place(0);
  await until('TX completed', () => g.drv.usedIdx === 1, 5000);
  t.deepEqual((await b.receive(1, 5000))[0], g.frame);
  await until('no thread left in a userfault', () => inUserfault(pid) === 0, 2000);
  t.notRegex(be.log, /broken/);

  // POSTCOPY_END: plain memory again; frames keep flowing.
  t.is(value(await g.fe.request(R.POSTCOPY_END)), 0n);
  g.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 80, write: false, data: frameOf(80, 10) },
  ]);
  native.eventfdWrite(g.kick, 1n);
  await until('second TX', () => g.drv.usedIdx === 2, 5000);
  t.deepEqual((await b.receive(2, 5000))[1], frameOf(80, 10));
});

test('postcopy: ring areas on pages not arrived yet: the ring starts only once all of them are placed, other sessions unaffected', async (t) => {
  const { be, a, b } = await pairWithGuest(t, 'ring');
  const pid = be.proc.pid!;
  // Page 0: descriptor table and available ring; page 1: used ring (split-driver layout).
  const g = await postcopyGuest(t, a, (drv) => {
    t.is(Math.floor(drv.availAddr / PAGE), 0);
    t.is(drv.usedAddr, PAGE);
    return [0, PAGE];
  });
  await faultAt(g.ufd, g.at(0));
  t.true((await roundTrip(b.sf.fe)) < 1000);
  g.place(0);
  await faultAt(g.ufd, g.at(PAGE));
  t.true((await roundTrip(b.sf.fe)) < 1000);
  t.is(g.drv.usedIdx, 0);
  t.not(wchans(pid)[0], 'handle_userfault');
  g.place(1);
  await until('TX completed', () => g.drv.usedIdx === 1, 5000);
  t.deepEqual((await b.receive(1, 5000))[0], g.frame);
  t.regex(be.log, /ring 1 waits for a page/);
  t.notRegex(be.log, /broken/);
});

test('postcopy: a session closed while a helper waits for a page that never comes: nothing crashes, the helper is released, the frontend keeping the userfaultfd open changes nothing', async (t) => {
  const { be, a, b } = await pairWithGuest(t, 'close');
  const pid = be.proc.pid!;
  const g = await postcopyGuest(t, a, () => [0x100000]);
  await faultAt(g.ufd, g.at(0x100000));
  await until('a helper waits in the kernel', () => inUserfault(pid) === 1, 2000);
  // The frontend goes away without placing the page (its userfaultfd copy stays open here).
  g.sf.close();
  await until('helper released', () => inUserfault(pid) === 0, 5000);
  t.true((await roundTrip(b.sf.fe)) < 1000, 'the other session goes on');
  // A new frontend on A is served as usual.
  const sf2 = connectFrontend(native, { path: a }, { timeoutMs: 3000 });
  t.teardown(() => sf2.close());
  t.true((await roundTrip(sf2.fe)) < 1000);
  t.true(be.proc.exitCode === null);
  t.notRegex(be.log, /uncaught|Segmentation|Aborted/i);
});
