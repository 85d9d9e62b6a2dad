/**
 * Real peer: a QEMU 7.2 guest (Debian 6.1 kernel, TCG) boots with its virtio-net on vhost-user-ts,
 * whose uplink is a TAP device in a network namespace of the host. The guest pings the namespace and
 * the namespace pings the guest.
 *
 *   guest eth0 10.0.2.15 --virtio/vhost-user--> vhost-user-ts --tap vutq0--> netns 10.0.2.1
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestAvailable, startGuest } from '../helpers/qemu.ts';
import { startBackend, type Backend } from '../helpers/backend.ts';
import { traceProblems } from '../helpers/trace-check.ts';
import { readTraceFile } from '../../protocol/index.ts';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));
const PEER = fileURLToPath(new URL('../helpers/tcp-peer.mjs', import.meta.url));
const canRun = guestAvailable() && existsSync('/dev/net/tun') && process.getuid?.() === 0;
const qemuTest = canRun ? test.serial : test.serial.skip;
const dir = mkdtempSync(join(tmpdir(), 'vut-qemu-'));
const ns = `vutq${process.pid}`;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
test.after.always(() => {
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    /* not created */
  }
  rmSync(dir, { recursive: true, force: true });
});

async function until(what: string, ms: number, f: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * vhost-user-ts on `<name>.sock` (pinned to cpu 1, tracing to `<name>.vutrace`) inside the test
 * namespace, its TAP port `tap` up there with 10.0.2.1/24.
 */
async function tapBackend(
  t: ExecutionContext,
  name: string,
  tap: string,
  extra: string[] = [],
): Promise<{ sock: string; trace: string; be: Backend }> {
  try {
    sh('ip', ['netns', 'add', ns]);
  } catch {
    /* exists from an earlier test */
  }
  const sock = join(dir, `${name}.sock`);
  const trace = join(dir, `${name}.vutrace`);
  const be = await startBackend(['net', '--socket', sock, '--port', `tap:${tap}`, '--trace', trace, ...extra], {
    core: 1,
    netns: ns,
    waitSockets: [sock],
  });
  t.teardown(() => be.stop().then(() => undefined));
  await until('tap device in netns', 5000, () => {
    try {
      return sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'show', tap]).includes('UP');
    } catch {
      return false;
    }
  });
  sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', '10.0.2.1/24', 'dev', tap]);
  return { sock, trace, be };
}

for (const variant of [
  { name: 'split, mergeable', mrg: true, packed: false },
  { name: 'split, no mergeable', mrg: false, packed: false },
  { name: 'packed, mergeable', mrg: true, packed: true },
  { name: 'packed, no mergeable', mrg: false, packed: true },
]) {
  qemuTest(`QEMU guest on vhost-user-ts pings a host netns through the TAP port (${variant.name})`, async (t) => {
    t.timeout(120_000);
    const { sock, trace, be } = await tapBackend(t, `q-${variant.mrg}-${variant.packed}`, 'vutq0');

    const g = startGuest({
      sock,
      cpus: '0',
      mrg: variant.mrg,
      packed: variant.packed,
      vut: { ip: '10.0.2.15/24', ping: '10.0.2.1,5', hold: '20' },
      teardown: t.teardown,
      maxLifetimeMs: 100_000,
    });
    const ok = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 90_000);
    t.is(ok[1], 'OK', `guest ping: ${ok[0]}\n${g.tail()}`);
    await g.waitFor(/VUT-HOLD/, 10_000);
    // And the other way: the namespace pings the guest (busybox ping: the host has no ping binary).
    const out = sh('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '3', '-W', '5', '10.0.2.15']);
    t.regex(out, /3 packets received/);
    await g.kill();
    t.is(await be.stop(), 0);
    t.regex(be.log, /frontend connected/);
    t.regex(be.log, /port vutq0: .*"rxFrames":[1-9]/);
    // What QEMU 7.2 did, from the recorded trace: with CONFIGURE_MEM_SLOTS offered it asks for the
    // slot count and adds regions one by one (test-rig-facts §4.4), and it sets up the backend channel.
    const printed = execFileSync(process.execPath, [BIN, 'trace', 'print', trace], { encoding: 'utf8' });
    t.regex(printed, /rx → SET_PROTOCOL_FEATURES 0x[0-9a-f]+ <[^>]*CONFIGURE_MEM_SLOTS/);
    t.regex(printed, /tx ← GET_MAX_MEM_SLOTS reply 0x1fd/);
    t.regex(printed, /rx → ADD_MEM_REG need_reply .* fds=1\n.*tx ← ADD_MEM_REG reply 0x0/);
    t.regex(printed, /rx → SET_BACKEND_REQ_FD need_reply fds=1/);
    t.regex(printed, /rx → SET_VRING_KICK index=1 noFd=false fds=1/);
    t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*RING_EVENT_IDX/);
    t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*NET_F_GUEST_ANNOUNCE/);
    if (variant.packed) {
      t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*RING_PACKED/);
      // QEMU's packed base carries both halves: avail and used positions with wrap counters set.
      t.regex(printed, /rx → SET_VRING_BASE index=0 num=0x80008000|rx → SET_VRING_BASE index=0 num=2147516416/);
    }
    if (variant.mrg) t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*NET_F_MRG_RXBUF/);
    else t.notRegex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*NET_F_MRG_RXBUF/);
    t.deepEqual(traceProblems(await readTraceFile(trace)), [], 'no request was refused, no NACK either way');
  });
}

qemuTest('QEMU guest behind an Intel vIOMMU (iommu_platform=on, ats=on): IOVAs, IOTLB misses answered by QEMU, pings both ways', async (t) => {
  t.timeout(120_000);
  const { sock, trace, be } = await tapBackend(t, 'iommu', 'vutq2');
  const g = startGuest({
    sock,
    cpus: '0',
    iommu: true,
    vut: { ip: '10.0.2.15/24', ping: '10.0.2.1,5', hold: '20' },
    teardown: t.teardown,
    maxLifetimeMs: 100_000,
  });
  const ok = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 90_000);
  t.is(ok[1], 'OK', `guest ping: ${ok[0]}\n${g.tail()}`);
  await g.waitFor(/VUT-HOLD/, 10_000);
  const out = sh('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '3', '-W', '5', '10.0.2.15']);
  t.regex(out, /3 packets received/);
  await g.kill();
  t.is(await be.stop(), 0);
  const printed = execFileSync(process.execPath, [BIN, 'trace', 'print', trace], { encoding: 'utf8' });
  // QEMU requires BACKEND_REQ + REPLY_ACK for a vIOMMU and negotiates ACCESS_PLATFORM.
  t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*ACCESS_PLATFORM/);
  // Our misses go out on the back-end channel and QEMU answers each with an UPDATE on the main one.
  t.regex(printed, /tx ← BACKEND_IOTLB_MSG need_reply iova=0x[0-9a-f]+ .*type=0x1 /, 'MISS sent');
  t.regex(printed, /rx → IOTLB_MSG need_reply .*type=0x2 /, 'UPDATE received');
  t.regex(printed, /rx → BACKEND_IOTLB_MSG reply 0x0/, 'QEMU acked our miss');
  t.regex(printed, /rx → IOTLB_MSG need_reply .*type=0x3 /, 'the guest unmapped DMA buffers: INVALIDATE');
  t.notRegex(printed, /type=0x4 /, 'no ACCESS_FAIL');
  t.deepEqual(traceProblems(await readTraceFile(trace)), [], 'no request was refused, no NACK either way');
});

const hasTshark = (() => {
  try {
    execFileSync('tshark', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

(hasTshark ? qemuTest : test.serial.skip)('QEMU guest through the tracing proxy: both directions recorded with fds, the guest\'s pings exported to pcapng and read by tshark', async (t) => {
  t.timeout(120_000);
  const { sock, trace, be } = await tapBackend(t, 'proxied', 'vutq3', ['--trace-rings']);
  const front = join(dir, 'proxy-front.sock');
  const ptrace = join(dir, 'proxy.vutrace');
  const proxy = await startBackend(['proxy', '--listen', front, '--connect', sock, '--trace', ptrace], { waitSockets: [front] });
  t.teardown(() => proxy.stop().then(() => undefined));
  const g = startGuest({
    sock: front,
    cpus: '0',
    vut: { ip: '10.0.2.15/24', ping: '10.0.2.1,5', hold: '5' },
    teardown: t.teardown,
    maxLifetimeMs: 100_000,
  });
  const ok = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 90_000);
  t.is(ok[1], 'OK', `guest ping through the proxy: ${ok[0]}\n${g.tail()}`);
  await g.kill();
  t.is(await proxy.stop(), 0);
  t.is(await be.stop(), 0);
  // The proxy saw QEMU's whole negotiation and our replies, with the fds QEMU passed (memory, kick, call).
  const printed = execFileSync(process.execPath, [BIN, 'trace', 'print', ptrace], { encoding: 'utf8' });
  t.regex(printed, /rx → ADD_MEM_REG need_reply .* fds=1/);
  t.regex(printed, /tx ← GET_FEATURES reply/);
  t.regex(printed, /rx → SET_VRING_KICK index=1 noFd=false fds=1/);
  t.regex(printed, /BACKEND_|SET_BACKEND_REQ_FD/);
  // The backend's ring trace: the ICMP echo requests and replies, as tshark reads them.
  const pcap = join(dir, 'proxied.pcapng');
  execFileSync(process.execPath, [BIN, 'trace', 'export', trace, '--pcapng', pcap], { encoding: 'utf8' });
  const icmp = execFileSync('tshark', ['-r', pcap, '-Y', 'icmp', '-T', 'fields', '-e', 'icmp.type'], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .filter(Boolean);
  t.true(icmp.filter((x) => x === '8').length >= 5, `echo requests from the guest: ${icmp.join(',')}`);
  t.true(icmp.filter((x) => x === '0').length >= 5, `echo replies to the guest: ${icmp.join(',')}`);
});

/** Runs tcp-peer.mjs in the namespace; resolves with its result line. */
function netnsPeer(args: string[]): { line: Promise<string>; listening: Promise<void>; kill(): void } {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let onListen!: () => void;
  const listening = new Promise<void>((r) => (onListen = r));
  const line = new Promise<string>((resolve) => {
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('LISTENING')) onListen();
      const m = /(RECV|SENT|TIMEOUT|CONNECT-FAILED).*\n/.exec(out);
      if (m) resolve(m[0].trim());
    });
  });
  return { line, listening, kill: () => p.kill('SIGKILL') };
}

qemuTest('TCP both ways between the guest and the netns (4 MiB each): offloads (TSO, checksum) pass through the TAP port intact', async (t) => {
  t.timeout(180_000);
  const { sock, trace, be } = await tapBackend(t, 'tcp', 'vutq1');
  const BYTES = 4 << 20;
  // The guest script runs from the host root shared read-only over 9p (/host).
  const script = join(dir, 'tcp.sh');
  writeFileSync(
    script,
    [
      'dd if=/dev/urandom of=/tmp/up bs=1024 count=4096 2>/dev/null',
      'echo "UP-MD5 $(md5sum /tmp/up | cut -d" " -f1)"',
      'nc 10.0.2.1 5001 < /tmp/up & up=$!',
      'echo LISTEN-5002',
      'nc -l -p 5002 > /tmp/down',
      'kill $up 2>/dev/null',
      'echo "DOWN $(wc -c < /tmp/down) $(md5sum /tmp/down | cut -d" " -f1)"',
      '',
    ].join('\n'),
  );
  const recv = netnsPeer(['recv', '5001', String(BYTES)]);
  t.teardown(() => recv.kill());
  await recv.listening;
  const g = startGuest({
    sock,
    cpus: '0',
    hostRoot: true,
    vut: { ip: '10.0.2.15/24', run: `sh,/host${script}` },
    teardown: t.teardown,
    maxLifetimeMs: 170_000,
  });
  const upMd5 = (await g.waitFor(/UP-MD5 ([0-9a-f]{32})/, 90_000))[1];
  const up = await recv.line;
  t.is(up, `RECV ${BYTES} ${upMd5}`, 'guest -> netns: every byte, intact');
  await g.waitFor(/LISTEN-5002/, 30_000);
  const send = netnsPeer(['send', '10.0.2.15', '5002', String(BYTES), '7']);
  t.teardown(() => send.kill());
  const sent = await send.line;
  const m = /^SENT (\d+) ([0-9a-f]{32})$/.exec(sent);
  t.truthy(m, sent);
  const down = await g.waitFor(/DOWN (\d+) ([0-9a-f]{32})/, 90_000);
  t.is(down[1], String(BYTES), 'netns -> guest: every byte');
  t.is(down[2], m![2], 'netns -> guest: intact');
  await g.kill();
  t.is(await be.stop(), 0);
  const printed = execFileSync(process.execPath, [BIN, 'trace', 'print', trace], { encoding: 'utf8' });
  t.regex(printed, /rx → SET_FEATURES 0x[0-9a-f]+ <[^>]*NET_F_GUEST_TSO4[^>]*NET_F_HOST_TSO4/, 'the guest negotiated TSO both ways');
  // GSO frames crossed the port: the average frame is larger than an Ethernet MTU in both directions.
  const stats = JSON.parse(/port vutq1: (\{.*\})/.exec(be.log)![1]!) as { rxFrames: number; rxBytes: number; txFrames: number; txBytes: number };
  t.log(`port stats ${JSON.stringify(stats)}`);
  t.true(stats.txBytes / stats.txFrames > 1514, 'guest TX carried TSO frames to the tap');
  t.true(stats.rxBytes / stats.rxFrames > 1514, 'the tap delivered GSO frames to the guest');
});
