/**
 * Answers the spec requires of a backend for requests a frontend should not send (issue 15 item 4):
 * each is refused (or answered as the spec says) and nothing of it is executed.
 */
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VHOST_USER_VERSION, VirtioF, bit, encodeRaw, type VhostMessage } from '../../protocol/index.ts';
import { VhostUserEndpoint } from '../../backend/core/server.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import { BackendPeer } from '../helpers/backend-peer.ts';
import { frameOf, setupLoopback, until } from '../helpers/loopback.ts';

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF);
const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;
const opt = { needReply: true };

test('a request carrying the REPLY flag is refused and not executed (SET_STATUS with flags 0x5)', async (t) => {
  const { fe, session } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.STATUS), expectReady: false });
  t.is(value(await fe.request(R.SET_STATUS, 0x3n, opt)), 0n);
  // Version 1 | REPLY: a reply where a request belongs. No answer is owed (NEED_REPLY is void on a reply).
  await fe.request(R.SET_STATUS, 0xffn, { flags: 0x5, expectReply: false });
  t.is(value(await fe.request(R.GET_STATUS)), 0x3n, 'the status did not change');
  t.is(session.status, 0x3);
});

test('SET_DEVICE_STATE_FD with an invalid direction or phase gets the 8-byte failure result, its fd closed', async (t) => {
  const { fe } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.DEVICE_STATE) });
  await fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
  await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
  for (const bad of [
    { transferDirection: 7, migrationPhase: 0 },
    { transferDirection: 0, migrationPhase: 3 },
  ]) {
    const [a, b] = native.socketpair();
    const reply = await fe.request(R.SET_DEVICE_STATE_FD, bad, { fds: [a], unchecked: true });
    native.close(a);
    t.is(reply!.layout, 'u64', 'a u64 result, not an empty body');
    t.not(value(reply) & 0xffn, 0n, 'failure in bits 0-7');
    t.not(value(reply) & 0x100n, 0n, 'no fd comes back');
    // Our copy of the fd was closed: the far end sees EOF.
    await until('EOF on the state channel', () => {
      try {
        return native.read(b, new Uint8Array(8), 0, 8) === 0;
      } catch {
        return true;
      }
    });
    native.close(b);
  }
});

test('SET_PROTOCOL_FEATURES with INBAND_NOTIFICATIONS but without BACKEND_REQ and REPLY_ACK is refused', async (t) => {
  const { fe, session } = await setupLoopback(t, FEATURES);
  const before = session.ackedProtocolFeatures;
  const inbandOnly = bit(ProtoF.INBAND_NOTIFICATIONS) | bit(ProtoF.REPLY_ACK);
  t.not(value(await fe.request(R.SET_PROTOCOL_FEATURES, inbandOnly, opt)), 0n, 'without BACKEND_REQ');
  t.is(session.ackedProtocolFeatures, before, 'nothing taken');
  const full = inbandOnly | bit(ProtoF.BACKEND_REQ);
  t.is(value(await fe.request(R.SET_PROTOCOL_FEATURES, full, opt)), 0n, 'with both it is fine');
  t.is(session.ackedProtocolFeatures, full);
});

test('SET_FEATURES that changes ring features while rings run is refused; LOG_ALL may change', async (t) => {
  const { fe, session, tx, port } = await setupLoopback(t, FEATURES);
  const base = FEATURES | bit(VirtioF.PROTOCOL_FEATURES);
  t.not(value(await fe.request(R.SET_FEATURES, base | bit(VirtioF.RING_EVENT_IDX), opt)), 0n, 'EVENT_IDX under running rings');
  t.not(value(await fe.request(R.SET_FEATURES, base & ~bit(VirtioF.NET_F_MRG_RXBUF), opt)), 0n, 'header size under running rings');
  t.is(session.ackedFeatures, base, 'features unchanged');
  t.is(value(await fe.request(R.SET_FEATURES, base | bit(VirtioF.LOG_ALL), opt)), 0n, 'LOG_ALL toggles (migration)');
  t.is(value(await fe.request(R.SET_FEATURES, base, opt)), 0n);
  // The rings still work.
  tx.drv.addChain([{ byteLen: 12 + 60, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 3)]) }]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame sent', () => port.sent.length === 1);
  // Stopped rings take the change.
  await fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
  await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
  t.is(value(await fe.request(R.SET_FEATURES, base | bit(VirtioF.RING_EVENT_IDX), opt)), 0n, 'taken once every ring is stopped');
});

test('in-band VRING_KICK starts a ring that got no SET_VRING_KICK since it was stopped', async (t) => {
  const peer = new BackendPeer();
  t.teardown(() => peer.close());
  const rig = await setupLoopback(t, FEATURES, {
    protocolFeatures: bit(ProtoF.BACKEND_REQ) | bit(ProtoF.INBAND_NOTIFICATIONS),
    noFdNotify: true,
    beforeRings: async (fe) => {
      await fe.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
      native.close(peer.remote);
    },
  });
  const { fe, session, tx, port } = rig;
  const stopped = (await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 }))!.payload as { num: number };
  t.false(session.rings[1]!.started);
  t.is(value(await fe.request(R.SET_VRING_BASE, { index: 1, num: stopped.num }, opt)), 0n);
  tx.drv.addChain([{ byteLen: 12 + 60, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 4)]) }]);
  t.is(value(await fe.request(R.VRING_KICK, { index: 1, num: 0 }, opt)), 0n);
  t.true(session.rings[1]!.started, 'the in-band kick started the ring');
  await until('frame sent', () => port.sent.length === 1);
});

test('with STATUS negotiated no ring runs before DRIVER_OK, and a status of 0 stops them', async (t) => {
  const { fe, session, tx, port } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.STATUS), expectReady: false });
  t.is(session.rings[1]!.queue, null, 'configured, started and enabled, but no DRIVER_OK');
  tx.drv.addChain([{ byteLen: 12 + 60, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 5)]) }]);
  native.eventfdWrite(tx.kick, 1n);
  await new Promise((r) => setTimeout(r, 50));
  t.is(port.sent.length, 0, 'no buffer consumed before DRIVER_OK (virtio v1.2 2.1.2)');
  t.is(tx.drv.usedIdx, 0, 'no used element');
  t.is(value(await fe.request(R.SET_STATUS, 0x0fn, opt)), 0n, 'ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK');
  t.truthy(session.rings[1]!.queue);
  await until('the kick that came before DRIVER_OK is served', () => port.sent.length === 1);
  t.is(value(await fe.request(R.SET_STATUS, 0n, opt)), 0n);
  t.is(session.rings[1]!.queue, null, 'status 0: rings stop');
  t.is(session.rings[0]!.queue, null);
});

test('SET_VRING_KICK with a new eventfd on a running ring: kicks on the new fd drive TX', async (t) => {
  const { fe, session, tx, port } = await setupLoopback(t, FEATURES);
  const txFrame = (seed: number) => new Uint8Array([...new Uint8Array(12), ...frameOf(60, seed)]);
  const kick2 = native.eventfd(0);
  t.teardown(() => native.close(kick2));
  t.is(value(await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [kick2] })), 0n);
  t.truthy(session.rings[1]!.queue, 'the ring kept running');
  for (let i = 1; i <= 3; i++) {
    tx.drv.addChain([{ byteLen: 72, write: false, data: txFrame(i) }]);
    native.eventfdWrite(kick2, 1n);
    await until(`frame ${i} sent after a kick on the new fd`, () => port.sent.length === i);
  }
  // The old fd is no longer watched: a kick there moves nothing.
  tx.drv.addChain([{ byteLen: 72, write: false, data: txFrame(9) }]);
  native.eventfdWrite(tx.kick, 1n);
  await new Promise((r) => setTimeout(r, 50));
  t.is(port.sent.length, 3);
  native.eventfdWrite(kick2, 1n);
  await until('the last frame, on the new fd', () => port.sent.length === 4);
});

test('a TX header with a gso_type the device does not know or the driver did not negotiate is dropped and counted, never segmented', async (t) => {
  // Host offloads: checksum and TSO6 only (no HOST_TSO4, no HOST_ECN).
  const features = FEATURES | bit(VirtioF.NET_F_CSUM) | bit(VirtioF.NET_F_HOST_TSO6);
  const { dev, tx, port } = await setupLoopback(t, features);
  const withGso = (gsoType: number, seed: number) => {
    const b = new Uint8Array(12 + 1514);
    b[1] = gsoType;
    b[4] = 0xdc; // gso_size 1500
    b[5] = 0x05;
    b.set(frameOf(1514, seed), 12);
    return b;
  };
  const bad = [
    0x05, // VIRTIO_NET_HDR_GSO_UDP_L4: not a type this device offers
    0x03, // GSO_UDP: UFO is never offered
    0x01, // GSO_TCPV4 without HOST_TSO4
    0x84, // TCPV6 | ECN without HOST_ECN
    0x41, // a tunnel-style high bit
  ];
  let seed = 20;
  for (const g of bad) {
    tx.drv.addChain([{ byteLen: 12 + 1514, write: false, data: withGso(g, seed++) }]);
    native.eventfdWrite(tx.kick, 1n);
  }
  await until('all completed', () => tx.drv.readUsed().length === bad.length || dev.stats.txBadGso === bad.length);
  t.is(dev.stats.txBadGso, bad.length);
  t.is(port.sent.length, 0, 'nothing reached the uplink');
  // The ring goes on: a plain frame passes.
  tx.drv.addChain([{ byteLen: 12 + 60, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 99)]) }]);
  native.eventfdWrite(tx.kick, 1n);
  await until('the plain frame sent', () => port.sent.length === 1);
});

// Serial: it counts this process's fds, which concurrent tests would change.
test.serial('fds of the wrong kind are refused where they arrive, and closed: a socket or memfd as kick/call/err, an eventfd as memory, a memfd as the back-end channel', async (t) => {
  const { fe, session, tx, port } = await setupLoopback(t, FEATURES, { protocolFeatures: bit(ProtoF.BACKEND_REQ) });
  const openFds = () => readdirSync('/proc/self/fd').length;
  const before = openFds();
  const cases: [string, () => Promise<VhostMessage | null>][] = [];
  const [sockA, sockB] = native.socketpair();
  const memfd = native.memfdCreate('not-an-eventfd', false);
  native.ftruncate(memfd, 4096);
  const ev = native.eventfd(0);
  for (const index of [0, 1]) {
    cases.push([`socket as kick fd of ring ${index}`, () => fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [sockA] })]);
    cases.push([`memfd as call fd of ring ${index}`, () => fe.request(R.SET_VRING_CALL, { index, noFd: false }, { ...opt, fds: [memfd] })]);
    cases.push([`socket as err fd of ring ${index}`, () => fe.request(R.SET_VRING_ERR, { index, noFd: false }, { ...opt, fds: [sockA] })]);
  }
  cases.push(['memfd as back-end channel', () => fe.request(R.SET_BACKEND_REQ_FD, undefined, { ...opt, fds: [memfd] })]);
  const region = { guestPhysAddr: 0x10000000n, memorySize: 4096n, userspaceAddr: 0x7f9900000000n, mmapOffset: 0n };
  cases.push(['eventfd as a memory region', () => fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { ...opt, fds: [ev] })]);
  for (const [what, run] of cases) t.not(value(await run()), 0n, `${what} refused`);
  native.close(sockA);
  native.close(memfd);
  native.close(ev);
  // Every refused fd was closed by the session: the far end of the socket sees EOF once ours are gone.
  await until('EOF at the socket peer', () => {
    try {
      return native.recvmsg(sockB, new Uint8Array(8), 0, 8, 0)?.byteLen === 0;
    } catch {
      return false;
    }
  });
  native.close(sockB);
  t.is(openFds(), before, 'no fd leaked');
  t.is(session.memory.regionCount, 1, 'the memory table was not replaced');
  t.is(session.backendChannel, null);
  // The rings kept their own eventfds and still work.
  tx.drv.addChain([{ byteLen: 72, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 7)]) }]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame sent', () => port.sent.length === 1);
});

test('SET_MEM_TABLE whose regions overlap in user address space is refused; the old table stays', async (t) => {
  const { fe, session, tx, port } = await setupLoopback(t, FEATURES);
  const fd = native.memfdCreate('overlap', false);
  native.ftruncate(fd, 2 << 20);
  t.teardown(() => native.close(fd));
  const regions = [
    { guestPhysAddr: 0x10000000n, memorySize: 1n << 20n, userspaceAddr: 0x7f5500000000n, mmapOffset: 0n },
    { guestPhysAddr: 0x20000000n, memorySize: 1n << 20n, userspaceAddr: 0x7f5500080000n, mmapOffset: 1n << 20n },
  ];
  t.not(value(await fe.request(R.SET_MEM_TABLE, { nregions: 2, padding: 0, regions }, { ...opt, fds: [fd, fd] })), 0n);
  t.is(session.memory.regionCount, 1, 'the old table stays');
  tx.drv.addChain([{ byteLen: 72, write: false, data: new Uint8Array([...new Uint8Array(12), ...frameOf(60, 8)]) }]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame sent on the old table', () => port.sent.length === 1);
});

test('a frontend that floods requests and reads no reply is closed once 1024 replies wait for it; memory stays bounded', async (t) => {
  const path = join(mkdtempSync(join(tmpdir(), 'vut-flood-')), 'flood.sock');
  const ep = new VhostUserEndpoint({ path, device: new NetDevice({ queuePairs: 1, label: 'flood' }), native });
  ep.start();
  t.teardown(() => ep.close());
  const gone = new Promise<string>((r) => ep.once('disconnect', (reason: string) => r(reason)));
  const fd = native.unixConnect(path);
  t.teardown(() => native.close(fd));
  // GET_FEATURES, 12 bytes each, many per sendmsg; never a recvmsg.
  const one = encodeRaw(R.GET_FEATURES, VHOST_USER_VERSION);
  const batch = new Uint8Array(one.length * 1024);
  for (let i = 0; i < 1024; i++) batch.set(one, i * one.length);
  let reason: string | null = null;
  void gone.then((r) => (reason = r));
  const rssBefore = process.memoryUsage().rss;
  for (let sent = 0; reason === null && sent < 64 << 20; ) {
    let n: number | null = null;
    try {
      n = native.sendmsg(fd, batch, 0, batch.length, []);
    } catch {
      break; // the backend closed its end
    }
    if (n === null) await new Promise((r) => setImmediate(r));
    else sent += n;
  }
  t.regex(await gone, /reads nothing/, 'closed for not reading its replies');
  t.true(process.memoryUsage().rss - rssBefore < 32 << 20, `memory stayed bounded (${(process.memoryUsage().rss - rssBefore) >> 20} MiB more)`);
});
