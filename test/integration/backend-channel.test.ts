/**
 * The back-end channel (SET_BACKEND_REQ_FD, BACKEND_REQ) and in-band notifications
 * (INBAND_NOTIFICATIONS): vhost-user.rst "Back-end communication" and "In-band notifications".
 */
import test from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit } from '../../protocol/index.ts';
import { VIRTQ_DESC_F_NEXT } from '../../virtqueue/index.ts';
import { NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { BackendPeer } from '../helpers/backend-peer.ts';
import { frameOf, setupLoopback, until } from '../helpers/loopback.ts';
import { quiet } from '../helpers/quiet.ts';

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF);
const INBAND = bit(ProtoF.BACKEND_REQ) | bit(ProtoF.INBAND_NOTIFICATIONS);

async function inbandRig(t: import('ava').ExecutionContext) {
  const peer = new BackendPeer();
  t.teardown(() => peer.close());
  const rig = await setupLoopback(t, FEATURES, {
    protocolFeatures: INBAND,
    noFdNotify: true,
    beforeRings: async (fe) => {
      await fe.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
      native.close(peer.remote);
    },
  });
  return { ...rig, peer };
}

test('in-band notifications: VRING_KICK messages drive the TX ring, used buffers are signalled with VRING_CALL (NEED_REPLY, acked)', async (t) => {
  const { fe, tx, port, peer } = await inbandRig(t);
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 1) },
  ]);
  await quiet();
  t.is(port.sent.length, 0, 'no kick, no polling: nothing moves');
  const ack = await fe.request(R.VRING_KICK, { index: 1, num: 0 }, { needReply: true });
  t.is((ack!.payload as { value: bigint }).value, 0n);
  await until('frame sent', () => port.sent.length === 1);
  await until('VRING_CALL for ring 1', () => peer.named('VRING_CALL').some((m) => (m.payload as { index: number }).index === 1));
  const call = peer.named('VRING_CALL')[0]!;
  t.true(call.needReply, 'sent with NEED_REPLY so that it is processed before we go on (spec)');
  t.deepEqual(peer.errors, []);
});

test('in-band calls collapse while one is unacknowledged, and resume after the ack', async (t) => {
  const { dev, rx, peer } = await inbandRig(t);
  peer.answer = () => null; // the frontend does not answer yet
  for (let i = 0; i < 8; i++) rx.drv.addChain([{ byteLen: 2048, write: true }]);
  for (let i = 0; i < 5; i++) {
    t.is(dev.deliver(frameOf(100, i), new NetHdr()), 'ok');
    await new Promise((r) => setTimeout(r, 5));
  }
  await until('first call', () => peer.named('VRING_CALL').length >= 1);
  await quiet();
  t.is(peer.named('VRING_CALL').length, 1, 'one call in flight, the rest collapsed');
  t.is(rx.drv.usedIdx, 5, 'the data path itself never waited');
  peer.answer = () => 0n;
  peer.reply(peer.unanswered.shift()!, 0n);
  await until('the collapsed call follows the ack', () => peer.named('VRING_CALL').length === 2);
  await quiet();
  t.is(peer.named('VRING_CALL').length, 2, 'exactly one more');
});

test('SET_BACKEND_REQ_FD without BACKEND_REQ negotiated is refused and the fd closed', async (t) => {
  const peer = new BackendPeer();
  t.teardown(() => peer.close());
  const { fe, session } = await setupLoopback(t, FEATURES);
  const r = await fe.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
  native.close(peer.remote);
  t.is((r!.payload as { value: bigint }).value, 1n);
  t.is(session.backendChannel, null);
});

test('in-band errors: a broken ring with no err eventfd is reported with VRING_ERR on the backend channel', async (t) => {
  const { fe, tx, session, peer } = await inbandRig(t);
  const a = tx.drv.takeDesc();
  const b = tx.drv.takeDesc();
  const buf = tx.drv.alloc(64);
  tx.drv.writeDesc(a, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: b });
  tx.drv.writeDesc(b, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: a });
  tx.drv.pushHead(a);
  await fe.request(R.VRING_KICK, { index: 1, num: 0 }, { needReply: true });
  await until('VRING_ERR', () => peer.named('VRING_ERR').length === 1);
  t.is((peer.named('VRING_ERR')[0]!.payload as { index: number }).index, 1);
  t.is((session.rings[1]!.broken as { code?: string }).code, 'VQ_LOOP');
});
