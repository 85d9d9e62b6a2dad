/**
 * The CLI as users run it: usage errors are clear and exit 2, bad input loses nothing, and a net
 * device serves a frontend and shuts down cleanly on SIGINT.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBackend } from '../helpers/backend.ts';
import { native } from '../../native/index.ts';
import { connectFrontend } from '../helpers/frontend-socket.ts';
import { FrontendReq as R } from '../../protocol/index.ts';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vut-cli-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 20000 });

test('usage errors exit 2 with a message naming the problem', (t) => {
  for (const [args, re] of [
    [['net'], /--socket is required/],
    [['net', '--socket', '/tmp/x', '--queues', '0'], /--queues must be 1\.\.128/],
    [['net', '--socket', '/tmp/x', '--port', 'eth0'], /bad --port 'eth0'/],
    [['net', '--socket', '/tmp/x', '--port', 'vhost:/tmp/y,fast'], /only 'client' is known/],
    [['net', '--socket', '/tmp/x', '--bogus'], /Unknown option '--bogus'/],
    [['net', '--socket', '/tmp/x', '--busy-poll-us', 'x'], /--busy-poll-us must be 0\.\.1000000/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['trace'], /trace needs: print FILE/],
  ] as const) {
    const r = run(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.regex(r.stderr, /usage:/);
  }
});

test('a socket path that cannot be bound is a clear system error (code, syscall), exit 1', (t) => {
  const r = run('net', '--socket', join(dir, 'no-such-dir', 's.sock'));
  t.is(r.status, 1);
  t.regex(r.stderr, /\[ENOENT\].*\(bind\)/);
});

test('a regular file at the socket path is never deleted', (t) => {
  const p = join(dir, 'precious.txt');
  writeFileSync(p, 'keep me');
  const r = run('net', '--socket', p);
  t.is(r.status, 1);
  t.regex(r.stderr, /EADDRINUSE/);
  t.true(existsSync(p));
});

test('trace print on a file that is not a trace fails clearly', (t) => {
  const p = join(dir, 'junk.vutrace');
  writeFileSync(p, 'this is not msgpack at all');
  const r = run('trace', 'print', p);
  t.not(r.status, 0);
  t.truthy(r.stderr.length);
});

test('net serves a frontend, and SIGINT shuts down cleanly and removes the socket', async (t) => {
  const sock = join(dir, 'serve.sock');
  const be = await startBackend(['net', '--socket', sock, '--queues', '4'], { waitSockets: [sock] });
  const fe = connectFrontend(native, { path: sock }, { timeoutMs: 3000 });
  t.teardown(() => fe.close());
  const f = await fe.fe.request(R.GET_FEATURES);
  t.true((f!.payload as { value: bigint }).value > 0n);
  await be.waitForLog(/frontend connected/, 3000);
  be.proc.kill('SIGINT');
  // Wait for the SIGINT handling itself: stop() would otherwise race it with a SIGTERM.
  await be.waitForLog(/SIGINT, shutting down/, 5000).catch(() => undefined);
  t.regex(be.log, /SIGINT, shutting down/);
  t.is(await be.stop(), 0);
  t.false(existsSync(sock), 'socket removed');
});
