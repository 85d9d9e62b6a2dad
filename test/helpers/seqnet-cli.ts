/**
 * Command-line front of seqnet.ts, same arguments, output lines and exit codes as the guest tool
 * (qemu-scripts/guest-tools/seqnet.c), so a test can run it inside a network namespace:
 *
 *   ip netns exec NS node --import tsx test/helpers/seqnet-cli.ts send DST_IP PORT COUNT PPS SIZE
 *   ip netns exec NS node --import tsx test/helpers/seqnet-cli.ts recv PORT COUNT IDLE_MS [FIRST_MS]
 *
 * send prints "VUT-SEQ-SENT n= err= retry= ms=" (exit 0 if err=0); recv prints "VUT-SEQ-LISTENING port=",
 * "VUT-SEQ-PROGRESS rx=" (at most once a second) and "VUT-SEQ rx= dup= bad= ooo= missing= gaps=" (exit 0 if
 * every seq arrived once and intact). SIGTERM/SIGINT make recv print its result line at once.
 */
import { isIP } from 'node:net';
import { formatSeqLine, recvSeq, sendSeq, SEQ_HDR_BYTES, SEQ_MAX_SIZE } from './seqnet.ts';

const USAGE = 'usage: seqnet-cli.ts send DST_IP PORT COUNT PPS SIZE\n       seqnet-cli.ts recv PORT COUNT IDLE_MS [FIRST_MS]\n';

function num(s: string | undefined, min: number, max: number): number {
  if (s === undefined || !/^\d+$/.test(s) || Number(s) < min || Number(s) > max) {
    process.stderr.write(USAGE);
    process.exit(2);
  }
  return Number(s);
}

const out = (line: string) => process.stdout.write(line + '\n');
const [mode, ...a] = process.argv.slice(2);

if (mode === 'send' && a.length === 5) {
  if (!isIP(a[0]!)) {
    process.stderr.write(USAGE);
    process.exit(2);
  }
  const r = await sendSeq({
    host: a[0]!,
    port: num(a[1], 1, 65535),
    count: num(a[2], 0, 0xffffffff),
    pps: num(a[3], 0, 10_000_000),
    size: num(a[4], SEQ_HDR_BYTES, SEQ_MAX_SIZE),
  });
  out(formatSeqLine(r));
  process.exit(r.err ? 1 : 0);
} else if (mode === 'recv' && (a.length === 3 || a.length === 4)) {
  const firstMs = a[3] === undefined ? 0 : num(a[3], 0, 3_600_000);
  const r = recvSeq({
    port: num(a[0], 0, 65535),
    count: num(a[1], 1, 0xffffffff),
    idleMs: num(a[2], 0, 3_600_000),
    ...(firstMs ? { firstMs } : {}),
    onProgress: (rx) => out(formatSeqLine({ kind: 'progress', rx })),
  });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => r.stop());
  out(formatSeqLine({ kind: 'listening', port: await r.listening }));
  const res = await r.result;
  out(formatSeqLine(res));
  process.exit(res.missing || res.dup || res.bad ? 1 : 0);
} else {
  process.stderr.write(USAGE);
  process.exit(2);
}
