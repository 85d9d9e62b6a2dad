/**
 * Requests that reach the device: GET_CONFIG / SET_CONFIG (CONFIG), NET_SET_MTU (NET_MTU),
 * CONFIG_CHANGE_MSG on the back-end channel, and the device state transfer (SET_DEVICE_STATE_FD /
 * CHECK_DEVICE_STATE, DEVICE_STATE) — QEMU 7.2 uses none of them, so our scripted frontend does.
 */
import test from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, TransferDirection, type VhostMessage } from '../../protocol/index.ts';
import { BackendPeer } from '../helpers/backend-peer.ts';
import { setupLoopback, until } from '../helpers/loopback.ts';

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MTU);
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;
const cfgBody = (offset: number, size: number, flags = 0, payload = new Uint8Array(size)) => ({ offset, size, flags, payload });

test('GET_CONFIG returns the virtio-net config space (mac, status, max_virtqueue_pairs, mtu); out-of-range reads get an empty reply', async (t) => {
  const { fe, dev } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.CONFIG) });
  dev.config.mac = Uint8Array.from([2, 0, 0, 0, 0, 7]);
  const r = await fe.request(R.GET_CONFIG, cfgBody(0, 12));
  const p = r!.payload as { offset: number; size: number; payload: Uint8Array };
  const b = Buffer.from(p.payload);
  t.deepEqual([...b.subarray(0, 6)], [2, 0, 0, 0, 0, 7]);
  t.is(b.readUInt16LE(6), 1, 'status: LINK_UP');
  t.is(b.readUInt16LE(8), 1, 'max_virtqueue_pairs');
  t.is(b.readUInt16LE(10), 1500, 'mtu');
  const bad = await fe.request(R.GET_CONFIG, cfgBody(20, 16));
  t.is(bad!.payload, null, 'zero-length payload: the spec\'s error for GET_CONFIG');
  t.is(value(await fe.request(R.GET_FEATURES)) > 0n, true, 'session goes on');
});

test('SET_CONFIG: a driver may write only mac; a migration restore may write mac, status and mtu; read-only bytes are refused whole', async (t) => {
  const { fe, dev } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.CONFIG) });
  const mac = Uint8Array.from([2, 1, 2, 3, 4, 5]);
  t.is(value(await fe.request(R.SET_CONFIG, cfgBody(0, 6, 0, mac), { needReply: true })), 0n);
  t.deepEqual([...dev.config.mac], [...mac]);
  t.is(value(await fe.request(R.SET_CONFIG, cfgBody(0, 8, 0, new Uint8Array(8)), { needReply: true })), 1n, 'status is read-only for drivers');
  t.deepEqual([...dev.config.mac], [...mac], 'nothing half-written');
  const restore = new Uint8Array(12);
  restore.set([2, 9, 9, 9, 9, 9]);
  new DataView(restore.buffer).setUint16(10, 9000, true);
  t.is(value(await fe.request(R.SET_CONFIG, cfgBody(0, 12, 1, restore), { needReply: true })), 0n);
  t.is(dev.config.mtu, 9000);
  t.is(dev.config.status, 0, 'status restored as given');
  t.is(value(await fe.request(R.SET_CONFIG, cfgBody(12, 4, 1, new Uint8Array(4)), { needReply: true })), 1n, 'speed is read-only even for migration');
});

test('NET_SET_MTU sets the MTU the config space reports; outside 68..65535 it is refused', async (t) => {
  const { fe, dev } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.NET_MTU) | bit(ProtoF.CONFIG) });
  t.is(value(await fe.request(R.NET_SET_MTU, 9000n, { needReply: true })), 0n);
  t.is(dev.config.mtu, 9000);
  const r = await fe.request(R.GET_CONFIG, cfgBody(10, 2));
  t.is(Buffer.from((r!.payload as { payload: Uint8Array }).payload).readUInt16LE(0), 9000);
  t.is(value(await fe.request(R.NET_SET_MTU, 67n, { needReply: true })), 1n);
  t.is(value(await fe.request(R.NET_SET_MTU, 70000n, { needReply: true })), 1n);
  t.is(dev.config.mtu, 9000);
});

test('a config change on the backend side (link down) is announced with CONFIG_CHANGE_MSG on the back-end channel', async (t) => {
  const peer = new BackendPeer();
  t.teardown(() => peer.close());
  const { dev, fe } = await setupLoopback(t, FEATURES, {
    protocolFeatures: bit(ProtoF.CONFIG) | bit(ProtoF.BACKEND_REQ),
    beforeRings: async (f) => {
      await f.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
      native.close(peer.remote);
    },
  });
  dev.config.setLinkUp(false);
  await until('CONFIG_CHANGE_MSG', () => peer.named('CONFIG_CHANGE_MSG').length === 1);
  t.true(peer.named('CONFIG_CHANGE_MSG')[0]!.needReply);
  const r = await fe.request(R.GET_CONFIG, cfgBody(6, 2));
  t.is(Buffer.from((r!.payload as { payload: Uint8Array }).payload).readUInt16LE(0), 0, 'link down in the config space');
  dev.config.setLinkUp(false);
  await new Promise((res) => setTimeout(res, 30));
  t.is(peer.named('CONFIG_CHANGE_MSG').length, 1, 'no change, no message');
});

/** Runs one SET_DEVICE_STATE_FD transfer; returns the bytes saved (SAVE) or what CHECK said (LOAD). */
async function transfer(fe: import('../../protocol/index.ts').ScriptedFrontend, direction: number, data?: Uint8Array) {
  const [rd, wr] = pipe();
  const theirs = direction === TransferDirection.SAVE ? wr : rd;
  const mine = direction === TransferDirection.SAVE ? rd : wr;
  const r = await fe.request(R.SET_DEVICE_STATE_FD, { transferDirection: direction, migrationPhase: 0 }, { fds: [theirs] });
  native.close(theirs);
  t_value = value(r);
  if (direction === TransferDirection.SAVE) {
    const out: number[] = [];
    const buf = new Uint8Array(4096);
    for (let i = 0; i < 200; i++) {
      const n = native.read(mine, buf, 0, buf.length);
      if (n === 0) break;
      if (n !== null) out.push(...buf.subarray(0, n));
      else await new Promise((res) => setTimeout(res, 5));
    }
    native.close(mine);
    return { saved: Uint8Array.from(out), check: await fe.request(R.CHECK_DEVICE_STATE) };
  }
  native.write(mine, data!, 0, data!.length);
  native.close(mine);
  await new Promise((res) => setTimeout(res, 30));
  return { saved: null, check: await fe.request(R.CHECK_DEVICE_STATE) };
}
let t_value = 0n;
/** A non-blocking pipe pair made of a socketpair (read end, write end): close semantics are those of a pipe. */
function pipe(): [number, number] {
  return native.socketpair();
}

test('device state transfer: SAVE from one backend, LOAD into another; CHECK_DEVICE_STATE reports success; a corrupted state is rejected and nothing applied', async (t) => {
  const a = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.DEVICE_STATE) | bit(ProtoF.NET_MTU) });
  await a.fe.request(R.NET_SET_MTU, 4000n, { needReply: true });
  a.dev.config.mac = Uint8Array.from([2, 4, 4, 4, 4, 4]);
  // The spec: rings are stopped before the transfer.
  for (const index of [0, 1]) await a.fe.request(R.GET_VRING_BASE, { index, num: 0 });
  const saved = await transfer(a.fe, TransferDirection.SAVE);
  t.is(t_value, 0x100n, 'success, no fd passed back (we use the frontend\'s)');
  t.true(saved.saved!.length > 0);
  t.is(value(saved.check), 0n);

  const b = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.DEVICE_STATE) });
  for (const index of [0, 1]) await b.fe.request(R.GET_VRING_BASE, { index, num: 0 });
  const loaded = await transfer(b.fe, TransferDirection.LOAD, saved.saved!);
  t.is(value(loaded.check), 0n);
  t.is(b.dev.config.mtu, 4000);
  t.deepEqual([...b.dev.config.mac], [2, 4, 4, 4, 4, 4]);

  const bad = saved.saved!.slice();
  bad[bad.length - 1] = bad[bad.length - 1]! ^ 0xff;
  b.dev.config.mtu = 1500;
  const rejected = await transfer(b.fe, TransferDirection.LOAD, bad);
  t.is(value(rejected.check), 1n, 'CHECK_DEVICE_STATE fails');
  t.is(b.dev.config.mtu, 1500, 'nothing applied');
});

test('SET_DEVICE_STATE_FD while rings run fails (u64 result); CHECK_DEVICE_STATE without a transfer fails', async (t) => {
  const { fe } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.DEVICE_STATE) });
  const [x, y] = native.socketpair();
  t.teardown(() => native.close(y));
  const r = await fe.request(R.SET_DEVICE_STATE_FD, { transferDirection: 0, migrationPhase: 0 }, { fds: [x] });
  native.close(x);
  t.is(value(r), 0x101n, 'failure (bits 0-7 non-zero), no fd passed back');
  t.is(value(await fe.request(R.CHECK_DEVICE_STATE)), 1n, 'no transfer to check');
});
