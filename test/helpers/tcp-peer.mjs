// A TCP peer for transfer tests, run inside a network namespace (`ip netns exec NS node tcp-peer.mjs ...`):
//   recv PORT BYTES              accept one connection, print "RECV <bytes> <md5>" once BYTES arrived or it ended
//   send HOST PORT BYTES SEED    connect (retrying for 60 s), send BYTES deterministic bytes, close; print "SENT <bytes> <md5>"
import net from 'node:net';
import { createHash } from 'node:crypto';

const [mode, a, b, c, d] = process.argv.slice(2);
const done = (line) => {
  process.stdout.write(line + '\n');
  process.exit(0);
};
setTimeout(() => done('TIMEOUT'), 120_000).unref();

if (mode === 'recv') {
  const want = Number(b);
  const srv = net.createServer((s) => {
    const h = createHash('md5');
    let n = 0;
    const finish = () => done(`RECV ${n} ${h.digest('hex')}`);
    s.on('data', (chunk) => {
      h.update(chunk);
      n += chunk.length;
      if (n >= want) finish();
    });
    s.on('end', finish);
  });
  srv.listen(Number(a), '0.0.0.0', () => process.stdout.write('LISTENING\n'));
} else if (mode === 'send') {
  const bytes = Number(c);
  let x = Number(d) >>> 0 || 1;
  const buf = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; // xorshift32
    buf[i] = x & 0xff;
  }
  const md5 = createHash('md5').update(buf).digest('hex');
  const end = Date.now() + 60_000;
  const attempt = () => {
    const s = net.connect(Number(b), a, () => s.end(buf, () => done(`SENT ${bytes} ${md5}`)));
    s.on('error', () => {
      if (Date.now() > end) done('CONNECT-FAILED');
      setTimeout(attempt, 200);
    });
  };
  attempt();
} else {
  process.stderr.write('usage: tcp-peer.mjs recv PORT BYTES | send HOST PORT BYTES SEED\n');
  process.exit(2);
}
