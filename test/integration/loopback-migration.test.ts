/**
 * Migration support through a real session (in-process backend, scripted frontend on a real socket,
 * guest memory and dirty log in memfds): vhost-user.rst "Migration" — SET_LOG_BASE with LOG_SHMFD,
 * VHOST_F_LOG_ALL, every device write of guest memory marked in the shared bitmap.
 */
import test from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, type VhostMessage } from '../../protocol/index.ts';
import { NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { readAddr64, type SplitDriver } from '../../virtqueue/index.ts';
import { MEM_BYTES, frameOf, setupLoopback, until } from '../helpers/loopback.ts';

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.RING_EVENT_IDX);
const PAGE = 4096;
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/** A log memfd for MEM_BYTES of guest memory, placed at `offset` in the fd, mapped by the test too. */
function makeLog(offset: number) {
  const bytes = MEM_BYTES / PAGE / 8;
  const fd = native.memfdCreate('log', false);
  native.ftruncate(fd, offset + bytes);
  const ab = native.mmap(fd, offset, bytes, true);
  return { fd, bits: new Uint8Array(ab), bytes, ab };
}
/** Guest address of the first buffer of a chain the driver posted (descriptor table entry). */
function bufAddr(drv: SplitDriver, head: number): number {
  return readAddr64(drv.mem, drv.descAddr + 16 * head);
}
function pages(bits: Uint8Array): number[] {
  const out: number[] = [];
  bits.forEach((b, i) => {
    for (let j = 0; j < 8; j++) if (b & (1 << j)) out.push(i * 8 + j);
  });
  return out;
}

test('GET_FEATURES offers VHOST_F_LOG_ALL and the protocol features offer LOG_SHMFD', async (t) => {
  const { fe } = await setupLoopback(t, FEATURES);
  t.true((value(await fe.request(R.GET_FEATURES)) & bit(VirtioF.LOG_ALL)) !== 0n);
  t.true((value(await fe.request(R.GET_PROTOCOL_FEATURES)) & bit(ProtoF.LOG_SHMFD)) !== 0n);
});

test('dirty log: SET_LOG_FD is signalled and with LOG_ALL every page the device writes (RX buffers, used rings) is marked; reads are not; LOG_ALL off stops it', async (t) => {
  const { fe, dev, rx, tx, port, session } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.LOG_SHMFD) });
  const lg = makeLog(PAGE);
  t.teardown(() => native.munmap(lg.ab));
  const reply = await fe.request(R.SET_LOG_BASE, { mmapSize: BigInt(lg.bytes), mmapOffset: BigInt(PAGE) }, { fds: [lg.fd], expectReply: true });
  native.close(lg.fd);
  t.is(reply!.id, R.SET_LOG_BASE, 'SET_LOG_BASE is answered (QEMU waits for it)');

  // Logging is not on yet: traffic marks nothing.
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  t.is(dev.deliver(frameOf(100, 1), new NetHdr()), 'ok');
  t.deepEqual(pages(lg.bits), []);

  const logEvent = native.eventfd(0);
  t.teardown(() => native.close(logEvent));
  t.is(value(await fe.request(R.SET_LOG_FD, undefined, { fds: [logEvent], needReply: true })), 0n);
  t.is(value(await fe.request(R.SET_FEATURES, FEATURES | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.LOG_ALL), { needReply: true })), 0n);
  t.true(session.migration.logging);
  t.is(native.eventfdRead(logEvent), null, 'log eventfd quiet before any logged write');

  // Guest RX: the buffer's page and the RX used ring are written.
  const rxHead = rx.drv.addChain([{ byteLen: 2048, write: true }]);
  const rxBufAddr = bufAddr(rx.drv, rxHead);
  t.is(dev.deliver(frameOf(1500, 2), new NetHdr()), 'ok');
  const afterRx = pages(lg.bits);
  t.true(afterRx.includes(Math.floor(rxBufAddr / PAGE)), 'RX buffer page marked');
  t.true(afterRx.includes(Math.floor(rx.drv.usedAddr / PAGE)), 'RX used ring page marked');
  t.false(afterRx.includes(Math.floor(rx.drv.availAddr / PAGE)), 'avail ring (only read) not marked');
  await until('log eventfd', () => native.eventfdRead(logEvent) !== null);
  t.pass('SET_LOG_FD eventfd signalled after logged writes');

  // Guest TX: the backend only reads the buffer; it writes the TX used ring.
  lg.bits.fill(0);
  const txHead = tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 3) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('TX used', () => tx.drv.usedIdx === 1);
  t.is(port.sent.length, 1);
  const afterTx = pages(lg.bits);
  t.deepEqual(afterTx, [Math.floor(tx.drv.usedAddr / PAGE)], 'only the TX used ring page');
  t.false(afterTx.includes(Math.floor(bufAddr(tx.drv, txHead) / PAGE)));

  // LOG_ALL cleared: writes are no longer logged.
  await fe.request(R.SET_FEATURES, FEATURES | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true });
  lg.bits.fill(0);
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  t.is(dev.deliver(frameOf(100, 4), new NetHdr()), 'ok');
  t.deepEqual(pages(lg.bits), []);
  t.false(session.migration.logging);
});

test('SET_LOG_BASE without LOG_SHMFD or without an fd is refused with a NACK, and the session goes on', async (t) => {
  const { fe } = await setupLoopback(t, FEATURES);
  const r = await fe.request(R.SET_LOG_BASE, { mmapSize: 128n, mmapOffset: 0n }, { needReply: true });
  t.is(value(r), 1n);
  t.is(value(await fe.request(R.GET_QUEUE_NUM)), 1n);
});

test('SET_LOG_BASE with a log larger than its fd, or of size 0, is refused and nothing is mapped (no SIGBUS later)', async (t) => {
  const { fe, session } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.LOG_SHMFD) });
  const fd = native.memfdCreate('log', false);
  native.ftruncate(fd, 64);
  for (const [mmapSize, mmapOffset] of [[4096n, 0n], [64n, 8n], [0n, 0n]] as const) {
    const r = await fe.request(R.SET_LOG_BASE, { mmapSize, mmapOffset }, { fds: [fd], expectReply: true });
    t.is(r!.id, R.SET_LOG_BASE, 'still answered: QEMU blocks on this reply');
    t.is(session.migration.log, null, `size ${mmapSize} at ${mmapOffset} refused`);
  }
  native.close(fd);
  t.is(value(await fe.request(R.GET_QUEUE_NUM)), 1n, 'session goes on');
});
