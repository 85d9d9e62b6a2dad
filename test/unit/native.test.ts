/**
 * The native addon on real kernel objects: socketpair/SCM_RIGHTS, unix listen/connect/accept, memfd + mmap,
 * eventfd, uv_poll Poller, TAP. Requires `npm run build:native`; the TAP tests need root and /dev/net/tun.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_NATIVE_PATH, loadNative, native, POLL_READABLE, POLL_WRITABLE } from '../../native/index.ts';
import type { Fd, SysError } from '../../native/index.ts';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const O_CLOEXEC = 0o2000000;

/** Registers fds for closing at teardown; `close()` closes early and forgets, so nothing is closed twice. */
function fdTracker(t: ExecutionContext) {
  const open = new Set<Fd>();
  t.teardown(() => {
    for (const fd of open) native.close(fd);
    open.clear();
  });
  return {
    own<T extends Fd>(fd: T): T {
      open.add(fd);
      return fd;
    },
    close(fd: Fd) {
      open.delete(fd);
      native.close(fd);
    },
  };
}

function isCloexec(fd: Fd): boolean {
  const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
  if (flags === undefined) throw new Error('no flags in fdinfo');
  return (parseInt(flags, 8) & O_CLOEXEC) !== 0;
}

function memfdWith(fds: ReturnType<typeof fdTracker>, name: string, content: string): Fd {
  const fd = fds.own(native.memfdCreate(name, false));
  const bytes = new TextEncoder().encode(content);
  if (native.write(fd, bytes, 0, bytes.length) !== bytes.length) throw new Error('short write to memfd');
  return fd;
}

/** Lines of /proc/self/maps backed by memfd `name`. */
function mappingsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;
}

/** pread from offset 0: received fds share the sender's file offset, so plain read() would see EOF. */
function contentOf(fd: Fd): string {
  const size = native.fstat(fd).size;
  const buf = Buffer.alloc(size);
  readSync(fd, buf, 0, size, 0);
  return buf.toString('utf8');
}

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- loader

test('loadNative: missing file throws NATIVE_NOT_BUILT with the build hint', (t) => {
  const err = t.throws(() => loadNative('/nonexistent/vhost_native.node'));
  t.is((err as Error & { code?: string }).code, 'NATIVE_NOT_BUILT');
  t.regex(err!.message, /npm run build:native/);
  t.true(existsSync(DEFAULT_NATIVE_PATH));
});

// ---------------------------------------------------------------- AF_UNIX + SCM_RIGHTS

test('sendmsg/recvmsg pass 3 memfds with SCM_RIGHTS; received fds are new, CLOEXEC, same files', (t) => {
  const fds = fdTracker(t);
  const [a, b] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const sent = [memfdWith(fds, 'one', 'first region'), memfdWith(fds, 'two', 'second'), memfdWith(fds, 'three', '3rd!')];
  const msg = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
  t.is(native.sendmsg(a, msg, 2, 4, sent), 4);

  const buf = new Uint8Array(16).fill(0xff);
  const r = native.recvmsg(b, buf, 1, 8, 8);
  t.truthy(r);
  for (const fd of r!.fds) fds.own(fd);
  t.is(r!.byteLen, 4);
  t.false(r!.fdsTruncated);
  t.deepEqual([...buf.subarray(0, 6)], [0xff, 0xbe, 0xef, 1, 2, 0xff]);
  t.is(r!.fds.length, 3);
  for (const fd of r!.fds) {
    t.false(sent.includes(fd));
    t.true(isCloexec(fd));
  }
  t.deepEqual(r!.fds.map(contentOf), ['first region', 'second', '3rd!']);
});

test('recvmsg reports MSG_CTRUNC when more fds arrive than maxFds', (t) => {
  const fds = fdTracker(t);
  const [a, b] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const sent = [memfdWith(fds, 'x', 'x'), memfdWith(fds, 'y', 'y'), memfdWith(fds, 'z', 'z')];
  const buf = new Uint8Array(4);

  t.is(native.sendmsg(a, buf, 0, 1, sent), 1);
  const r1 = native.recvmsg(b, buf, 0, 4, 1)!;
  for (const fd of r1.fds) fds.own(fd);
  t.is(r1.byteLen, 1);
  t.true(r1.fdsTruncated);
  t.is(r1.fds.length, 1);
  t.is(contentOf(r1.fds[0]!), 'x');

  t.is(native.sendmsg(a, buf, 0, 1, sent), 1);
  const r0 = native.recvmsg(b, buf, 0, 4, 0)!;
  t.is(r0.byteLen, 1);
  t.true(r0.fdsTruncated);
  t.deepEqual(r0.fds, []);

  // Plain data: no truncation flag.
  t.is(native.sendmsg(a, buf, 0, 2, []), 2);
  const r2 = native.recvmsg(b, buf, 0, 4, 4)!;
  t.is(r2.byteLen, 2);
  t.false(r2.fdsTruncated);
  t.deepEqual(r2.fds, []);
});

test('recvmsg: null when empty, byteLen 0 at EOF; sendmsg to a closed peer is EPIPE', (t) => {
  const fds = fdTracker(t);
  const [a, b] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const buf = new Uint8Array(8);
  t.is(native.recvmsg(b, buf, 0, 8, 4), null);
  fds.close(a);
  t.deepEqual(native.recvmsg(b, buf, 0, 8, 4), { byteLen: 0, fds: [], fdsTruncated: false });
  const err = t.throws(() => native.sendmsg(b, buf, 0, 1, [])) as SysError;
  t.is(err.code, 'EPIPE');
  t.is(err.errno, -32);
  t.is(err.syscall, 'sendmsg');
});

test('sendmsg returns null on EAGAIN when the socket buffer is full', (t) => {
  const fds = fdTracker(t);
  const [a] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const chunk = new Uint8Array(65536);
  let last: number | null = 0;
  for (let i = 0; i < 10000 && last !== null; i++) last = native.sendmsg(a, chunk, 0, chunk.length, []);
  t.is(last, null);
});

test('recvmsg/sendmsg validate the buffer window', (t) => {
  const fds = fdTracker(t);
  const [a] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const buf = new Uint8Array(8);
  t.is((t.throws(() => native.recvmsg(a, buf, 4, 5, 0)) as SysError).code, 'ERR_OUT_OF_RANGE');
  t.is((t.throws(() => native.sendmsg(a, buf, -1, 1, [])) as SysError).code, 'ERR_OUT_OF_RANGE');
  t.is((t.throws(() => native.recvmsg(a, new Uint16Array(4) as unknown as Uint8Array, 0, 1, 0)) as SysError).code,
    'ERR_INVALID_ARG_TYPE');
});

test('unixListen/unixConnect/unixAccept on a temp path', (t) => {
  const fds = fdTracker(t);
  const dir = mkdtempSync(join(tmpdir(), 'vhost-native-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'sock');
  const lfd = fds.own(native.unixListen(path, 4));
  t.true(isCloexec(lfd));
  t.is(native.unixAccept(lfd), null);

  const c = fds.own(native.unixConnect(path));
  const s = native.unixAccept(lfd);
  t.not(s, null);
  fds.own(s!);
  t.true(isCloexec(s!));

  const out = new TextEncoder().encode('ping');
  t.is(native.write(c, out, 0, 4), 4);
  const inb = new Uint8Array(4);
  t.is(native.read(s!, inb, 0, 4), 4);
  t.is(new TextDecoder().decode(inb), 'ping');
  t.is(native.read(s!, inb, 0, 4), null);

  // Listening on an existing path is EADDRINUSE (the caller decides whether to unlink).
  const e = t.throws(() => native.unixListen(path, 1)) as SysError;
  t.is(e.code, 'EADDRINUSE');
  t.is(e.syscall, 'bind');
  t.is(e.path, path);

  // A socket file with no listener behind it refuses connections.
  fds.close(lfd);
  const refused = t.throws(() => native.unixConnect(path)) as SysError;
  t.is(refused.code, 'ECONNREFUSED');
});

test('unixConnect to a missing path throws ENOENT shaped like a Node system error', (t) => {
  const path = join(tmpdir(), `vhost-native-missing-${process.pid}.sock`);
  const err = t.throws(() => native.unixConnect(path)) as SysError;
  t.true(err instanceof Error);
  t.is(err.code, 'ENOENT');
  t.is(err.errno, -2);
  t.true(err.errno < 0);
  t.is(err.syscall, 'connect');
  t.is(err.path, path);
  t.regex(err.message, /^ENOENT: .*connect/);
});

test('readv/writev scatter and gather across views', (t) => {
  const fds = fdTracker(t);
  const [a, b] = native.socketpair().map((fd) => fds.own(fd)) as [Fd, Fd];
  const p = new Uint8Array([1, 2, 3, 4, 5]);
  const q = new Uint8Array([6, 7, 8]);
  t.is(native.writev(a, [p, q], [1, 0], [3, 2]), 5); // 2,3,4,6,7
  const x = new Uint8Array(4);
  const y = new Uint8Array(4);
  t.is(native.readv(b, [x, y], [2, 0], [2, 4]), 5);
  t.deepEqual([...x], [0, 0, 2, 3]);
  t.deepEqual([...y], [4, 6, 7, 0]);
  t.is(native.readv(b, [x], [0], [4]), null);
  t.is((t.throws(() => native.readv(b, [x], [0, 1], [4])) as SysError).code, 'ERR_OUT_OF_RANGE');
});

test('dup gives an independent CLOEXEC descriptor of the same object', (t) => {
  const fds = fdTracker(t);
  const e = fds.own(native.eventfd(0));
  const d = fds.own(native.dup(e));
  t.not(d, e);
  t.true(isCloexec(d));
  native.eventfdWrite(e, 7n);
  t.is(native.eventfdRead(d), 7n);
  t.is((t.throws(() => native.close(1 << 30)) as SysError).code, 'EBADF');
});

// ---------------------------------------------------------------- memory

test('fstat reports size and S_IFREG for a memfd', (t) => {
  const fds = fdTracker(t);
  const fd = fds.own(native.memfdCreate('stat', true));
  native.ftruncate(fd, 12345);
  const st = native.fstat(fd);
  t.is(st.size, 12345);
  t.is(st.mode & S_IFMT, S_IFREG);
  const [a] = native.socketpair().map((x) => fds.own(x)) as [Fd, Fd];
  t.not(native.fstat(a).mode & S_IFMT, S_IFREG);
});

test('mmap: write through one mapping, read through a second mapping at an unaligned offset', (t) => {
  const fds = fdTracker(t);
  const fd = fds.own(native.memfdCreate('guest-ram', false));
  const size = 3 * 4096;
  native.ftruncate(fd, size);
  const whole = native.mmap(fd, 0, size, true);
  t.is(whole.byteLength, size);
  const w = new Uint8Array(whole);
  for (let i = 0; i < size; i++) w[i] = (i * 7 + 3) & 0xff;

  const off = 4096 + 100; // not page aligned
  const part = native.mmap(fd, off, 5000, false);
  t.is(part.byteLength, 5000);
  const r = new Uint8Array(part);
  t.deepEqual(r.subarray(0, 5000), w.subarray(off, off + 5000));
  // Shared: later writes through the first mapping show through the second.
  w[off + 10] = 0x5a;
  t.is(r[10], 0x5a);

  native.munmap(part);
  native.munmap(whole);
});

test('munmap releases the file pages at once without detaching: stale views read zeros, their writes reach nothing shared; double munmap is a no-op', (t) => {
  const fds = fdTracker(t);
  const fd = fds.own(native.memfdCreate('retire', false));
  native.ftruncate(fd, 8192);
  const ab = native.mmap(fd, 0, 8192, true);
  const view = new Uint8Array(ab);
  view[0] = 1;
  view[5000] = 2;
  t.is(mappingsOf('retire'), 1);
  native.munmap(ab);
  t.is(mappingsOf('retire'), 0, 'the file is no longer mapped');
  t.is(ab.byteLength, 8192, 'not detached (D43)');
  t.deepEqual([view[0], view[5000]], [0, 0], 'stale views read zeros');
  view[1] = 0x77; // a stale write: lands in private memory
  const again = native.mmap(fd, 0, 8192, false);
  const fresh = new Uint8Array(again);
  t.deepEqual([fresh[0], fresh[1], fresh[5000]], [1, 0, 2], 'the file kept what was written before, not the stale write');
  t.notThrows(() => native.munmap(ab));
  t.is((t.throws(() => native.mmapAddress(ab)) as SysError).code, 'EINVAL', 'no longer a live mapping');
  t.is((t.throws(() => native.madvise(ab, 0, 4096, 'dontneed')) as SysError).code, 'EINVAL');
  native.munmap(again);
});

test('mmap refuses byteLen 0; munmap refuses foreign buffers; mmap of a bad fd is EBADF', (t) => {
  const fds = fdTracker(t);
  const fd = fds.own(native.memfdCreate('refuse', false));
  native.ftruncate(fd, 4096);
  const zero = t.throws(() => native.mmap(fd, 0, 0, true)) as SysError;
  t.is(zero.code, 'EINVAL');
  t.is(zero.syscall, 'mmap');
  t.is((t.throws(() => native.munmap(new ArrayBuffer(16))) as SysError).code, 'EINVAL');
  t.is((t.throws(() => native.mmap(1 << 30, 0, 4096, true)) as SysError).code, 'EBADF');
});

/** Runs `script` in a fresh node with --expose-gc; resolves with what it printed. */
function exposeGcOutput(script: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let s = '';
    child.stdout.on('data', (d: Buffer) => (s += d.toString()));
    child.on('error', reject);
    child.on('exit', () => resolve(s));
  });
}

test('mmap: an unreferenced mapping is unmapped by the GC finalizer', async (t) => {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});
const fs = require('fs');
const count = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('/memfd:vhostgc ')).length;
const fd = n.memfdCreate('vhostgc', false); n.ftruncate(fd, 1 << 20);
(() => { new Uint8Array(n.mmap(fd, 0, 1 << 20, true))[0] = 1; })();
const before = count();
gc(); setImmediate(() => { gc(); setTimeout(() => { console.log(before + ' ' + count()); n.close(fd); }, 50); });`;
  const out = await exposeGcOutput(script);
  t.is(out.trim(), '1 0');
});

test('munmap then GC: the zero pages that replaced a retired mapping go with the buffer', async (t) => {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});
const fs = require('fs');
const fd = n.memfdCreate('vhostgc2', false); n.ftruncate(fd, 1 << 20);
let start = 0n;
(() => { const ab = n.mmap(fd, 0, 1 << 20, true); start = n.mmapAddress(ab); n.munmap(ab); })();
// Anonymous neighbours may merge with it: is the range's first page inside any mapping?
const has = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').some((l) => {
  const m = /^([0-9a-f]+)-([0-9a-f]+)/.exec(l);
  return m !== null && BigInt('0x' + m[1]) <= start && start < BigInt('0x' + m[2]);
});
const before = has();
gc(); setImmediate(() => { gc(); setTimeout(() => { console.log(before + ' ' + has()); n.close(fd); }, 50); });`;
  const out = await exposeGcOutput(script);
  t.is(out.trim(), 'true false', 'the range was still reserved after munmap, gone after the collection');
});

// ---------------------------------------------------------------- eventfd

test('eventfd: read is null when zero, writes accumulate, read resets', (t) => {
  const fds = fdTracker(t);
  const e = fds.own(native.eventfd(0));
  t.true(isCloexec(e));
  t.is(native.eventfdRead(e), null);
  native.eventfdWrite(e, 1n);
  native.eventfdWrite(e, 2n);
  t.is(native.eventfdRead(e), 3n);
  t.is(native.eventfdRead(e), null);
  const big = (1n << 63n) + 5n;
  native.eventfdWrite(e, big);
  t.is(native.eventfdRead(e), big);
  const init = fds.own(native.eventfd(5));
  t.is(native.eventfdRead(init), 5n);
  t.is((t.throws(() => native.eventfdWrite(e, -1n)) as SysError).code, 'ERR_OUT_OF_RANGE');
});

// ---------------------------------------------------------------- Poller

test.serial('Poller fires READABLE on an eventfd after a write; stop() prevents further callbacks', async (t) => {
  const fds = fdTracker(t);
  const e = fds.own(native.eventfd(0));
  const seen: number[] = [];
  let wake: (() => void) | undefined;
  const poller = new native.Poller(e, (err, events) => {
    t.is(err, null);
    seen.push(events);
    native.eventfdRead(e); // drain, or level-triggered polling fires again at once
    wake?.();
  });
  t.teardown(() => poller.close());
  poller.start(POLL_READABLE);
  await tick(20);
  t.deepEqual(seen, [], 'no event before the write');

  const fired = new Promise<void>((r) => (wake = r));
  native.eventfdWrite(e, 1n);
  await fired;
  t.is(seen.length, 1);
  t.true((seen[0]! & POLL_READABLE) !== 0);

  poller.stop();
  native.eventfdWrite(e, 1n);
  await tick(50);
  t.is(seen.length, 1, 'stopped poller stays silent');

  // Restart: the pending counter fires at once.
  const again = new Promise<void>((r) => (wake = r));
  poller.start(POLL_READABLE | POLL_WRITABLE);
  await again;
  t.is(seen.length, 2);
  poller.close();
  poller.close(); // idempotent
  native.eventfdWrite(e, 1n);
  await tick(50);
  t.is(seen.length, 2, 'closed poller stays silent');
  t.is((t.throws(() => poller.start(POLL_READABLE)) as SysError).code, 'EBADF');
});

test.serial('Poller: close() from inside the callback stops delivery', async (t) => {
  const fds = fdTracker(t);
  const e = fds.own(native.eventfd(1)); // readable from the start, never drained
  let calls = 0;
  const poller = new native.Poller(e, () => {
    calls++;
    poller.close();
  });
  poller.start(POLL_READABLE);
  await tick(50);
  t.is(calls, 1);
});

test.serial('Poller: constructor rejects a bad fd; a second started poller on one fd is EEXIST', (t) => {
  const fds = fdTracker(t);
  t.is((t.throws(() => new native.Poller(1 << 30, () => {})) as SysError).code, 'EBADF');
  const e = fds.own(native.eventfd(0));
  const p1 = new native.Poller(e, () => {});
  const p2 = new native.Poller(e, () => {});
  t.teardown(() => {
    p1.close();
    p2.close();
  });
  p1.start(POLL_READABLE);
  const err = t.throws(() => p2.start(POLL_READABLE)) as SysError;
  t.is(err.code, 'EEXIST');
  t.is(err.syscall, 'uv_poll_start');
  p1.stop();
  t.notThrows(() => p2.start(POLL_READABLE));
});

/** Runs a child node that loads the addon and does `body`; resolves with whether it exited by itself. */
function childExits(body: string, waitMs: number): Promise<boolean> {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});
const e = n.eventfd(0); const p = new n.Poller(e, () => {});
${body}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'inherit'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(false);
    }, waitMs);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(true);
      else if (code !== null) reject(new Error(`child exited with ${code}`));
    });
  });
}

test('Poller: a started poller keeps the loop alive; stopped or closed ones do not', async (t) => {
  t.false(await childExits('p.start(1);', 1500));
  t.true(await childExits('p.start(1); p.stop();', 5000));
  t.true(await childExits('p.start(1); p.close();', 5000));
  t.true(await childExits('p.start(1); setTimeout(() => p.close(), 50);', 5000));
});

test('Poller: a throwing callback surfaces as uncaughtException', async (t) => {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});
const e = n.eventfd(1);
const p = new n.Poller(e, () => { p.close(); throw new Error('boom'); });
process.on('uncaughtException', (err) => { console.log('caught ' + err.message); });
p.start(1);`;
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let s = '';
    child.stdout.on('data', (d: Buffer) => (s += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.on('error', reject);
    child.on('exit', () => {
      clearTimeout(timer);
      resolve(s);
    });
  });
  t.is(out.trim(), 'caught boom');
});

// ---------------------------------------------------------------- TAP

const canTap = process.getuid?.() === 0 && existsSync('/dev/net/tun');

(canTap ? test : test.skip)('tapOpen creates a vnet-hdr TAP; linkSetUp brings it up; close removes it', (t) => {
  const fds = fdTracker(t);
  const tap = native.tapOpen('vutest%d', 12);
  fds.own(tap.fd);
  t.regex(tap.name, /^vutest\d+$/);
  t.true(isCloexec(tap.fd));
  const sys = `/sys/class/net/${tap.name}`;
  t.true(existsSync(sys));
  const flags = () => parseInt(readFileSync(`${sys}/flags`, 'utf8').trim(), 16);
  t.is(flags() & 0x1, 0);
  native.linkSetUp(tap.name);
  t.is(flags() & 0x1, 0x1);
  native.tapSetOffload(tap.fd, 0);
  native.tapSetOffload(tap.fd, 0x01 | 0x02); // TUN_F_CSUM | TUN_F_TSO4
  fds.close(tap.fd);
  t.false(existsSync(sys));

  const err = t.throws(() => native.linkSetUp('vutest-nonexist')) as SysError;
  t.is(err.code, 'ENODEV');
  t.is(err.syscall, 'ioctl');
});
