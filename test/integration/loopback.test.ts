/**
 * Loopback: our scripted frontend (protocol/frontend.ts) drives a vhost-user-ts endpoint over a real
 * AF_UNIX socket with real fds (memfd guest memory, eventfds). Each test names the spec rule or the
 * spec-notes/decisions.md entry it holds.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, has, type VhostMessage } from '../../protocol/index.ts';
import { VhostUserEndpoint } from '../../backend/core/server.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import type { Session } from '../../backend/core/session.ts';
import { supportedRequests } from '../../backend/core/handlers/index.ts';
import { FRONTEND_MESSAGES, requestLayout, type MessageDef } from '../../protocol/index.ts';
import { sample } from '../helpers/samples.ts';
import { countFds } from '../helpers/proc.ts';
import { connectFrontend, type SocketFrontend } from '../helpers/frontend-socket.ts';

const dir = mkdtempSync(join(tmpdir(), 'vut-loop-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;

interface Rig {
  ep: VhostUserEndpoint;
  dev: NetDevice;
  fe: SocketFrontend;
  session: () => Session;
  path: string;
}

async function rig(t: { teardown(fn: () => void): void }, queuePairs = 2): Promise<Rig> {
  const path = join(dir, `s${seq++}.sock`);
  const dev = new NetDevice({ queuePairs, label: path });
  const ep = new VhostUserEndpoint({ path, device: dev, native });
  ep.start();
  const connected = new Promise<void>((r) => ep.once('session', () => r()));
  const fe = connectFrontend(native, { path }, { timeoutMs: 3000 });
  await connected;
  t.teardown(() => {
    fe.close();
    ep.close();
  });
  return { ep, dev, fe, path, session: () => ep.session! };
}

const u64 = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/** The opening QEMU 7.2 uses (test-rig-facts §4.4), with REPLY_ACK. */
async function negotiate(r: Rig, proto = bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK)): Promise<bigint> {
  const features = u64(await r.fe.fe.request(R.GET_FEATURES));
  const offeredProto = u64(await r.fe.fe.request(R.GET_PROTOCOL_FEATURES));
  await r.fe.fe.request(R.SET_PROTOCOL_FEATURES, proto & offeredProto);
  await r.fe.fe.request(R.SET_OWNER);
  return features;
}

test('GET_FEATURES offers the net features plus PROTOCOL_FEATURES; GET_QUEUE_NUM answers queue pairs (D1)', async (t) => {
  const r = await rig(t, 3);
  const f = await negotiate(r);
  for (const b of [VirtioF.PROTOCOL_FEATURES, VirtioF.VERSION_1, VirtioF.NET_F_MRG_RXBUF, VirtioF.RING_EVENT_IDX]) t.true(has(f, b), `bit ${b}`);
  t.true(has(f, VirtioF.ACCESS_PLATFORM), 'vIOMMU support (D32)');
  t.true(has(f, VirtioF.LOG_ALL), 'dirty logging (D20)');
  t.is(u64(await r.fe.fe.request(R.GET_QUEUE_NUM)), 3n);
});

test('REPLY_ACK: a good request is acked with 0, a bad one NACKed with non-zero, and the session goes on (D5)', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  const ok = await r.fe.fe.request(R.SET_VRING_NUM, { index: 0, num: 256 }, { needReply: true });
  t.is(u64(ok), 0n);
  const bad = await r.fe.fe.request(R.SET_VRING_NUM, { index: 0, num: 100 }, { needReply: true });
  t.not(u64(bad), 0n, 'size 100 is not a power of two (D12)');
  const badIndex = await r.fe.fe.request(R.SET_VRING_NUM, { index: 9, num: 256 }, { needReply: true });
  t.not(u64(badIndex), 0n, 'ring 9 does not exist on a 2-pair device');
  t.is(r.session().rings[0]!.num, 256, 'state kept from the good request');
  t.is(u64(await r.fe.fe.request(R.GET_QUEUE_NUM)), 2n, 'session still serving');
});

test('without REPLY_ACK negotiated, NEED_REPLY is not answered (D6)', async (t) => {
  const r = await rig(t);
  await negotiate(r, bit(ProtoF.MQ));
  await r.fe.fe.request(R.SET_VRING_NUM, { index: 0, num: 64 }, { needReply: true, expectReply: false });
  // The next reply on the wire must be GET_QUEUE_NUM's, not a stray ack.
  t.is(u64(await r.fe.fe.request(R.GET_QUEUE_NUM)), 2n);
  t.is(r.fe.fe.unexpected.length, 0);
});

test('a request that needs an un-negotiated feature gets an empty reply, not a hang (D4)', async (t) => {
  const r = await rig(t);
  await negotiate(r, bit(ProtoF.REPLY_ACK)); // MQ not acked
  // The reply comes at once with a zero-length body; a frontend checks the size and fails the
  // request (QEMU: "Received bad msg size"), exactly as our scripted frontend does here.
  const t0 = Date.now();
  const err = await t.throwsAsync(r.fe.fe.request(R.GET_QUEUE_NUM));
  t.is((err as { code?: string }).code, 'PROTO_BAD_SIZE');
  t.regex(err!.message, /0 bytes/);
  t.true(Date.now() - t0 < 1000, 'no timeout: the backend answered');
  const cfg = await r.fe.fe.request(R.GET_CONFIG, { offset: 0, size: 8, flags: 0, payload: new Uint8Array(8) });
  t.is(cfg!.payload, null, 'GET_CONFIG without the CONFIG feature: zero-length reply as the spec says');
});

test('unknown request id is refused with a NACK and the session continues', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  const raw = new Uint8Array(12);
  const dv = new DataView(raw.buffer);
  dv.setUint32(0, 99, true);
  dv.setUint32(4, 0x1 | 0x8, true);
  const got = new Promise<VhostMessage>((resolve) => {
    // The scripted frontend records replies nobody asked for: that is where this one lands.
    const iv = setInterval(() => {
      if (r.fe.fe.unexpected.length) {
        clearInterval(iv);
        const f = r.fe.fe.unexpected[0]!;
        resolve({ id: f.request, payload: f.payload } as unknown as VhostMessage);
      }
    }, 5);
  });
  r.fe.fe.sendRaw(raw);
  const m = await got;
  t.is(m.id, 99);
  t.not(new DataView((m.payload as unknown as Uint8Array).buffer).getBigUint64(0, true), 0n);
  t.is(u64(await r.fe.fe.request(R.GET_QUEUE_NUM)), 2n);
});

test('SET_MEM_TABLE: a region larger than its fd is refused and the old table stays (D11)', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  const fd = native.memfdCreate('guest', false);
  native.ftruncate(fd, 1 << 20);
  const region = { guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x7f0000000000n, mmapOffset: 0n };
  const ok = await r.fe.fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { needReply: true, fds: [native.dup(fd)] });
  t.is(u64(ok), 0n);
  t.is(r.session().memory.regionCount, 1);
  const tooBig = { ...region, memorySize: 2n << 20n };
  const bad = await r.fe.fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [tooBig] }, { needReply: true, fds: [native.dup(fd)] });
  t.not(u64(bad), 0n);
  t.is(r.session().memory.regionCount, 1, 'old table kept');
  t.is(r.session().memory.uvaToGpa(0x7f0000000000 + 4096), 4096);
  native.close(fd);
});

test('ring states: enable before SET_FEATURES counts (D2); SET_VRING_KICK does not disable (D7); GET_VRING_BASE stops', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  const kick = native.eventfd(0);
  await r.fe.fe.request(R.SET_VRING_ENABLE, { index: 0, num: 1 }, { needReply: true });
  const ring = r.session().rings[0]!;
  t.true(ring.enabled);
  t.false(ring.started);
  await r.fe.fe.request(R.SET_VRING_KICK, { index: 0, noFd: false }, { needReply: true, fds: [kick] });
  t.true(ring.started);
  t.true(ring.enabled, 'kick did not disable');
  await r.fe.fe.request(R.SET_VRING_BASE, { index: 1, num: 7 }, { needReply: true });
  const base = await r.fe.fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
  t.deepEqual(base!.payload, { index: 0, num: 0 });
  t.false(ring.started, 'GET_VRING_BASE stops the ring');
  t.true(ring.enabled, '... and leaves it enabled');
  t.is(r.session().rings[1]!.base, 7);
});

test('RESET_OWNER returns every ring to its initial state but keeps the memory table (D3)', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  await r.fe.fe.request(R.SET_VRING_NUM, { index: 1, num: 128 }, { needReply: true });
  await r.fe.fe.request(R.SET_VRING_BASE, { index: 1, num: 7 }, { needReply: true });
  await r.fe.fe.request(R.SET_VRING_ENABLE, { index: 1, num: 1 }, { needReply: true });
  await r.fe.fe.request(R.RESET_OWNER, undefined, { needReply: true });
  const ring = r.session().rings[1]!;
  t.deepEqual([ring.enabled, ring.started, ring.num, ring.base, ring.addr], [false, false, 0, 0, null]);
});

test('a second frontend is refused while one is connected, and accepted after it leaves (D10)', async (t) => {
  const r = await rig(t);
  await negotiate(r);
  const second = connectFrontend(native, { path: r.path }, { timeoutMs: 2000 });
  await second.closed; // the endpoint closed it at once
  t.pass();
  const gone = new Promise<void>((res) => r.ep.once('disconnect', () => res()));
  r.fe.close();
  await gone;
  t.is(r.ep.session, null);
  const next = new Promise<void>((res) => r.ep.once('session', () => res()));
  const third = connectFrontend(native, { path: r.path }, { timeoutMs: 2000 });
  t.teardown(() => third.close());
  await next;
  t.true(has(u64(await third.fe.request(R.GET_FEATURES)), VirtioF.PROTOCOL_FEATURES), 'the new frontend is served');
  t.is(r.ep.sessions, 2);
});

// Serial: ava runs serial tests first and alone, so the fd count below is not disturbed by siblings.
test.serial('every request this backend does not implement gets a clear error reply, closes its fds, and the session goes on', async (t) => {
  const r = await rig(t);
  await negotiate(r, bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK));
  const fdCount = () => countFds('eventfd');
  const before = fdCount();
  const supported = new Set(supportedRequests());
  const unsupported = (Object.values(FRONTEND_MESSAGES) as MessageDef[]).filter((d) => !supported.has(d.id));
  t.true(unsupported.length >= 5, "the non-net requests at least (D29)");
  for (const def of unsupported) {
    const payload = sample(requestLayout(def), def);
    const n = def.fds === 'none' ? 0 : def.fds === 'per-region' ? (payload as { nregions: number }).nregions : 1;
    const fds = Array.from({ length: n }, () => native.eventfd(0));
    const t0 = Date.now();
    let outcome: string;
    try {
      const rep = await r.fe.fe.request(def.id, payload, { needReply: true, fds });
      if (rep && rep.layout === 'u64') {
        t.not(u64(rep), 0n, `${def.name}: NACK`);
        outcome = 'NACK';
      } else {
        // Empty body: null, or zero bytes for opaque layouts (crypto sessions).
        const p = rep!.payload as { bytes?: Uint8Array } | null;
        t.true(p === null || p.bytes?.length === 0, `${def.name}: empty reply body`);
        outcome = 'empty reply';
      }
    } catch (e) {
      // A body reply of zero bytes: the frontend refuses it by size, as QEMU does (D4).
      t.is((e as { code?: string }).code, 'PROTO_BAD_SIZE', `${def.name}: ${(e as Error).message}`);
      outcome = 'empty reply';
    }
    t.true(Date.now() - t0 < 2000, `${def.name} answered promptly (${outcome})`);
    for (const fd of fds) native.close(fd);
  }
  t.is(u64(await r.fe.fe.request(R.GET_QUEUE_NUM)), 2n, 'session still serving');
  t.is(fdCount(), before, 'no fd leaked by refused requests');
});

test('CONFIGURE_MEM_SLOTS: GET_MAX_MEM_SLOTS, ADD_MEM_REG twice, REM_MEM_REG of one; overlap refused (guest physical or user addresses)', async (t) => {
  const r = await rig(t);
  await negotiate(r, bit(ProtoF.REPLY_ACK) | bit(ProtoF.CONFIGURE_MEM_SLOTS));
  t.is(u64(await r.fe.fe.request(R.GET_MAX_MEM_SLOTS)), 509n);
  const fd = native.memfdCreate('guest', false);
  native.ftruncate(fd, 2 << 20);
  t.teardown(() => native.close(fd));
  const reg = (gpa: number, uva: number, off: number) => ({
    padding: 0n,
    region: { guestPhysAddr: BigInt(gpa), memorySize: 1n << 20n, userspaceAddr: BigInt(uva), mmapOffset: BigInt(off) },
  });
  const a = reg(0, 0x7f0000000000, 0);
  const b = reg(0x100000, 0x7f0000100000, 0x100000);
  t.is(u64(await r.fe.fe.request(R.ADD_MEM_REG, a, { needReply: true, fds: [fd] })), 0n);
  t.is(u64(await r.fe.fe.request(R.ADD_MEM_REG, b, { needReply: true, fds: [fd] })), 0n);
  t.is(r.session().memory.regionCount, 2);
  t.not(u64(await r.fe.fe.request(R.ADD_MEM_REG, reg(0x80000, 0x7f0000200000, 0), { needReply: true, fds: [fd] })), 0n, 'overlap');
  // Guest addresses apart, user addresses overlapping (D47): refused too.
  t.not(u64(await r.fe.fe.request(R.ADD_MEM_REG, reg(0x400000, 0x7f0000180000, 0), { needReply: true, fds: [fd] })), 0n, 'user address overlap');
  t.is(r.session().memory.regionCount, 2);
  t.is(u64(await r.fe.fe.request(R.REM_MEM_REG, a, { needReply: true, fds: [fd] })), 0n);
  t.is(r.session().memory.regionCount, 1);
  t.is(r.session().memory.uvaToGpa(0x7f0000100010), 0x100010);
  t.is(r.session().memory.uvaToGpa(0x7f0000000010), null, 'removed region gone');
  t.not(u64(await r.fe.fe.request(R.REM_MEM_REG, a, { needReply: true, fds: [fd] })), 0n, 'removing twice is refused');
});

test.serial('an ADD_MEM_REG identical to a mapped region counts a reference (QEMU sends it once per queue pair, D34); the region goes with its last REM_MEM_REG', async (t) => {
  const r = await rig(t, 2);
  await negotiate(r, bit(ProtoF.REPLY_ACK) | bit(ProtoF.CONFIGURE_MEM_SLOTS));
  const fd = native.memfdCreate('guest', false);
  native.ftruncate(fd, 1 << 20);
  t.teardown(() => native.close(fd));
  const a = { padding: 0n, region: { guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x7f0000000000n, mmapOffset: 0n } };
  const before = countFds('memfd');
  t.is(u64(await r.fe.fe.request(R.ADD_MEM_REG, a, { needReply: true, fds: [fd] })), 0n);
  t.is(u64(await r.fe.fe.request(R.ADD_MEM_REG, a, { needReply: true, fds: [fd] })), 0n, 'the second queue pair adds it again');
  t.is(r.session().memory.regionCount, 1);
  t.is(countFds('memfd'), before + 1, 'the duplicate fd was closed');
  t.is(u64(await r.fe.fe.request(R.REM_MEM_REG, a, { needReply: true })), 0n);
  t.is(r.session().memory.regionCount, 1, 'still referenced by the other queue pair');
  t.is(u64(await r.fe.fe.request(R.REM_MEM_REG, a, { needReply: true })), 0n);
  t.is(r.session().memory.regionCount, 0);
});

test('STATUS and RESET_DEVICE: status byte round trip; reset returns rings and features to their initial state', async (t) => {
  const r = await rig(t);
  await negotiate(r, bit(ProtoF.REPLY_ACK) | bit(ProtoF.STATUS) | bit(ProtoF.RESET_DEVICE));
  t.is(u64(await r.fe.fe.request(R.SET_STATUS, 0x0fn, { needReply: true })), 0n);
  t.is(u64(await r.fe.fe.request(R.GET_STATUS)), 0x0fn);
  t.not(u64(await r.fe.fe.request(R.SET_STATUS, 0x1ffn, { needReply: true })), 0n, 'not a status byte');
  await r.fe.fe.request(R.SET_FEATURES, bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true });
  await r.fe.fe.request(R.SET_VRING_NUM, { index: 1, num: 128 }, { needReply: true });
  await r.fe.fe.request(R.SET_VRING_ENABLE, { index: 1, num: 1 }, { needReply: true });
  t.is(u64(await r.fe.fe.request(R.RESET_DEVICE, undefined, { needReply: true })), 0n);
  const ring = r.session().rings[1]!;
  t.is(ring.num, 0);
  t.false(ring.enabled);
  t.is(r.session().ackedFeatures, 0n);
  t.is(u64(await r.fe.fe.request(R.GET_STATUS)), 0n);
});
