/**
 * Postcopy (vhost-user.rst "Postcopy migration", PAGEFAULT) against the real backend process: the test
 * plays QEMU's destination. It takes the userfaultfd from POSTCOPY_ADVISE, reads the faults our backend
 * takes on guest pages that have "not arrived yet", places the page in guest memory (the memfd) and wakes
 * the backend at the address it reported in the SET_MEM_TABLE reply — what QEMU's fault thread does.
 * The backend must block on the missing page, then go on with the right data.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
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
  type VhostMessage,
} from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { startBackend } from '../helpers/backend.ts';
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

async function destination(t: import('ava').ExecutionContext, name: string) {
  const sock = join(dir, `${name}.sock`);
  const be = await startBackend(['net', '--socket', sock], { waitSockets: [sock], debug: 'vhost:migration,vhost:session' });
  t.teardown(() => be.stop());
  const sf = connectFrontend(native, { path: sock }, { timeoutMs: 5000 });
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

test('postcopy: ADVISE hands out a userfaultfd, SET_MEM_TABLE answers with our mapping, a missing page blocks the backend until the frontend places it', async (t) => {
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
  const opt = { needReply: true };
  await fe.request(R.SET_VRING_NUM, { index: 1, num: QSIZE }, opt);
  await fe.request(R.SET_VRING_BASE, { index: 1, num: 0 }, opt);
  await fe.request(
    R.SET_VRING_ADDR,
    vringAddrAt(1, UVA, drv.descAddr, drv.availAddr, drv.usedAddr),
    opt,
  );
  await fe.request(R.SET_VRING_CALL, { index: 1, noFd: false }, { ...opt, fds: [call] });
  await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [kick] });
  await fe.request(R.SET_VRING_ENABLE, { index: 1, num: 1 }, opt);
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
  t.is(drv.usedIdx, 0, 'the backend waits for the page');
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

test('postcopy with CONFIGURE_MEM_SLOTS (what QEMU 7.2 sends): each ADD_MEM_REG is answered with our address, one ack registers them all', async (t) => {
  const sock = join(dir, 'c.sock');
  const be = await startBackend(['net', '--socket', sock], { waitSockets: [sock], debug: 'vhost:migration' });
  t.teardown(() => be.stop());
  const sf = connectFrontend(native, { path: sock }, { timeoutMs: 5000 });
  t.teardown(() => sf.close());
  const fe = sf.fe;
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT) | bit(ProtoF.CONFIGURE_MEM_SLOTS));
  await fe.request(R.SET_OWNER);
  const advise = await fe.request(R.POSTCOPY_ADVISE);
  const ufd = advise!.fds[0]!;
  t.teardown(() => native.close(ufd));
  t.is(value(await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true })), 0n);
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM);
  t.teardown(() => native.close(memfd));
  const half = MEM / 2;
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
  t.is(value(await fe.request(R.POSTCOPY_END)), 0n);
});
