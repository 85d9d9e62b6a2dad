/**
 * Real peers for our software offloads (issue 21 item 2): two QEMU 7.2 guests switched by vhost-user-ts
 * (`--socket a.sock --port vhost:b.sock`). Guest A negotiates TSO and checksum offload (its TCP leaves
 * as 64 KiB GSO frames with partial checksums); guest B negotiates none of GUEST_CSUM / GUEST_TSO4/6 /
 * GUEST_ECN, so every such frame must be segmented and checksummed by our code on its way to B. The
 * judge is B's kernel, not our code: it verifies every TCP and IP checksum in software (no DATA_VALID
 * without GUEST_CSUM), so the file arrives intact (md5) only if every segment was right, and its
 * counters (/proc/net/snmp InCsumErrors, IP InHdrErrors) must stay 0.
 */
import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestAvailable, startGuest } from '../helpers/qemu.ts';
import { startBackend } from '../helpers/backend.ts';
import { readTraceFile, VirtioF, has, type TraceRecord } from '../../protocol/index.ts';
import { traceProblems } from '../helpers/trace-check.ts';

const canRun = guestAvailable() && process.getuid?.() === 0;
const qemuTest = canRun ? test.serial : test.serial.skip;
const dir = mkdtempSync(join(tmpdir(), 'vut-swo-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const BYTES = 4 << 20;
const NO_GUEST_OFFLOADS = 'guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off';

function ackedFeatures(recs: TraceRecord[], sock: string): bigint {
  const r = recs.filter((x) => x.kind !== 'ring' && x.dir === 'rx' && x.name === 'SET_FEATURES' && x.endpoint?.includes(sock));
  const last = r[r.length - 1];
  if (!last || last.kind === 'ring') throw new Error(`no SET_FEATURES from ${sock}`);
  return (last.payload as { value: bigint }).value;
}

qemuTest('TSO guest -> guest without GUEST_CSUM/GUEST_TSO through the switch: our software segmentation and checksums, judged by the receiving kernel (md5, InCsumErrors 0)', async (t) => {
  t.timeout(240_000);
  const sA = join(dir, 'a.sock');
  const sB = join(dir, 'b.sock');
  const trace = join(dir, 'sw.vutrace');
  const be = await startBackend(['net', '--socket', sA, '--port', `vhost:${sB}`, '--trace', trace], { core: 1, waitSockets: [sA, sB] });
  t.teardown(() => be.stop().then(() => undefined));
  const scriptA = join(dir, 'a.sh');
  const scriptB = join(dir, 'b.sh');
  writeFileSync(
    scriptA,
    [
      `dd if=/dev/urandom of=/tmp/up bs=1024 count=${BYTES >> 10} 2>/dev/null`,
      'echo "UP-MD5 $(md5sum /tmp/up | cut -d" " -f1)"',
      'i=0; until nc -w 2 10.0.3.2 5002 < /tmp/up; do i=$((i+1)); [ $i -gt 60 ] && break; sleep 1; done',
      'echo SENT-DONE',
      '',
    ].join('\n'),
  );
  writeFileSync(
    scriptB,
    [
      'echo LISTEN-5002',
      'nc -l -p 5002 > /tmp/down',
      'echo "DOWN $(wc -c < /tmp/down) $(md5sum /tmp/down | cut -d" " -f1)"',
      'echo "SNMP-TCP $(grep ^Tcp: /proc/net/snmp | tail -1)"',
      'echo "SNMP-IP $(grep ^Ip: /proc/net/snmp | tail -1)"',
      '',
    ].join('\n'),
  );
  const b = startGuest({
    sock: sB,
    cpus: '0',
    mac: '52:54:00:00:03:02',
    devOpts: NO_GUEST_OFFLOADS,
    hostRoot: true,
    vut: { ip: '10.0.3.2/24', run: `sh,/host${scriptB}` },
    teardown: t.teardown,
    maxLifetimeMs: 220_000,
  });
  await b.waitFor(/LISTEN-5002/, 90_000);
  const a = startGuest({
    sock: sA,
    cpus: '0',
    mac: '52:54:00:00:03:01',
    hostRoot: true,
    vut: { ip: '10.0.3.1/24', run: `sh,/host${scriptA}` },
    teardown: t.teardown,
    maxLifetimeMs: 220_000,
  });
  const upMd5 = (await a.waitFor(/UP-MD5 ([0-9a-f]{32})/, 90_000))[1];
  const down = await b.waitFor(/DOWN (\d+) ([0-9a-f]{32})/, 150_000);
  t.is(down[1], String(BYTES), `B received every byte\n${a.tail()}`);
  t.is(down[2], upMd5, 'B received the file intact');
  // The receiving kernel's counters: Tcp ... InCsumErrors (last field), Ip InHdrErrors (4th value).
  const tcp = (await b.waitFor(/SNMP-TCP Tcp: ([\d -]+)\r?\n/, 10_000))[1]!.trim().split(/\s+/).map(Number);
  const ip = (await b.waitFor(/SNMP-IP Ip: ([\d -]+)\r?\n/, 10_000))[1]!.trim().split(/\s+/).map(Number);
  t.log(`B: Tcp ${tcp.join(' ')}; Ip ${ip.join(' ')}`);
  t.true(tcp.length >= 15, 'the whole Tcp line was read');
  t.is(tcp[tcp.length - 1], 0, `B's kernel saw no TCP checksum error (Tcp: ${tcp.join(' ')})`);
  t.is(ip[3], 0, `B's kernel saw no IP header error (Ip: ${ip.join(' ')})`);
  await a.kill();
  await b.kill();
  t.is(await be.stop(), 0);
  // What was negotiated: A with TSO and checksum offload, B with none of the guest offloads.
  const recs = await readTraceFile(trace);
  const fa = ackedFeatures(recs, sA);
  const fb = ackedFeatures(recs, sB);
  t.true(has(fa, VirtioF.NET_F_HOST_TSO4) && has(fa, VirtioF.NET_F_CSUM), 'A sends TSO with partial checksums');
  for (const f of [VirtioF.NET_F_GUEST_CSUM, VirtioF.NET_F_GUEST_TSO4, VirtioF.NET_F_GUEST_TSO6, VirtioF.NET_F_GUEST_ECN]) t.false(has(fb, f), `B did not negotiate feature ${f}`);
  t.deepEqual(traceProblems(recs), []);
  // A's frames entered the switch as GSO frames (bigger than any MTU-sized frame), so B got them only
  // through our segmentation.
  t.log(be.log.split('\n').filter((l) => l.includes('port ')).join('\n'));
  const ports = [...be.log.matchAll(/port [^\n]*?(\{[^\n]*\})/g)].map((m) => JSON.parse(m[1]!) as { txFrames: number; txBytes: number; rxFrames: number; rxBytes: number });
  t.true(ports.some((p) => p.txFrames > 0 && p.txBytes / p.txFrames > 1514), 'GSO frames crossed the switch');
});
