/**
 * Interop the other way round (issue 7 item 3): our own scripted frontend (test/helpers/driver-frontend.ts,
 * a virtio-user-style driver side) against other vhost-user backends. Two frontends, A on S0 and B on S1,
 * and a backend that switches S0 <-> S1:
 *
 *   A (driver-frontend, S0) <--> [DPDK 22.11 net_vhost0 | io fwd | net_vhost1] <--> B (driver-frontend, S1)
 *   A (driver-frontend, S0) <--> [vhost-user-ts net --socket S0 --port vhost:S1]  <--> B (driver-frontend, S1)
 *
 * The same suite runs against both (the second is the symmetric check: our backend served by our
 * frontend, as DPDK virtio-user and QEMU serve it in the other tests): negotiation with REPLY_ACK on
 * every configuring request (all acked 0), memfd guest memory, split and packed rings, N frames A -> B
 * and M frames B -> A with exact bytes and counts, nothing extra, GET_VRING_BASE after the traffic
 * equal to what the backend consumed on each ring (split: chains; packed: descriptor positions), and the
 * rings restarted from those bases carry 10 more frames. testpmd's forwarding lcore and our backend are
 * on cpu 1; about 2 s per DPDK test.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProtoF, VirtioF, has } from '../../protocol/index.ts';
import { startTestpmd, type PortStats } from '../helpers/testpmd.ts';
import { startBackend } from '../helpers/backend.ts';
import { DriverFrontend, testFrame } from '../helpers/driver-frontend.ts';

const HAVE_TESTPMD = existsSync('/usr/bin/dpdk-testpmd');
const dir = mkdtempSync(join(tmpdir(), 'vut-interop-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** A backend process switching S0 <-> S1. */
interface PeerBackend {
  s0: string;
  s1: string;
  /** After both frontends are set up: the backend forwards from now on. */
  ready(): Promise<void>;
  /** After the traffic: per-port counts as the backend saw them (null if it has none to show). */
  counts(): Promise<{ s0Rx: number; s0Tx: number; s1Rx: number; s1Tx: number } | null>;
}

async function dpdkBackend(t: ExecutionContext, name: string): Promise<PeerBackend> {
  const s0 = join(dir, `${name}-0.sock`);
  const s1 = join(dir, `${name}-1.sock`);
  const tp = await startTestpmd({ role: 'vhost', socket: [s0, s1], queues: 1, fwdMode: 'io', fwdCore: 1, mainCore: 0 });
  t.teardown(() => tp.quit().then(() => undefined));
  const port = (stats: PortStats[], n: number) => stats.find((p) => p.port === n)!;
  return {
    s0,
    s1,
    async ready() {
      await tp.waitForLinkUp(10_000, 0);
      await tp.waitForLinkUp(10_000, 1);
      await tp.start();
    },
    async counts() {
      // net_vhost port RX = dequeued from the frontend's TX ring; port TX = enqueued into its RX ring.
      const st = await tp.stop();
      return { s0Rx: port(st, 0).rxPackets, s0Tx: port(st, 0).txPackets, s1Rx: port(st, 1).rxPackets, s1Tx: port(st, 1).txPackets };
    },
  };
}

async function oursBackend(t: ExecutionContext, name: string): Promise<PeerBackend> {
  const s0 = join(dir, `${name}-0.sock`);
  const s1 = join(dir, `${name}-1.sock`);
  const be = await startBackend(['net', '--socket', s0, '--port', `vhost:${s1}`], { core: 1, waitSockets: [s0, s1] });
  t.teardown(() => be.stop().then(() => undefined));
  return { s0, s1, ready: async () => undefined, counts: async () => null };
}

const BACKENDS = [
  { name: 'DPDK 22.11 net_vhost (testpmd io)', start: dpdkBackend, available: HAVE_TESTPMD },
  { name: 'vhost-user-ts net --port vhost:', start: oursBackend, available: true },
];

const AB = 40;
const BA = 25;
/** Frame sizes 60..1514 (no FCS), varied. */
const sizeOf = (k: number) => 60 + ((k * 367) % 1455);
const hex = (f: Uint8Array) => Buffer.from(f).toString('hex');

for (const be of BACKENDS) {
  for (const packed of [false, true]) {
    (be.available ? test.serial : test.serial.skip)(`driver frontend x2 <-> ${be.name}: ${packed ? 'packed' : 'split'} rings, frames both ways, REPLY_ACK, GET_VRING_BASE`, async (t) => {
      t.timeout(60_000);
      const peer = await be.start(t, `${be.start === dpdkBackend ? 'dpdk' : 'vut'}-${packed ? 'packed' : 'split'}`);
      const a = DriverFrontend.connect({ path: peer.s0, packed });
      t.teardown(() => a.close());
      const b = DriverFrontend.connect({ path: peer.s1, packed });
      t.teardown(() => b.close());
      await a.start();
      await b.start();
      for (const d of [a, b]) {
        t.true(has(d.ackedProtocol, ProtoF.REPLY_ACK), 'REPLY_ACK negotiated');
        t.is(has(d.ackedFeatures, VirtioF.RING_PACKED), packed);
        // Every configuring request went with NEED_REPLY and was acked with 0 (req() throws otherwise).
        const names = new Set(d.acks.map(([n]) => n));
        for (const n of ['SET_FEATURES', 'SET_MEM_TABLE', 'SET_VRING_NUM', 'SET_VRING_BASE', 'SET_VRING_ADDR', 'SET_VRING_CALL', 'SET_VRING_KICK', 'SET_VRING_ENABLE']) {
          t.true(names.has(n), `${n} acked`);
        }
        t.true(d.acks.every(([, v]) => v === 0n));
      }
      await peer.ready();
      b.postRx(64);
      a.postRx(64);

      const fa = Array.from({ length: AB }, (_, k) => testFrame(0xa, k, sizeOf(k)));
      a.send(fa);
      const gotB = await b.receive(AB, 10_000);
      await a.txDone(AB, 5000);
      const fb = Array.from({ length: BA }, (_, k) => testFrame(0xb, k, sizeOf(k + 7)));
      b.send(fb);
      const gotA = await a.receive(BA, 10_000);
      await b.txDone(BA, 5000);
      await new Promise((r) => setTimeout(r, 200));
      a.poll();
      b.poll();
      t.deepEqual(gotB.map(hex), fa.map(hex), 'A -> B: every frame, exact bytes, in order, nothing extra');
      t.deepEqual(gotA.map(hex), fb.map(hex), 'B -> A: every frame, exact bytes, in order, nothing extra');
      t.is(a.txCompleted, AB);
      t.is(b.txCompleted, BA);

      const counts = await peer.counts();
      if (counts) t.deepEqual(counts, { s0Rx: AB, s0Tx: BA, s1Rx: BA, s1Tx: AB }, 'the backend counted the same frames');

      // GET_VRING_BASE stops each ring and returns the next avail index the backend would process
      // (vhost-user.rst "A vring descriptor index for split virtqueues": the chains it consumed; "Vring
      // descriptor indices for packed virtqueues": bits 0-14 a ring POSITION, i.e. descriptors, with
      // bit 15 the avail wrap counter, still 1 after fewer than 256 descriptors). send() alternates one-
      // and two-descriptor chains: n chains take n + floor(n / 2) descriptors.
      const want = (chains: number, descs: number) => (packed ? descs | 0x8000 : chains);
      const low = (v: number) => (packed ? v & 0xffff : v);
      const txDescs = (n: number) => n + Math.floor(n / 2);
      const baseA = [0, 0];
      const baseB = [0, 0];
      baseA[1] = await a.getVringBase(1);
      baseB[0] = await b.getVringBase(0);
      baseB[1] = await b.getVringBase(1);
      baseA[0] = await a.getVringBase(0);
      t.is(low(baseA[1]), want(AB, txDescs(AB)), 'A TX ring: chains consumed');
      t.is(low(baseB[0]), want(AB, AB), 'B RX ring: buffers used');
      t.is(low(baseB[1]), want(BA, txDescs(BA)), 'B TX ring: chains consumed');
      t.is(low(baseA[0]), want(BA, BA), 'A RX ring: buffers used');

      // The round trip: the rings start again from the bases the backend returned (QEMU's vhost
      // stop/start); the backend continues there: the next frames arrive once, none of the old ones again.
      // Only packed rings depend on the base (checked: restarting A's TX at 0x8000 replays nothing and
      // stalls both backends); for split rings DPDK (translate_ring_addresses) and vhost-user-ts resync
      // the avail position from used.idx in guest memory, so there it checks the continuation only.
      await a.restart(baseA);
      await b.restart(baseB);
      await peer.ready();
      const fa2 = Array.from({ length: 10 }, (_, k) => testFrame(0xa, 100 + k, sizeOf(100 + k)));
      a.send(fa2);
      await b.receive(AB + 10, 10_000);
      await a.txDone(AB + 10, 5000);
      await new Promise((r) => setTimeout(r, 200));
      b.poll();
      t.deepEqual(b.received.slice(AB).map(hex), fa2.map(hex), 'after the restart: the new frames, once, nothing replayed');
      t.is(b.received.length, AB + 10);
      t.is(low(await a.getVringBase(1)), want(AB + 10, txDescs(AB) + txDescs(10)), 'A TX ring continued from its base');
      t.deepEqual(a.sf.fe.unexpected, [], 'no unsolicited messages');
      t.deepEqual(b.sf.fe.unexpected, [], 'no unsolicited messages');
    });
  }
}
