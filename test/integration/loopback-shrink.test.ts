/**
 * Memory that shrinks after it was mapped (issue 15), end to end: the backend runs as users run it (the CLI
 * in a child process, two endpoints switched together: `net --socket A --port vhost:B`), frontends connect
 * over real sockets with their own memfds, and one of them truncates its guest memory after SET_MEM_TABLE.
 *
 *   - unsealable memfd (created without MFD_ALLOW_SEALING), shrunk, then a TX kick whose frame lies past the
 *     new end: the backend's access faults (SIGBUS); the guard maps zero pages, the backend lives on, ends
 *     that session with a log line, and the other session (B) and a reconnect on A still answer;
 *   - sealable memfd: the backend sealed it on SET_MEM_TABLE, the shrink is refused (EPERM) and traffic goes on;
 *   - the inflight memfd the backend creates (GET_INFLIGHT_FD) comes sealed SHRINK|GROW.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { F_SEAL, native } from '../../native/index.ts';
import type { SysError } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, type VhostMessage } from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { startBackend, type Backend } from '../helpers/backend.ts';
import { connectFrontend, vringAddrAt, type SocketFrontend } from '../helpers/frontend-socket.ts';
import { frameOf, until } from '../helpers/loopback.ts';

const dir = mkdtempSync(join(tmpdir(), 'vut-shrink-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;

const MEM = 4 << 20;
const UVA = 0x7f3300000000;
const QSIZE = 64;
/** The new size of a shrunk guest: the rings (below 1 MiB) survive, the TX frame buffers (3 MiB) do not. */
const KEEP = 1 << 20;
const TX_HEAP = 3 << 20;
const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES);
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/** A frontend with its guest memory in a memfd, RX (0) and TX (1) rings, connected and set up as QEMU does. */
class Guest {
  readonly memfd: number;
  readonly ab: ArrayBuffer;
  readonly rx: SplitDriver;
  readonly tx: SplitDriver;
  readonly kick: number[] = [];
  private readonly fds: number[] = [];
  sf!: SocketFrontend;

  constructor(t: ExecutionContext, allowSealing: boolean) {
    this.memfd = native.memfdCreate(`guest${seq++}`, allowSealing);
    native.ftruncate(this.memfd, MEM);
    this.ab = native.mmap(this.memfd, 0, MEM, true);
    // This process is the frontend that shrinks the file: were it to touch its own mapping past the new
    // end, the guard keeps the test run alive too (it never does).
    native.guardMapping(this.ab);
    const mem = new FlatMemory(this.ab, 0);
    this.rx = new SplitDriver(mem, { size: QSIZE, base: 0, heapAddr: 0x80000, heapByteLen: 0x80000 });
    this.tx = new SplitDriver(mem, { size: QSIZE, base: 0x40000, heapAddr: TX_HEAP, heapByteLen: 0x10000 });
    t.teardown(() => {
      this.sf?.close();
      native.munmap(this.ab);
      for (const fd of [this.memfd, ...this.fds]) native.close(fd);
    });
  }

  async connect(path: string, protocolFeatures = 0n): Promise<SocketFrontend> {
    const sf = connectFrontend(native, { path }, { timeoutMs: 5000 });
    this.sf = sf;
    const fe = sf.fe;
    const o = { needReply: true };
    await fe.request(R.GET_FEATURES);
    await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | protocolFeatures);
    await fe.request(R.SET_OWNER);
    await fe.request(R.SET_FEATURES, FEATURES, o);
    const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
    const reply = await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { ...o, fds: [this.memfd] });
    if (value(reply) !== 0n) throw new Error('SET_MEM_TABLE refused');
    for (const [index, drv] of [this.rx, this.tx].entries()) {
      const kick = native.eventfd(0);
      const call = native.eventfd(0);
      this.fds.push(kick, call);
      this.kick[index] = kick;
      await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, o);
      await fe.request(R.SET_VRING_BASE, { index, num: 0 }, o);
      await fe.request(R.SET_VRING_ADDR, vringAddrAt(index, UVA, drv.descAddr, drv.availAddr, drv.usedAddr), o);
      await fe.request(R.SET_VRING_CALL, { index, noFd: false }, { ...o, fds: [call] });
      await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...o, fds: [kick] });
      await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, o);
    }
    return sf;
  }

  /** One TX chain (net header + a 60-byte frame) in the TX heap, then a kick. */
  send(k: number): void {
    this.tx.addChain([
      { byteLen: 12, write: false, data: new Uint8Array(12) },
      { byteLen: 60, write: false, data: frameOf(60, k) },
    ]);
    native.eventfdWrite(this.kick[1]!, 1n);
  }
}

async function backend(t: ExecutionContext): Promise<{ be: Backend; a: string; b: string }> {
  const a = join(dir, `a${seq}.sock`);
  const b = join(dir, `b${seq++}.sock`);
  const be = await startBackend(['net', '--socket', a, '--port', `vhost:${b}`], {
    waitSockets: [a, b],
    debug: 'vhost:session,vhost:mem,vhost:conn,vhost:inflight',
  });
  t.teardown(() => be.stop());
  return { be, a, b };
}

const alive = (be: Backend) => be.proc.exitCode === null && be.proc.signalCode === null;

test('a frontend shrinks its unsealable guest memory after SET_MEM_TABLE and kicks TX: the backend lives, that session ends with a log line, the others answer', async (t) => {
  const { be, a, b } = await backend(t);
  const gb = new Guest(t, false);
  const sfB = await gb.connect(b);
  for (let i = 0; i < 8; i++) gb.rx.addChain([{ byteLen: 2048, write: true }]);
  native.eventfdWrite(gb.kick[0]!, 1n);

  const ga = new Guest(t, false);
  const sfA = await ga.connect(a);
  t.is(native.getSeals(ga.memfd), F_SEAL.seal, 'the backend could not seal it (born without MFD_ALLOW_SEALING)');
  // Traffic flows before the shrink.
  ga.send(1);
  await until('first frame at B', () => gb.rx.usedIdx === 1, 5000);

  // The chain is written while the memory is whole; then the frame's pages go away.
  ga.tx.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 2) },
  ]);
  native.ftruncate(ga.memfd, KEEP);
  native.eventfdWrite(ga.kick[1]!, 1n);

  await Promise.race([
    sfA.closed,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`session A not closed:\n${be.log.slice(-3000)}`)), 5000)),
  ]);
  await be.waitForLog(/session broken, ending it: guest memory region at gpa 0x0 \(\+0x400000\) lost its memory/, 3000);
  t.true(alive(be), 'the backend process is alive');

  // The other session (B, the port A was switched to) goes on.
  t.not(value(await sfB.fe.request(R.GET_FEATURES)), 0n, 'B still answers');
  t.not(value(await sfB.fe.request(R.GET_PROTOCOL_FEATURES)), 0n);
  // A takes a new frontend.
  const again = connectFrontend(native, { path: a }, { timeoutMs: 5000 });
  t.teardown(() => again.close());
  t.not(value(await again.fe.request(R.GET_FEATURES)), 0n, 'a reconnect on A is served');
  t.true(alive(be));
  t.is(await be.stop(), 0, 'and stops cleanly');
});

test('a sealable guest memory is sealed against shrinking on SET_MEM_TABLE: the frontend cannot shrink it, traffic goes on', async (t) => {
  const { be, a, b } = await backend(t);
  const gb = new Guest(t, false);
  await gb.connect(b);
  for (let i = 0; i < 8; i++) gb.rx.addChain([{ byteLen: 2048, write: true }]);
  native.eventfdWrite(gb.kick[0]!, 1n);
  const ga = new Guest(t, true);
  t.is(native.getSeals(ga.memfd), 0);
  const sfA = await ga.connect(a);
  t.is(native.getSeals(ga.memfd), F_SEAL.shrink, 'F_SEAL_SHRINK only (never GROW, WRITE or SEAL on a frontend file)');
  const e = t.throws(() => native.ftruncate(ga.memfd, KEEP)) as SysError;
  t.is(e.code, 'EPERM');
  t.notThrows(() => native.ftruncate(ga.memfd, MEM + 4096), 'growing is still the frontend\'s business');
  ga.send(1);
  ga.send(2);
  await until('frames at B', () => gb.rx.usedIdx === 2, 5000);
  t.not(value(await sfA.fe.request(R.GET_FEATURES)), 0n);
  t.true(alive(be));
  t.notRegex(be.log, /session broken/);
});

test('GET_INFLIGHT_FD: the inflight memfd the backend creates is sealed SHRINK|GROW: the frontend holding it cannot resize it', async (t) => {
  const { be, a } = await backend(t);
  const ga = new Guest(t, false);
  const sf = await ga.connect(a, bit(ProtoF.INFLIGHT_SHMFD));
  const r = await sf.fe.request(R.GET_INFLIGHT_FD, { mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: QSIZE });
  const fd = r!.fds[0]!;
  t.teardown(() => native.close(fd));
  const seals = native.getSeals(fd);
  t.is(seals & (F_SEAL.shrink | F_SEAL.grow), F_SEAL.shrink | F_SEAL.grow);
  t.is((t.throws(() => native.ftruncate(fd, 0)) as SysError).code, 'EPERM');
  t.is((t.throws(() => native.ftruncate(fd, 1 << 20)) as SysError).code, 'EPERM');
  t.true(alive(be));
});
