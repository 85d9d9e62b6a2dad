/**
 * Scripted vhost-user frontend for the VFIO guest tests (run inside the guest, from the 9p host root):
 * connects to vhost-user-ts, sets up one RX and one TX split ring over memfd "guest memory" with the
 * ring engine's driver half (virtqueue/split-driver.ts), transmits --send test frames (vfio-frames.ts, direction 'o'),
 * then waits for --expect frames of direction 'i' on its RX ring and checks each one's length and bytes.
 *
 *   node --import tsx vfio-frontend.ts --socket /tmp/vut.sock --send 50 --expect 50 [--timeout 60]
 *
 * Console markers: VFIO-FE-READY, VFIO-FE-SENT <n>, VFIO-FE-RX <received> bad=<n> [first error],
 * VFIO-FE-ERROR <message>. Exit 0 only when every frame was sent and all expected frames arrived intact.
 */
import { parseArgs } from 'node:util';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, type VhostMessage } from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { connectFrontend, vringAddrAt } from '../../test/helpers/frontend-socket.ts';
import { checkFrame, makeFrame } from './vfio-frames.ts';

const { values } = parseArgs({
  options: {
    socket: { type: 'string' },
    send: { type: 'string', default: '50' },
    expect: { type: 'string', default: '50' },
    timeout: { type: 'string', default: '60' },
  },
});
const SEND = Number(values.send);
const EXPECT = Number(values.expect);
const TIMEOUT_MS = Number(values.timeout) * 1000;
const QSIZE = 256;
const MEM_BYTES = 8 << 20;
const UVA_BASE = 0x7f1200000000;
/** VERSION_1: the header is always 12 bytes (virtio v1.2 §5.1.6). */
const HDR = 12;
const RX_BUF = 2048;

const say = (s: string) => process.stdout.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connect(path: string) {
  const end = Date.now() + 30_000;
  for (;;) {
    try {
      return connectFrontend(native, { path }, { timeoutMs: 10_000 });
    } catch (e) {
      if (Date.now() > end) throw e;
      await sleep(100);
    }
  }
}

async function main(): Promise<number> {
  if (!values.socket) throw new Error('--socket is required');
  const sf = await connect(values.socket);
  const fe = sf.fe;
  const memfd = native.memfdCreate('fe-guest', false);
  native.ftruncate(memfd, MEM_BYTES);
  const ab = native.mmap(memfd, 0, MEM_BYTES, true);
  const mem = new FlatMemory(ab, 0);
  const ack = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

  await fe.request(R.GET_FEATURES);
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK));
  await fe.request(R.SET_OWNER);
  if (ack(await fe.request(R.SET_FEATURES, bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true })) !== 0n) {
    throw new Error('SET_FEATURES refused');
  }
  const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM_BYTES), userspaceAddr: BigInt(UVA_BASE), mmapOffset: 0n };
  await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { needReply: true, fds: [memfd] });
  const rings: { drv: SplitDriver; kick: number; call: number }[] = [];
  for (const index of [0, 1]) {
    const drv = new SplitDriver(mem, { size: QSIZE, base: index * 0x100000, heapAddr: 0x200000 + index * 0x200000, heapByteLen: 0x200000 });
    const kick = native.eventfd(0);
    const call = native.eventfd(0);
    const err = native.eventfd(0);
    const opt = { needReply: true };
    await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, opt);
    await fe.request(R.SET_VRING_BASE, { index, num: 0 }, opt);
    await fe.request(
      R.SET_VRING_ADDR,
      vringAddrAt(index, UVA_BASE, drv.descAddr, drv.availAddr, drv.usedAddr),
      opt,
    );
    await fe.request(R.SET_VRING_CALL, { index, noFd: false }, { ...opt, fds: [call] });
    await fe.request(R.SET_VRING_ERR, { index, noFd: false }, { ...opt, fds: [err] });
    await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [kick] });
    await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, opt);
    rings.push({ drv, kick, call });
  }
  const [rx, tx] = [rings[0]!, rings[1]!];
  // RX buffers first, so nothing the host sends back can find the ring empty.
  const posted = Math.min(EXPECT + 16, QSIZE);
  for (let i = 0; i < posted; i++) rx.drv.addChain([{ byteLen: RX_BUF, write: true }]);
  if (rx.drv.kick()) native.eventfdWrite(rx.kick, 1n);
  say('VFIO-FE-READY');

  // TX: one readable buffer per frame, zero header (no offloads) + frame. Reclaim as the backend uses them.
  let sent = 0;
  const deadline = Date.now() + TIMEOUT_MS;
  while (sent < SEND) {
    tx.drv.readUsed();
    while (sent < SEND && tx.drv.freeDescCount > 0) {
      const f = makeFrame('o', sent);
      const buf = new Uint8Array(HDR + f.length);
      buf.set(f, HDR);
      tx.drv.addChain([{ byteLen: buf.length, write: false, data: buf }]);
      sent++;
    }
    if (tx.drv.kick()) native.eventfdWrite(tx.kick, 1n);
    if (Date.now() > deadline) break;
    if (sent < SEND) await sleep(5);
  }
  // Wait until the backend consumed every TX chain (it has handed them to the NIC).
  while (tx.drv.inFlightCount > 0 && Date.now() < deadline) {
    tx.drv.readUsed();
    await sleep(5);
  }
  say(`VFIO-FE-SENT ${sent} inflight=${tx.drv.inFlightCount}`);

  let got = 0;
  let bad = 0;
  let firstErr = '';
  let nextSeq = 0;
  while (got < EXPECT && Date.now() < deadline) {
    for (const u of rx.drv.readUsed()) {
      got++;
      const frame = u.data!.subarray(HDR);
      const r = checkFrame('i', frame);
      if (typeof r === 'string' || r !== nextSeq) {
        bad++;
        firstErr ||= typeof r === 'string' ? r : `seq ${r}, expected ${nextSeq}`;
      }
      nextSeq = (typeof r === 'number' ? r : nextSeq) + 1;
    }
    if (got < EXPECT) await sleep(5);
  }
  // Anything beyond the expected frames is a defect too (duplicates, stray frames): give them a moment.
  await sleep(300);
  const extra = rx.drv.readUsed().length;
  say(`VFIO-FE-RX ${got} bad=${bad} extra=${extra}${firstErr ? ` first=${firstErr.replace(/\s+/g, '_')}` : ''}`);
  sf.close();
  native.munmap(ab);
  native.close(memfd);
  return sent === SEND && got === EXPECT && bad === 0 && extra === 0 ? 0 : 1;
}

main().then(
  (rc) => process.exit(rc),
  (e) => {
    say(`VFIO-FE-ERROR ${(e as Error).message.replace(/\n/g, ' ')}`);
    process.exit(1);
  },
);
