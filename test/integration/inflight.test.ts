/**
 * Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking", INFLIGHT_SHMFD) through the session:
 * GET_INFLIGHT_FD / SET_INFLIGHT_FD, and a real crash: the backend process is SIGKILLed with TX chains
 * pending, a new backend is started, the frontend hands the inflight buffer back, and the chain the dead
 * backend held is resubmitted: every frame reaches the other port exactly once.
 *
 * Where the backend stops is made deterministic with postcopy's userfaultfd: the frame buffer of one chain
 * is "not migrated yet", so the backend parks that ring in front of it (issue 15: a missing page no longer
 * blocks the process inside the chain; the chain is not taken). Since nothing outside the process can stop
 * it inside a chain any more, the journal a backend killed inside that chain would have left (the chain
 * marked in flight, as SplitInflight.onPop marks it) is written into the shared buffer before the restart.
 */
import test, { type ExecutionContext } from 'ava';
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
  type VhostMessage,
} from '../../protocol/index.ts';
import { FlatMemory, SplitDriver, inflightQueueOffset, inflightQueueSize } from '../../virtqueue/index.ts';
import { startBackend } from '../helpers/backend.ts';
import { connectFrontend, type SocketFrontend, vringAddrAt } from '../helpers/frontend-socket.ts';
import { frameOf, setupLoopback, until } from '../helpers/loopback.ts';
import { quiet } from '../helpers/quiet.ts';

const dir = mkdtempSync(join(tmpdir(), 'vut-infl-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const MEM = 4 << 20;
const UVA = 0x7f6600000000;
const PAGE = 4096;
const QSIZE = 64;
const FRAMES_AT = 0x200000;
const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES);
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/** One guest: memory in a memfd, RX (0) and TX (1) rings driven by drivers (virtqueue/split-driver.ts, packed-driver.ts) that outlive backends. */
class Guest {
  readonly memfd = native.memfdCreate('guest', false);
  readonly ab: ArrayBuffer;
  readonly mem: FlatMemory;
  readonly rx: SplitDriver;
  readonly tx: SplitDriver;
  readonly eventfds: number[] = [];
  inflightFd: number | null = null;
  constructor(t: ExecutionContext) {
    native.ftruncate(this.memfd, MEM);
    this.ab = native.mmap(this.memfd, 0, MEM, true);
    this.mem = new FlatMemory(this.ab, 0);
    this.rx = new SplitDriver(this.mem, { size: QSIZE, base: 0, heapAddr: 0x100000, heapByteLen: 0x80000 });
    this.tx = new SplitDriver(this.mem, { size: QSIZE, base: 0x40000, heapAddr: 0x180000, heapByteLen: 0x10000 });
    t.teardown(() => {
      native.munmap(this.ab);
      for (const fd of [this.memfd, ...this.eventfds, ...(this.inflightFd === null ? [] : [this.inflightFd])]) native.close(fd);
    });
  }

  /**
   * Connects and sets everything up the way QEMU does after a (re)connect: ring bases from the used
   * index in guest memory (QEMU's restore when GET_VRING_BASE failed).
   */
  async connect(path: string, opts: { inflight?: boolean; postcopy?: boolean } = {}): Promise<{ sf: SocketFrontend; kick: number[]; ufd: number | null }> {
    // The socket file exists from bind(), before listen(): a refused connect is retried briefly.
    let sf: SocketFrontend | null = null;
    for (const end = Date.now() + 3000; sf === null; await new Promise((r) => setTimeout(r, 20))) {
      try {
        sf = connectFrontend(native, { path }, { timeoutMs: 5000 });
      } catch (e) {
        if ((e as { code?: string }).code !== 'ECONNREFUSED' || Date.now() > end) throw e;
      }
    }
    const fe = sf.fe;
    let proto = bit(ProtoF.REPLY_ACK);
    if (opts.inflight) proto |= bit(ProtoF.INFLIGHT_SHMFD);
    if (opts.postcopy) proto |= bit(ProtoF.PAGEFAULT);
    await fe.request(R.SET_PROTOCOL_FEATURES, proto);
    await fe.request(R.SET_OWNER);
    await fe.request(R.SET_FEATURES, FEATURES, { needReply: true });
    let ufd: number | null = null;
    if (opts.postcopy) {
      const adv = await fe.request(R.POSTCOPY_ADVISE);
      ufd = adv!.fds[0]!;
      this.eventfds.push(ufd);
      await fe.request(R.POSTCOPY_LISTEN, undefined, { needReply: true });
    }
    if (opts.inflight) {
      if (this.inflightFd === null) {
        const r = await fe.request(R.GET_INFLIGHT_FD, { mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: QSIZE });
        this.inflightFd = r!.fds[0]!;
        this.inflightSize = (r!.payload as { mmapSize: bigint }).mmapSize;
      } else {
        const shape = { mmapSize: this.inflightSize, mmapOffset: 0n, numQueues: 2, queueSize: QSIZE };
        const fd = native.dup(this.inflightFd);
        t_is(value(await fe.request(R.SET_INFLIGHT_FD, shape, { fds: [fd], needReply: true })), 0n, 'SET_INFLIGHT_FD');
        native.close(fd);
      }
    }
    const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
    const table = { nregions: 1, padding: 0, regions: [region] };
    if (opts.postcopy) {
      await fe.request(R.SET_MEM_TABLE, table, { fds: [this.memfd], expectReply: true });
      fe.sendRaw(encodeRaw(R.SET_MEM_TABLE, VHOST_USER_VERSION, new Uint8Array(8)));
    } else {
      await fe.request(R.SET_MEM_TABLE, table, { fds: [this.memfd], needReply: true });
    }
    const kick: number[] = [];
    for (const [index, drv] of [this.rx, this.tx].entries()) {
      const k = native.eventfd(0);
      const c = native.eventfd(0);
      this.eventfds.push(k, c);
      kick.push(k);
      const o = { needReply: true };
      await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, o);
      await fe.request(R.SET_VRING_BASE, { index, num: drv.usedIdx }, o);
      await fe.request(
        R.SET_VRING_ADDR,
        vringAddrAt(index, UVA, drv.descAddr, drv.availAddr, drv.usedAddr),
        o,
      );
      await fe.request(R.SET_VRING_CALL, { index, noFd: false }, { ...o, fds: [c] });
      await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...o, fds: [k] });
      await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, o);
    }
    return { sf, kick, ufd };
  }
  inflightSize = 0n;
}
let t_is: (a: unknown, b: unknown, m: string) => void = () => {};

/** Frame k: 60 bytes whose first 4 carry k. */
function seqFrame(k: number): Uint8Array {
  const f = frameOf(60, k);
  new DataView(f.buffer).setUint32(0, k);
  return f;
}

test('GET_INFLIGHT_FD returns a zeroed buffer sized for the queues (DPDK sizes); SET_INFLIGHT_FD with a short buffer is refused', async (t) => {
  const { fe } = await setupLoopback(t, bit(VirtioF.VERSION_1), { protocolFeatures: bit(ProtoF.INFLIGHT_SHMFD) });
  const r = await fe.request(R.GET_INFLIGHT_FD, { mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 256 });
  const p = r!.payload as { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number };
  t.is(r!.fds.length, 1);
  const fd = r!.fds[0]!;
  t.teardown(() => native.close(fd));
  t.deepEqual([p.mmapSize, p.mmapOffset, p.numQueues, p.queueSize], [2n * 4160n, 0n, 2, 256], 'align64(16 + 16 × 256) per split queue');
  t.is(native.fstat(fd).size, 2 * 4160);
  const short = native.memfdCreate('short', false);
  native.ftruncate(short, 4096);
  const bad = await fe.request(R.SET_INFLIGHT_FD, { mmapSize: 4096n, mmapOffset: 0n, numQueues: 2, queueSize: 256 }, { fds: [short], needReply: true });
  t.is(value(bad), 1n, 'mmap_size too small for 2 queues of 256');
  const lying = await fe.request(R.SET_INFLIGHT_FD, { mmapSize: 8320n, mmapOffset: 0n, numQueues: 2, queueSize: 256 }, { fds: [short], needReply: true });
  t.is(value(lying), 1n, 'mmap_size larger than the fd');
  native.close(short);
  t.is(value(await fe.request(R.SET_INFLIGHT_FD, p, { fds: [fd], needReply: true })), 0n, 'our own buffer is accepted back');
});

test('backend SIGKILLed with a TX chain recorded in flight: the restarted backend resubmits it from the inflight buffer; every frame reaches the peer exactly once', async (t) => {
  t_is = (a, b, m) => t.is(a, b, m);
  const sockA = join(dir, 'a.sock');
  const sockB = join(dir, 'b.sock');
  const args = ['net', '--socket', sockA, '--port', `vhost:${sockB}`];
  const dbg = { waitSockets: [sockA, sockB], debug: 'vhost:session,vhost:inflight,vhost:migration' };
  let be = await startBackend(args, dbg);
  t.teardown(() => be.stop());
  const a = new Guest(t);
  const b = new Guest(t);
  for (let i = 0; i < 32; i++) b.rx.addChain([{ byteLen: 2048, write: true }]);

  const conB = await b.connect(sockB);
  const conA = await a.connect(sockA, { inflight: true, postcopy: true });

  // Ten TX chains, each frame in its own page; chain 4's page has "not arrived".
  const N = 10;
  const STUCK = 4;
  const heads: number[] = [];
  for (let k = 0; k < N; k++) {
    heads[k] = a.tx.addChain([
      { byteLen: 12, write: false, data: new Uint8Array(12) },
      { byteLen: 60, write: false, data: seqFrame(k), addr: FRAMES_AT + k * PAGE },
    ]);
  }
  const stuckPage = FRAMES_AT + STUCK * PAGE;
  const saved = new Uint8Array(a.ab, stuckPage, PAGE).slice();
  t.is(native.madvise(a.ab, stuckPage, PAGE, 'remove'), PAGE);
  native.eventfdWrite(conA.kick[1]!, 1n);

  const fault = await (async () => {
    for (let i = 0; i < 500; i++) {
      const f = native.uffdRead(conA.ufd!);
      if (f) return f;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('no fault');
  })();
  t.is(fault.event, 'pagefault');
  await until('frames before the stuck chain delivered', () => b.rx.usedIdx === STUCK);
  await quiet();
  t.is(a.tx.usedIdx, STUCK, 'chains before the stuck one completed (published one by one with inflight tracking)');
  t.is(b.rx.usedIdx, STUCK, 'nothing past the stuck chain was sent');

  // Crash in front of the chain.
  t.is(await be.kill(), 'SIGKILL');
  // The journal the dead backend left in the shared buffer: the parked chain was never taken.
  const journal = native.mmap(a.inflightFd!, 0, Number(a.inflightSize), true);
  const txRegion = new Uint8Array(journal, inflightQueueOffset('split', 1, QSIZE), inflightQueueSize('split', QSIZE));
  const inflightHeads = () => [...Array(QSIZE).keys()].filter((h) => txRegion[16 + 16 * h] === 1);
  t.deepEqual(inflightHeads(), [], 'a chain whose page is missing is not taken: nothing in flight');
  // What a backend killed inside that chain leaves: the chain in flight (counter, then the inflight byte).
  new DataView(txRegion.buffer, txRegion.byteOffset).setBigUint64(16 + 16 * heads[STUCK]! + 8, 1000n, true);
  txRegion[16 + 16 * heads[STUCK]!] = 1;
  t.deepEqual(inflightHeads(), [heads[STUCK]]);
  native.munmap(journal);
  conA.sf.close();
  conB.sf.close();
  new Uint8Array(a.ab, stuckPage, PAGE).set(saved); // the page "arrives"; the new backend is not in postcopy

  rmSync(sockA, { force: true }); // so that waitSockets waits for the new backend's sockets
  rmSync(sockB, { force: true });
  be = await startBackend(args, dbg);
  await b.connect(sockB);
  const again = await a.connect(sockA, { inflight: true });
  await be.waitForLog(/ring 1 resubmits 1 inflight chains/, 5000);
  await until('all frames', () => b.rx.usedIdx === N, 5000);
  native.eventfdWrite(again.kick[1]!, 1n);
  await until('all TX completed', () => a.tx.usedIdx === N, 5000);
  const got = b.rx.readUsed().map((u) => new DataView(u.data!.buffer, u.data!.byteOffset + 12).getUint32(0));
  t.deepEqual(got, [...Array(N).keys()], 'frames 0..9 in order: none lost, none twice');
  t.is(b.rx.usedIdx, N);
});
