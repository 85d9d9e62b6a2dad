/**
 * Every conformance rule (backend/tools/conform/rules.ts) shown to fire for a frontend that breaks it, and
 * not to fire for a well-behaved one. The misbehaving frontend is the scripted frontend with raw
 * frames (`sendRaw`), unchecked encodes, and raw writes to its own rings.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConformRunner } from '../../backend/tools/conform/runner.ts';
import { connectFrontend } from '../helpers/frontend-socket.ts';
import { native } from '../../native/index.ts';
import {
  BackendReq,
  FrontendReq as R,
  IotlbType,
  ProtoF,
  VirtioF,
  bit,
  encode,
  encodeRaw,
  type IotlbMsg,
} from '../../protocol/index.ts';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../virtqueue/index.ts';
import { RULES } from '../../backend/tools/conform/rules.ts';
import { probeConfigChange, probeIotlb } from '../../backend/tools/conform/probes.ts';
import { BackendPeer, PendingRequests } from '../helpers/backend-peer.ts';
import {
  BASE_FEATURES,
  MEM_BYTES,
  QSIZE,
  UVA_BASE,
  ack,
  conformRig,
  memTable,
  negotiate,
  region,
  splitRing,
  until,
  wellBehaved,
  type ConformRig,
} from '../helpers/conform.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Lets the backend read and handle what was sent without waiting for a reply. */
const settle = async (rig: ConformRig) => {
  // A GET_FEATURES round trip: everything sent before it has been handled.
  await rig.fe.request(R.GET_FEATURES);
};

test('well-behaved frontend: no rule fails, the core rules pass', async (t) => {
  const rig = await conformRig(t);
  const { rx, tx } = await wellBehaved(rig, BASE_FEATURES | bit(VirtioF.RING_INDIRECT_DESC));
  // Traffic: RX buffers posted (the device keeps them), a TX chain with an indirect table.
  for (let i = 0; i < 8; i++) rx.drv.addChain([{ byteLen: 1526, write: true }]);
  tx.drv.addChain([{ byteLen: 12, write: false, data: new Uint8Array(12) }, { byteLen: 60, write: false, data: new Uint8Array(60) }], { indirect: true });
  rig.engine.sampleNow();
  rig.engine.sampleNow();
  await rig.fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
  const failed = rig.engine.resultList().filter((r) => r.outcome === 'fail');
  t.deepEqual(failed.map((r) => `${r.rule.id}: ${r.violations.join('; ')}`), []);
  for (const id of ['VU-MSG-003', 'VU-MSG-005', 'VU-MSG-008', 'VU-NEG-001', 'VU-NEG-003', 'VU-NEG-004', 'VU-MEM-001', 'VU-RING-001', 'VU-RING-003', 'VU-RING-005', 'VU-VQ-001', 'VU-VQ-002', 'VU-VQ-003', 'VU-VQ-004', 'VU-VQ-005', 'VU-VQ-006', 'VU-VQ-007']) {
    t.is(rig.outcome(id), 'pass', id);
  }
  t.is(rig.outcome('VU-DIV-004'), 'divergence', 'enable after SET_FEATURES is one of the readings');
  t.deepEqual(Object.keys(rig.engine.result('VU-DIV-004')!.readings), ['after-set-features']);
});

// ------------------------------------------------------------------------------------------ messages

test('VU-MSG-001: a header with version 2 (the connection ends)', async (t) => {
  const rig = await conformRig(t);
  rig.fe.sendRaw(encodeRaw(R.GET_FEATURES, 0x2));
  await rig.sf.closed;
  await until('engine saw the close', () => rig.outcome('VU-MSG-001') === 'fail');
  t.regex(rig.violations('VU-MSG-001')[0]!, /PROTO_BAD_HEADER/);
});

test('VU-MSG-002: an undefined request id', async (t) => {
  const rig = await conformRig(t);
  rig.fe.sendRaw(encodeRaw(99, 0x1));
  await settle(rig);
  t.is(rig.outcome('VU-MSG-002'), 'fail');
});

test('VU-MSG-003: SET_FEATURES with a 4-byte payload', async (t) => {
  const rig = await conformRig(t);
  rig.fe.sendRaw(encodeRaw(R.SET_FEATURES, 0x1, new Uint8Array(4)));
  await settle(rig);
  t.is(rig.outcome('VU-MSG-003'), 'fail');
  t.regex(rig.violations('VU-MSG-003')[0]!, /SET_FEATURES: PROTO_BAD_SIZE/);
});

test('VU-MSG-004: SET_VRING_ENABLE with num 2', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  rig.fe.sendRaw(encode('frontend', R.SET_VRING_ENABLE, { payload: { index: 0, num: 2 }, unchecked: true }).bytes);
  await settle(rig);
  t.is(rig.outcome('VU-MSG-004'), 'fail');
});

test('VU-MSG-005: SET_VRING_CALL without its fd', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  rig.fe.sendRaw(encode('frontend', R.SET_VRING_CALL, { payload: { index: 0, noFd: false }, unchecked: true }).bytes);
  await settle(rig);
  t.is(rig.outcome('VU-MSG-005'), 'fail');
});

test('VU-MSG-006: a request with the reply flag', async (t) => {
  const rig = await conformRig(t);
  const b = new Uint8Array(8);
  rig.fe.sendRaw(encodeRaw(R.SET_FEATURES, 0x5, b));
  await settle(rig);
  t.is(rig.outcome('VU-MSG-006'), 'fail');
});

test('VU-MSG-007: need_reply before REPLY_ACK is negotiated', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.SET_OWNER, undefined, { needReply: true, expectReply: false });
  await settle(rig);
  t.is(rig.outcome('VU-MSG-007'), 'fail');
});

test('VU-MSG-008: GET_QUEUE_NUM without MQ negotiated (data from the table row)', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  await rig.fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK));
  await rig.fe.request(R.GET_QUEUE_NUM).catch(() => undefined);
  t.is(rig.outcome('VU-MSG-008'), 'fail');
  t.regex(rig.violations('VU-MSG-008')[0]!, /GET_QUEUE_NUM without protocol feature 0/);
});

// ------------------------------------------------------------------------------------------ negotiation

test('VU-NEG-001: SET_FEATURES acks a bit that was not offered', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.SET_FEATURES, BASE_FEATURES | bit(VirtioF.NET_F_CTRL_VQ));
  await settle(rig);
  t.is(rig.outcome('VU-NEG-001'), 'fail');
});

test('VU-NEG-002: SET_PROTOCOL_FEATURES enables XEN_MMAP (not offered)', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  await rig.fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.XEN_MMAP));
  await settle(rig);
  t.is(rig.outcome('VU-NEG-002'), 'fail');
});

test('VU-NEG-003: GET_PROTOCOL_FEATURES before GET_FEATURES', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  t.is(rig.outcome('VU-NEG-003'), 'fail');
});

test('VU-NEG-004: GUEST_TSO4 without GUEST_CSUM', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.SET_FEATURES, BASE_FEATURES | bit(VirtioF.NET_F_GUEST_TSO4));
  await settle(rig);
  t.is(rig.outcome('VU-NEG-004'), 'fail');
  t.regex(rig.violations('VU-NEG-004')[0]!, /GUEST_TSO4 Requires VIRTIO_NET_F_GUEST_CSUM/);
});

test('VU-NEG-005: INBAND_NOTIFICATIONS without BACKEND_REQ', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  await rig.fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.INBAND_NOTIFICATIONS));
  await settle(rig);
  t.is(rig.outcome('VU-NEG-005'), 'fail');
});

test('VU-NEG-006: SET_MEM_TABLE before SET_OWNER', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  await rig.fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK));
  await memTable(rig);
  t.is(rig.outcome('VU-NEG-006'), 'fail');
  await rig.fe.request(R.SET_OWNER, undefined, { needReply: true });
  t.is(rig.outcome('VU-NEG-006'), 'fail', 'a late SET_OWNER does not undo it');
});

// ------------------------------------------------------------------------------------------ memory

test('VU-MEM-001: two regions overlapping in guest addresses', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  const regions = [region(0, MEM_BYTES / 2), region(MEM_BYTES / 4, MEM_BYTES / 2, UVA_BASE + MEM_BYTES)];
  await rig.fe.request(R.SET_MEM_TABLE, { nregions: 2, padding: 0, regions }, { needReply: true, fds: [rig.memfd, rig.memfd] });
  t.is(rig.outcome('VU-MEM-001'), 'fail');
});

test('VU-MEM-002 / VU-MEM-003 / VU-MEM-004: REM_MEM_REG of an unknown region, REM_MEM_REG with an fd, more regions than GET_MAX_MEM_SLOTS', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig, BASE_FEATURES, bit(ProtoF.CONFIGURE_MEM_SLOTS));
  const max = Number(ack(await rig.fe.request(R.GET_MAX_MEM_SLOTS)));
  const page = 4096;
  const reg = (i: number) => ({ padding: 0n, region: { ...region(i * page, page, UVA_BASE + i * page), mmapOffset: BigInt(i * page) } });
  await rig.fe.request(R.ADD_MEM_REG, reg(0), { needReply: true, fds: [rig.memfd] });
  await rig.fe.request(R.REM_MEM_REG, reg(7), { needReply: true });
  t.is(rig.outcome('VU-MEM-002'), 'fail');
  await rig.fe.request(R.REM_MEM_REG, reg(0), { needReply: true, fds: [rig.memfd] });
  t.is(rig.outcome('VU-MEM-003'), 'fail');
  t.is(rig.outcome('VU-MEM-004'), 'pass');
  for (let i = 0; i <= max; i++) await rig.fe.request(R.ADD_MEM_REG, reg(i), { needReply: true, fds: [rig.memfd] });
  t.is(rig.outcome('VU-MEM-004'), 'fail');
  t.regex(rig.violations('VU-MEM-004')[0]!, new RegExp(`makes ${max + 1} regions, max ${max}`));
});

// ------------------------------------------------------------------------------------------ ring configuration

test('VU-RING-001: a ring started with its used ring outside memory', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await memTable(rig);
  await rig.fe.request(R.SET_VRING_NUM, { index: 0, num: QSIZE }, { needReply: true });
  await rig.fe.request(R.SET_VRING_ADDR, { index: 0, flags: 0, descUserAddr: BigInt(UVA_BASE), availUserAddr: BigInt(UVA_BASE + 0x1000), usedUserAddr: BigInt(UVA_BASE + MEM_BYTES), logGuestAddr: 0n }, { needReply: true });
  await rig.fe.request(R.SET_VRING_KICK, { index: 0, noFd: true }, { needReply: true });
  t.is(rig.outcome('VU-RING-001'), 'fail');
  t.regex(rig.violations('VU-RING-001')[0]!, /used ring/);
});

test('VU-RING-002: a misaligned descriptor table', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  const bad = { index: 0, flags: 0, descUserAddr: BigInt(UVA_BASE + 8), availUserAddr: BigInt(UVA_BASE + 0x1000), usedUserAddr: BigInt(UVA_BASE + 0x2000), logGuestAddr: 0n };
  rig.fe.sendRaw(encode('frontend', R.SET_VRING_ADDR, { payload: bad, unchecked: true }).bytes);
  await settle(rig);
  t.is(rig.outcome('VU-RING-002'), 'fail');
  t.not(rig.outcome('VU-MSG-004'), 'fail', 'the dedicated rule reports it, not the generic one');
});

test('VU-RING-003: split ring of size 100', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await rig.fe.request(R.SET_VRING_NUM, { index: 0, num: 100 }, { needReply: true });
  t.is(rig.outcome('VU-RING-003'), 'fail');
});

test('VU-RING-004: SET_VRING_NUM on a started ring', async (t) => {
  const rig = await conformRig(t);
  await wellBehaved(rig);
  await rig.fe.request(R.SET_VRING_NUM, { index: 0, num: 32 }, { needReply: true });
  t.is(rig.outcome('VU-RING-004'), 'fail');
});

test('VU-RING-005: SET_VRING_KICK before SET_VRING_NUM / SET_VRING_ADDR', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await memTable(rig);
  await rig.fe.request(R.SET_VRING_KICK, { index: 0, noFd: true }, { needReply: true });
  t.is(rig.outcome('VU-RING-005'), 'fail');
});

test('VU-RING-006: a ring index the device does not have', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await rig.fe.request(R.SET_VRING_NUM, { index: 5, num: 64 }, { needReply: true });
  t.is(rig.outcome('VU-RING-006'), 'fail');
});

test('VU-RING-007: split SET_VRING_BASE with reserved bits set', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await rig.fe.request(R.SET_VRING_BASE, { index: 0, num: 0x10000 }, { needReply: true });
  t.is(rig.outcome('VU-RING-007'), 'fail');
});

test('VU-RING-008: a started ring with buffers that is never enabled', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig);
  await memTable(rig);
  const rx = await splitRing(rig, 0, { enable: false });
  rx.drv.addChain([{ byteLen: 1526, write: true }]);
  for (let i = 0; i < 60; i++) rig.engine.sampleNow();
  t.is(rig.outcome('VU-RING-008'), 'fail');
});

// ------------------------------------------------------------------------------------------ ring contents

test('VU-VQ-001: avail.idx runs more than the queue size ahead, and goes back', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  rx.drv.addChain([{ byteLen: 1526, write: true }]);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-001'), 'pass');
  rx.drv.setAvailIdx(0);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-001'), 'fail');
  t.regex(rig.violations('VU-VQ-001')[0]!, /went back/);
  const rig2 = await conformRig(t);
  const r2 = await wellBehaved(rig2);
  r2.rx.drv.setAvailIdx(QSIZE + 5);
  rig2.engine.sampleNow();
  t.regex(rig2.violations('VU-VQ-001')[0]!, /ahead/);
});

test('VU-VQ-002: avail.flags 2 without EVENT_IDX', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  rig.mem.bytes[rx.drv.availAddr] = 2;
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-002'), 'fail');
});

test('VU-VQ-003: an avail entry beyond the descriptor table', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  rx.drv.pushHead(QSIZE + 3);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-003'), 'fail');
});

test('VU-VQ-004: a descriptor loop', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  const a = rx.drv.alloc(64);
  rx.drv.writeDesc(0, { addr: a, len: 64, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 });
  rx.drv.writeDesc(1, { addr: a, len: 64, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 0 });
  rx.drv.pushHead(0);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-004'), 'fail');
});

test('VU-VQ-005: an indirect descriptor without VIRTIO_F_INDIRECT_DESC', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  rx.drv.addChain([{ byteLen: 1526, write: true }], { indirect: true });
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-005'), 'fail');
  t.regex(rig.violations('VU-VQ-005')[0]!, /without VIRTIO_F_INDIRECT_DESC/);
});

test('VU-VQ-006: a readable descriptor after a writable one', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  const a = rx.drv.alloc(128);
  rx.drv.writeDesc(0, { addr: a, len: 64, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 });
  rx.drv.writeDesc(1, { addr: a + 64, len: 64, flags: 0, next: 0 });
  rx.drv.pushHead(0);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-006'), 'fail');
});

test('VU-VQ-007: a buffer outside guest memory', async (t) => {
  const rig = await conformRig(t);
  const { rx } = await wellBehaved(rig);
  rx.drv.writeDesc(0, { addr: MEM_BYTES + 0x1000, len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  rx.drv.pushHead(0);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-007'), 'fail');
});

test('VU-VQ-008 and VU-DIV-001: packed ring with RING_EVENT_FLAGS_DESC without EVENT_IDX; base 0x8000', async (t) => {
  const rig = await conformRig(t);
  await negotiate(rig, BASE_FEATURES | bit(VirtioF.RING_PACKED));
  await memTable(rig);
  const opt = { needReply: true };
  const [desc, drvArea, devArea] = [0x0, 0x2000, 0x3000];
  await rig.fe.request(R.SET_VRING_NUM, { index: 0, num: QSIZE }, opt);
  await rig.fe.request(R.SET_VRING_BASE, { index: 0, num: 0x8000 }, opt);
  await rig.fe.request(R.SET_VRING_ADDR, { index: 0, flags: 0, descUserAddr: BigInt(UVA_BASE + desc), availUserAddr: BigInt(UVA_BASE + drvArea), usedUserAddr: BigInt(UVA_BASE + devArea), logGuestAddr: 0n }, opt);
  await rig.fe.request(R.SET_VRING_KICK, { index: 0, noFd: true }, opt);
  await rig.fe.request(R.SET_VRING_ENABLE, { index: 0, num: 1 }, opt);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-008'), 'pass');
  rig.mem.bytes[drvArea + 2] = 2;
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-VQ-008'), 'fail');
  t.is(rig.outcome('VU-DIV-001'), 'divergence');
  t.deepEqual(rig.engine.result('VU-DIV-001')!.readings, { 'avail-half': 1 });
});

// ------------------------------------------------------------------------------------------ back-end channel and probes

async function withChannel(rig: ConformRig, protocol: bigint, features = BASE_FEATURES) {
  const peer = new BackendPeer();
  await negotiate(rig, features, bit(ProtoF.BACKEND_REQ) | protocol);
  await rig.fe.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
  native.close(peer.remote);
  return peer;
}

test('VU-BCH-001: a non-reply message on the back-end channel', async (t) => {
  const rig = await conformRig(t);
  const peer = await withChannel(rig, 0n);
  t.teardown(() => peer.close());
  const b = encodeRaw(BackendReq.CONFIG_CHANGE_MSG, 0x1);
  native.sendmsg(peer['local' as never] as number, b, 0, b.length, []);
  await until('engine saw it', () => rig.outcome('VU-BCH-001') === 'fail');
  t.pass();
});

test('VU-BCH-002 and VU-PRB-002: CONFIG_CHANGE_MSG with need_reply never answered; answered', async (t) => {
  const rig = await conformRig(t, { backendReplyTimeoutMs: 200 });
  const peer = await withChannel(rig, bit(ProtoF.CONFIG));
  t.teardown(() => peer.close());
  await probeConfigChange(rig.engine);
  t.is(rig.outcome('VU-PRB-002'), 'pass', 'the default BackendPeer answers 0');
  t.is(rig.outcome('VU-BCH-002'), 'pass');
  peer.answer = () => null;
  void rig.engine.currentSession!.backendChannel!.request(BackendReq.CONFIG_CHANGE_MSG, null, { needReply: true }).catch(() => undefined);
  await sleep(300);
  rig.engine.sampleNow();
  t.is(rig.outcome('VU-BCH-002'), 'fail');
});

test('VU-PRB-001: IOTLB miss answered with the UPDATE passes; acked without one fails', async (t) => {
  for (const serve of [true, false]) {
    const rig = await conformRig(t);
    const peer = await withChannel(rig, 0n, BASE_FEATURES | bit(VirtioF.ACCESS_PLATFORM));
    t.teardown(() => peer.close());
    const upd = (iova: number, size: number): IotlbMsg => ({ iova: BigInt(iova), size: BigInt(size), userAddr: BigInt(UVA_BASE + iova), perm: 3, type: IotlbType.UPDATE });
    // UPDATEs sent for misses; awaited below so none is still waiting for its reply when the rig closes.
    const updates = new PendingRequests();
    peer.answer = (msg) => {
      const m = msg.payload as IotlbMsg;
      if (serve && m.type === IotlbType.MISS) updates.add(rig.fe.request(R.IOTLB_MSG, upd(Number(m.iova) & ~0xfff, 0x1000), { needReply: true }));
      return 0n;
    };
    await rig.fe.request(R.IOTLB_MSG, upd(0, 0x100000), { needReply: true });
    await memTable(rig);
    await rig.fe.request(R.SET_VRING_NUM, { index: 0, num: QSIZE }, { needReply: true });
    await rig.fe.request(R.SET_VRING_ADDR, { index: 0, flags: 0, descUserAddr: 0n, availUserAddr: 0x1000n, usedUserAddr: 0x2000n, logGuestAddr: 0n }, { needReply: true });
    await rig.fe.request(R.SET_VRING_KICK, { index: 0, noFd: true }, { needReply: true });
    await probeIotlb(rig.engine);
    t.is(rig.outcome('VU-PRB-001'), serve ? 'pass' : 'fail');
    t.is(rig.outcome('VU-DIV-005'), 'divergence');
    await updates.settled();
  }
});

// ------------------------------------------------------------------------------------------ divergences

test('VU-DIV-002 / VU-DIV-003 / VU-DIV-004 / VU-DIV-005: the readings observed are reported', async (t) => {
  const rig = await conformRig(t);
  await rig.fe.request(R.GET_FEATURES);
  await rig.fe.request(R.GET_PROTOCOL_FEATURES);
  await rig.fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) | bit(ProtoF.LOG_SHMFD));
  await rig.fe.request(R.SET_OWNER);
  t.is(ack(await rig.fe.request(R.GET_QUEUE_NUM)), 1n);
  // QEMU's order: SET_VRING_ENABLE right after SET_PROTOCOL_FEATURES, before SET_FEATURES.
  await rig.fe.request(R.SET_VRING_ENABLE, { index: 1, num: 0 }, { needReply: true });
  await rig.fe.request(R.SET_FEATURES, BASE_FEATURES | bit(VirtioF.ACCESS_PLATFORM), { needReply: true });
  const log = native.memfdCreate('log', false);
  native.ftruncate(log, 4096);
  rig.fds.push(log);
  await rig.fe.request(R.SET_LOG_BASE, { mmapSize: 4096n, mmapOffset: 0n }, { fds: [log], expectReply: true });
  rig.fe.sendRaw(encode('frontend', R.IOTLB_MSG, { payload: { iova: 0n, size: 0x1000n, userAddr: BigInt(UVA_BASE), perm: 3, type: IotlbType.UPDATE } }).bytes);
  await settle(rig);
  const readings = (id: string) => Object.keys(rig.engine.result(id)!.readings);
  t.deepEqual(readings('VU-DIV-002'), ['log-description-with-reply']);
  t.deepEqual(readings('VU-DIV-003'), ['pairs']);
  t.deepEqual(readings('VU-DIV-004'), ['after-set-protocol-features']);
  t.deepEqual(readings('VU-DIV-005'), ['implicit-reply']);
});

test('VU-RCN-001: the reconnect probe passes for a frontend that comes back and sets up again, fails for one that does not', async (t) => {
  for (const comesBack of [true, false]) {
    const path = join(mkdtempSync(join(tmpdir(), 'vut-rcn-')), 'r.sock');
    const runner = new ConformRunner(native, { socket: path, client: false, queuePairs: 1, port: null, probes: ['reconnect'], reconnectAfterMs: 100, reconnectTimeoutMs: 1500, sampleMs: 0 });
    runner.start();
    t.teardown(() => runner.close());
    const setup = async () => {
      const sf = connectFrontend(native, { path }, { timeoutMs: 3000 });
      t.teardown(() => sf.close());
      const memfd = native.memfdCreate('g', false);
      native.ftruncate(memfd, MEM_BYTES);
      t.teardown(() => native.close(memfd));
      const fe = sf.fe;
      await fe.request(R.GET_FEATURES);
      await fe.request(R.GET_PROTOCOL_FEATURES);
      await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK));
      await fe.request(R.SET_OWNER);
      await fe.request(R.SET_FEATURES, BASE_FEATURES);
      await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region()] }, { needReply: true, fds: [memfd] });
      await fe.request(R.SET_VRING_NUM, { index: 0, num: QSIZE }, { needReply: true });
      await fe.request(R.SET_VRING_ADDR, { index: 0, flags: 0, descUserAddr: BigInt(UVA_BASE), availUserAddr: BigInt(UVA_BASE + 0x1000), usedUserAddr: BigInt(UVA_BASE + 0x2000), logGuestAddr: 0n }, { needReply: true });
      await fe.request(R.SET_VRING_KICK, { index: 0, noFd: true }, { needReply: true });
      return sf;
    };
    const first = await setup();
    await first.closed; // the probe drops the connection
    if (comesBack) await until('back', () => existsSync(path)).then(setup);
    await until('judged', () => runner.engine.result('VU-RCN-001')!.outcome !== 'not-applicable', 4000);
    t.is(runner.engine.result('VU-RCN-001')!.outcome, comesBack ? 'pass' : 'fail');
  }
});

test('every rule in the table is shown to fire in a test title of this file', (t) => {
  const src = readFileSync(fileURLToPath(import.meta.url), 'utf8');
  const titles = [...src.matchAll(/^test\('([^']*)'/gm)].map((m) => m[1]!).join(' ');
  const missing = RULES.filter((r) => !titles.includes(r.id)).map((r) => r.id);
  t.deepEqual(missing, []);
  t.true(RULES.length >= 40, `${RULES.length} rules`);
});
