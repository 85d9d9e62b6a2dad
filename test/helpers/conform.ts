/**
 * In-process rig for the conformance rules: a vhost-user endpoint serving a NetDevice with the
 * conformance engine on its trace option, and a scripted frontend over a real AF_UNIX socket with
 * memfd guest memory (SplitDriver rings). `wellBehaved()` sets the device up the way a correct
 * frontend does; each rule test deviates at one point (raw frames, `unchecked` encodes, raw ring
 * writes) to show that its rule fires.
 */
import type { ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, type ScriptedFrontend } from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { VhostUserEndpoint } from '../../backend/core/server.ts';
import { NetDevice } from '../../backend/net/device/net-device.ts';
import { ConformEngine, type Outcome } from '../../backend/tools/conform/engine.ts';
import { connectFrontend, type SocketFrontend, vringAddrAt } from './frontend-socket.ts';

let dir: string | null = null;
function sockDir(): string {
  if (dir === null) {
    const d = mkdtempSync(join(tmpdir(), 'vut-conform-'));
    process.once('exit', () => rmSync(d, { recursive: true, force: true }));
    dir = d;
  }
  return dir;
}
let seq = 0;

export const MEM_BYTES = 4 << 20;
export const UVA_BASE = 0x7f1200000000;
export const QSIZE = 64;
export const BASE_FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES);

export interface ConformRig {
  engine: ConformEngine;
  ep: VhostUserEndpoint;
  sf: SocketFrontend;
  fe: ScriptedFrontend;
  mem: FlatMemory;
  memfd: number;
  fds: number[];
  path: string;
  outcome(id: string): Outcome;
  violations(id: string): string[];
}

export async function conformRig(t: ExecutionContext, opts: { backendReplyTimeoutMs?: number; queuePairs?: number } = {}): Promise<ConformRig> {
  const path = join(sockDir(), `c${process.pid}-${seq++}.sock`);
  const dev = new NetDevice({ queuePairs: opts.queuePairs ?? 1, label: path });
  const engine = new ConformEngine({ deviceRings: dev.maxRings, sampleMs: 0, ...(opts.backendReplyTimeoutMs ? { backendReplyTimeoutMs: opts.backendReplyTimeoutMs } : {}) });
  const ep = new VhostUserEndpoint({ path, device: dev, native, trace: engine.trace });
  engine.attach(ep);
  ep.start();
  const connected = new Promise<void>((r) => ep.once('session', () => r()));
  const sf = connectFrontend(native, { path }, { timeoutMs: 3000 });
  await connected;
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM_BYTES);
  const ab = native.mmap(memfd, 0, MEM_BYTES, true);
  const fds: number[] = [memfd];
  t.teardown(() => {
    engine.stop();
    sf.close();
    ep.close();
    native.munmap(ab);
    for (const fd of fds) native.close(fd);
  });
  return {
    engine,
    ep,
    sf,
    fe: sf.fe,
    mem: new FlatMemory(ab, 0),
    memfd,
    fds,
    path,
    outcome: (id) => engine.result(id)!.outcome,
    violations: (id) => engine.result(id)!.violations,
  };
}

export { ack } from './frontend-socket.ts';

/** GET_FEATURES, GET/SET_PROTOCOL_FEATURES (REPLY_ACK | MQ | extra), SET_OWNER, SET_FEATURES. */
export async function negotiate(rig: ConformRig, features: bigint = BASE_FEATURES, protocol = 0n): Promise<void> {
  const { fe } = rig;
  await fe.request(R.GET_FEATURES);
  await fe.request(R.GET_PROTOCOL_FEATURES);
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) | protocol);
  await fe.request(R.SET_OWNER);
  await fe.request(R.SET_FEATURES, features, { needReply: true });
}

export function region(gpa = 0, size = MEM_BYTES, uva = UVA_BASE) {
  return { guestPhysAddr: BigInt(gpa), memorySize: BigInt(size), userspaceAddr: BigInt(uva), mmapOffset: 0n };
}

export async function memTable(rig: ConformRig): Promise<void> {
  await rig.fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region()] }, { needReply: true, fds: [rig.memfd] });
}

export interface RingSetup {
  drv: SplitDriver;
  kick: number;
  call: number;
}

/** NUM, BASE, ADDR, CALL, KICK, ENABLE for one split ring (SplitDriver layout at index * 0x40000). */
export async function splitRing(rig: ConformRig, index: number, o: { enable?: boolean; eventIdx?: boolean; size?: number } = {}): Promise<RingSetup> {
  const { fe } = rig;
  const size = o.size ?? QSIZE;
  const drv = new SplitDriver(rig.mem, {
    size,
    base: index * 0x40000,
    heapAddr: 0x100000 + index * 0x100000,
    heapByteLen: 0x100000,
    eventIdx: o.eventIdx ?? false,
  });
  const [kick, call] = [native.eventfd(0), native.eventfd(0)];
  rig.fds.push(kick, call);
  const opt = { needReply: true };
  await fe.request(R.SET_VRING_NUM, { index, num: size }, opt);
  await fe.request(R.SET_VRING_BASE, { index, num: 0 }, opt);
  await fe.request(
    R.SET_VRING_ADDR,
    vringAddrAt(index, UVA_BASE, drv.descAddr, drv.availAddr, drv.usedAddr),
    opt,
  );
  await fe.request(R.SET_VRING_CALL, { index, noFd: false }, { ...opt, fds: [call] });
  await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [kick] });
  if (o.enable !== false) await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, opt);
  return { drv, kick, call };
}

/** What a correct frontend does: negotiate, memory table, both rings of one pair. */
export async function wellBehaved(rig: ConformRig, features: bigint = BASE_FEATURES, protocol = 0n): Promise<{ rx: RingSetup; tx: RingSetup }> {
  await negotiate(rig, features, protocol);
  await memTable(rig);
  const rx = await splitRing(rig, 0, { eventIdx: (features & bit(VirtioF.RING_EVENT_IDX)) !== 0n });
  const tx = await splitRing(rig, 1, { eventIdx: (features & bit(VirtioF.RING_EVENT_IDX)) !== 0n });
  return { rx, tx };
}

export async function until(what: string, f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
