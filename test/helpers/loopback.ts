/**
 * In-process loopback set-up shared by the loopback tests: a vhost-user endpoint with a NetDevice on
 * a capture port, and a scripted frontend over a real AF_UNIX socket that maps guest memory from a
 * memfd and drives the rings with virtqueue/split-driver.ts (real eventfds for kick/call/err).
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
import { NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { emptyStats, type Delivery, type FrameSink, type Port } from '../../backend/net/ports/port.ts';
import { ack, connectFrontend } from './frontend-socket.ts';

let dir: string | null = null;
function sockDir(): string {
  if (dir === null) {
    const d = mkdtempSync(join(tmpdir(), 'vut-lb-'));
    process.once('exit', () => rmSync(d, { recursive: true, force: true }));
    dir = d;
  }
  return dir;
}
let seq = 0;

export const MEM_BYTES = 4 << 20;
export const UVA_BASE = 0x7f1200000000;
export const QSIZE = 64;

/** Uplink that records what the device transmits and lets the test inject received frames. */
export class CapturePort implements Port {
  readonly name = 'capture';
  readonly stats = emptyStats();
  readonly sent: Uint8Array[] = [];
  readonly hdrs: NetHdr[] = [];
  device: FrameSink | null = null;
  connect(d: FrameSink): void {
    this.device = d;
  }
  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    this.sent.push(frame.slice(0, byteLen));
    this.hdrs.push(new NetHdr().copyFrom(hdr));
    return 'ok';
  }
  onSpace(cb: () => void): void {
    queueMicrotask(cb);
  }
  close(): void {}
}

export async function until(what: string, f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export interface Ring {
  drv: SplitDriver;
  kick: number;
  call: number;
  err: number;
}

export interface LoopbackOptions {
  txKickNoFd?: boolean;
  /** Protocol features acked on top of REPLY_ACK | MQ. */
  protocolFeatures?: bigint;
  /** Runs after SET_FEATURES, before the memory table and the rings (e.g. SET_BACKEND_REQ_FD). */
  beforeRings?: (fe: ScriptedFrontend) => Promise<void>;
  /** Runs after SET_MEM_TABLE, before the rings are configured (IOTLB updates name its user addresses). */
  afterMemory?: (fe: ScriptedFrontend) => Promise<void>;
  /** Kick, call and err all NOFD (in-band notifications). */
  noFdNotify?: boolean;
  /** Ring addresses as sent in SET_VRING_ADDR (default: the user address UVA_BASE + gpa; IOVAs with a vIOMMU). */
  ringAddr?: (gpa: number) => bigint;
  /** Assert both rings are ready at the end (default true). */
  expectReady?: boolean;
}

export async function setupLoopback(t: ExecutionContext, features: bigint, opts: LoopbackOptions = {}) {
  const path = join(sockDir(), `dp${seq++}.sock`);
  const dev = new NetDevice({ queuePairs: 1, label: path });
  const port = new CapturePort();
  dev.attachPort(port);
  const ep = new VhostUserEndpoint({ path, device: dev, native });
  ep.start();
  const connected = new Promise<void>((r) => ep.once('session', () => r()));
  const sf = connectFrontend(native, { path }, { timeoutMs: 3000 });
  await connected;
  const fe = sf.fe;
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM_BYTES);
  const ab = native.mmap(memfd, 0, MEM_BYTES, true);
  const mem = new FlatMemory(ab, 0);
  const fds: number[] = [memfd];
  t.teardown(() => {
    sf.close();
    ep.close();
    native.munmap(ab);
    for (const fd of fds) native.close(fd);
  });

  await fe.request(R.GET_FEATURES);
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) | (opts.protocolFeatures ?? 0n));
  await fe.request(R.SET_OWNER);
  t.is(ack(await fe.request(R.SET_FEATURES, features | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true })), 0n);
  await opts.beforeRings?.(fe);
  const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM_BYTES), userspaceAddr: BigInt(UVA_BASE), mmapOffset: 0n };
  t.is(ack(await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { needReply: true, fds: [memfd] })), 0n);
  await opts.afterMemory?.(fe);

  const ringAddr = opts.ringAddr ?? ((gpa: number) => BigInt(UVA_BASE + gpa));
  const rings: Ring[] = [];
  for (const index of [0, 1]) {
    const base = index * 0x40000;
    const drv = new SplitDriver(mem, {
      size: QSIZE,
      base,
      heapAddr: 0x100000 + index * 0x100000,
      heapByteLen: 0x100000,
      eventIdx: (features & bit(VirtioF.RING_EVENT_IDX)) !== 0n,
    });
    const [kick, call, err] = [native.eventfd(0), native.eventfd(0), native.eventfd(0)];
    fds.push(kick, call, err);
    const opt = { needReply: true };
    await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, opt);
    await fe.request(R.SET_VRING_BASE, { index, num: 0 }, opt);
    await fe.request(
      R.SET_VRING_ADDR,
      {
        index,
        flags: 0,
        descUserAddr: ringAddr(drv.descAddr),
        usedUserAddr: ringAddr(drv.usedAddr),
        availUserAddr: ringAddr(drv.availAddr),
        logGuestAddr: 0n,
      },
      opt,
    );
    const nofd = opts.noFdNotify === true;
    await fe.request(R.SET_VRING_CALL, { index, noFd: nofd }, { ...opt, fds: nofd ? [] : [call] });
    await fe.request(R.SET_VRING_ERR, { index, noFd: nofd }, { ...opt, fds: nofd ? [] : [err] });
    if ((index === 1 && opts.txKickNoFd) || nofd) await fe.request(R.SET_VRING_KICK, { index, noFd: true }, opt);
    else await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [kick] });
    await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, opt);
    rings.push({ drv, kick, call, err });
  }
  const session = ep.session!;
  if (opts.expectReady !== false) {
    t.truthy(session.rings[0]!.queue, 'RX ring ready');
    t.truthy(session.rings[1]!.queue, 'TX ring ready');
  }
  return { dev, port, rx: rings[0]!, tx: rings[1]!, session, fe, sf, ep, mem, memfd };
}

export function frameOf(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}
