/**
 * The native addon's postcopy syscalls on real kernel objects: mmapAddress, madvise, userfaultfd (UFFDIO_API,
 * REGISTER/UNREGISTER, COPY, ZEROPAGE, CONTINUE, WRITEPROTECT, WAKE, read of uffd_msg).
 *
 * Real faults are raised by a worker thread that maps the memfd and touches it, while the main thread reads the
 * uffd (through a Poller) and resolves the fault at the worker's address (the front-end role, as QEMU does for a
 * vhost-user back-end in postcopy). The main thread itself never touches a registered page that may be missing:
 * it would block forever. Every test closes the uffd in its cleanup, which wakes any still-blocked faulter, and
 * then terminates the worker. Requires `npm run build:native`, root (or vm.unprivileged_userfaultfd=1).
 */
import test from 'ava';
import { openSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import {
  DEFAULT_NATIVE_PATH, native, UFFD_FEATURE, UFFD_IOCTL, UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE,
} from '../../native/index.ts';
import type { Fd, SysError } from '../../native/index.ts';
import { BPAGE, PAGE, cleanup, mapped, memfd, openUffd, pattern, stillPending, tick } from '../helpers/uffd.ts';

const has = (mask: bigint, bit: bigint) => (mask & (1n << bit)) !== 0n;
const code = (e: unknown) => (e as SysError).code;


/** /proc/self/maps lines of memfd `name`: [start, end) of each VMA. */
function vmasOf(name: string): [bigint, bigint][] {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `))
    .map((l) => l.split(' ')[0]!.split('-').map((h) => BigInt(`0x${h}`)) as [bigint, bigint]);
}

/** Rss in kB of the VMA starting at `start` (/proc/self/smaps). */
function rssKb(start: bigint): number {
  const smaps = readFileSync('/proc/self/smaps', 'utf8');
  const head = new RegExp(`^${start.toString(16)}-[0-9a-f]+ .*$`, 'm').exec(smaps);
  if (head === null) throw new Error(`no VMA at 0x${start.toString(16)}`);
  const rss = /^Rss:\s+(\d+) kB$/m.exec(smaps.slice(head.index))?.[1];
  return Number(rss);
}



// The worker is plain CommonJS (eval) so it needs no loader; it loads the same addon (N-API modules are
// context aware) and runs one command per message, replying when done. A 'read'/'write' command may block in
// the kernel on a userfault until the main thread resolves it.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const n = require(workerData.addonPath);
const { uffd, memfd, size } = workerData;
let ab;
parentPort.on('message', (m) => {
  try {
    let r = {};
    switch (m.op) {
      case 'map': ab = n.mmap(memfd, 0, size, true); r = { address: n.mmapAddress(ab) }; break;
      case 'register': r = { ioctls: n.uffdRegister(uffd, ab, m.offset, m.byteLen, m.mode) }; break;
      case 'unregister': n.uffdUnregister(uffd, ab, m.offset, m.byteLen); break;
      case 'protect': n.uffdWriteProtect(uffd, ab, m.offset, m.byteLen, true); break;
      case 'read': r = { bytes: Array.from(new Uint8Array(ab, m.offset, m.byteLen)) }; break;
      case 'write': new Uint8Array(ab)[m.offset] = m.value; break;
      case 'munmap': n.munmap(ab); break;
    }
    parentPort.postMessage(r);
  } catch (e) {
    parentPort.postMessage({ error: { code: e.code, message: e.message } });
  }
});`;

type Reply = { address?: bigint; ioctls?: bigint; bytes?: number[]; error?: { code: string; message: string } };

function startWorker(onCleanup: (s: () => unknown) => void, uffd: Fd, memfd: Fd, size: number) {
  const worker = new Worker(WORKER, { eval: true, workerData: { addonPath: DEFAULT_NATIVE_PATH, uffd, memfd, size } });
  const waiting: ((r: Reply) => void)[] = [];
  let failure: unknown;
  worker.on('message', (r: Reply) => waiting.shift()?.(r));
  worker.on('error', (e) => (failure = e));
  onCleanup(() => worker.terminate());
  return {
    /** Sends one command; resolves with its reply (rejects on an error reply). */
    call(cmd: Record<string, unknown>): Promise<Reply> {
      if (failure !== undefined) return Promise.reject(failure);
      const p = new Promise<Reply>((resolve, reject) =>
        waiting.push((r) => (r.error ? reject(Object.assign(new Error(r.error.message), r.error)) : resolve(r))));
      worker.postMessage(cmd);
      return p;
    },
  };
}




// ---------------------------------------------------------------- mmapAddress

test('mmapAddress: per-mapping, stable, byte 0 of an unaligned mapping, refused after munmap', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'uffd-addr', 4 * PAGE);
  const a = mapped(later, fd, 0, 2 * PAGE);
  const b = mapped(later, fd, PAGE + 100, 2 * PAGE);
  const addrA = native.mmapAddress(a);
  const addrB = native.mmapAddress(b);
  t.is(typeof addrA, 'bigint');
  t.not(addrA, addrB);
  t.is(native.mmapAddress(a), addrA);
  t.is(addrA % BPAGE, 0n);
  t.is(addrB % BPAGE, 100n);
  // The kernel's view: a VMA starts at each mapping's page-aligned base, i.e. 100 bytes below byte 0 of `b`.
  const starts = vmasOf('uffd-addr').map(([s]) => s);
  t.true(starts.includes(addrA));
  t.true(starts.includes(addrB - 100n));
  // Byte 0 of `b` is file offset PAGE+100: written through `a` at that offset, read through `b` at 0.
  new Uint8Array(a)[PAGE + 100] = 0xa5;
  t.is(new Uint8Array(b)[0], 0xa5);

  native.munmap(b);
  const gone = t.throws(() => native.mmapAddress(b)) as SysError;
  t.is(gone.code, 'EINVAL');
  t.is(gone.syscall, 'mmapAddress');
  t.is(code(t.throws(() => native.mmapAddress(new ArrayBuffer(PAGE)))), 'EINVAL');
  t.is(code(t.throws(() => native.mmapAddress(new Uint8Array(a) as unknown as ArrayBuffer))), 'ERR_INVALID_ARG_TYPE');
});

// ---------------------------------------------------------------- madvise

test('madvise dontneed on a MAP_SHARED memfd drops our pages but keeps the data (page cache)', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'uffd-dontneed', 3 * PAGE);
  const ab = mapped(later, fd, 0, 3 * PAGE);
  const data = pattern(3 * PAGE, 1);
  new Uint8Array(ab).set(data);
  const base = native.mmapAddress(ab);
  t.is(rssKb(base), (3 * PAGE) / 1024);
  t.is(native.madvise(ab, 0, 3 * PAGE, 'dontneed'), 3 * PAGE);
  t.is(rssKb(base), 0, 'page-table entries dropped');
  // (On private anonymous memory these pages would now read back as zeros; shared file pages stay cached.)
  t.deepEqual(new Uint8Array(ab), data);
  t.is(rssKb(base), (3 * PAGE) / 1024, 'mapped again on access');
});

test('madvise remove punches a hole; dontneed/remove align inward, willneed outward', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'uffd-remove', 4 * PAGE);
  const whole = mapped(later, fd, 0, 4 * PAGE);
  const w = new Uint8Array(whole);
  const data = pattern(4 * PAGE, 7);
  w.set(data);

  // Bytes [100, 100 + 2*PAGE) of the file: only the whole page [PAGE, 2*PAGE) is inside it.
  const part = mapped(later, fd, 100, 2 * PAGE);
  t.is(native.madvise(part, 0, 2 * PAGE, 'remove'), PAGE);
  t.deepEqual(w.subarray(0, PAGE), data.subarray(0, PAGE), 'head page kept');
  t.true(w.subarray(PAGE, 2 * PAGE).every((x) => x === 0), 'whole inner page removed from the file');
  t.deepEqual(w.subarray(2 * PAGE), data.subarray(2 * PAGE), 'tail kept');
  t.is(native.fstat(fd).size, 4 * PAGE, 'a hole, not a truncation');
  // A range holding no whole page does nothing.
  t.is(native.madvise(whole, 2 * PAGE + 1, PAGE - 1, 'remove'), 0);
  t.is(native.madvise(whole, 3 * PAGE, 0, 'dontneed'), 0);
  t.deepEqual(w.subarray(2 * PAGE), data.subarray(2 * PAGE));
  // The hint grows outward: [100, 101) of `part` is advised as its whole page.
  t.is(native.madvise(part, 0, 1, 'willneed'), PAGE);
  t.is(native.madvise(part, PAGE - 150, 200, 'willneed'), 2 * PAGE);

  t.is(code(t.throws(() => native.madvise(part, PAGE, PAGE + 1, 'dontneed'))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.madvise(part, -1, 1, 'dontneed'))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.madvise(part, 0, 1, 'free' as 'dontneed'))), 'ERR_INVALID_ARG_VALUE');
  t.is(code(t.throws(() => native.madvise(new ArrayBuffer(PAGE), 0, PAGE, 'dontneed'))), 'EINVAL');
  // The kernel's refusal comes back as a SysError: MADV_REMOVE needs a shared mapping that may be written,
  // which a mapping of a read-only descriptor of the same memfd is not.
  const roFd = openSync(`/proc/self/fd/${fd}`, 'r');
  later(() => native.close(roFd));
  const ro = mapped(later, roFd, 0, PAGE, false);
  const denied = t.throws(() => native.madvise(ro, 0, PAGE, 'remove')) as SysError;
  t.is(denied.code, 'EACCES');
  t.is(denied.errno, -13);
  t.is(denied.syscall, 'madvise');
});

// ---------------------------------------------------------------- userfaultfd, main thread only

test('userfaultfd + uffdApi report ioctls and features; a second handshake is refused', (t) => {
  const later = cleanup(t);
  const fd = native.userfaultfd(false);
  later(() => native.close(fd));
  const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
  t.not(flags & 0o2000000, 0, 'O_CLOEXEC');
  t.is(flags & 0o4000, 0, 'blocking as asked');
  const api = native.uffdApi(fd, 0n);
  for (const bit of [UFFD_IOCTL.api, UFFD_IOCTL.register, UFFD_IOCTL.unregister]) t.true(has(api.ioctls, bit));
  t.false(has(api.ioctls, UFFD_IOCTL.copy), 'range ioctls come with a registration');
  t.not(api.features & UFFD_FEATURE.missingShmem, 0n);
  const again = t.throws(() => native.uffdApi(fd, 0n)) as SysError;
  t.is(again.code, 'EINVAL');
  t.is(again.syscall, 'ioctl');

  const nb = native.userfaultfd(true);
  later(() => native.close(nb));
  const nbFlags = parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${nb}`, 'utf8'))![1]!, 8);
  t.not(nbFlags & 0o4000, 0, 'O_NONBLOCK');
  t.is(code(t.throws(() => native.uffdApi(nb, 1n << 62n))), 'EINVAL', 'unknown feature bit');
});

test('uffdCopy/uffdZeropage/uffdWake relative to our own registered mapping; range checks throw', (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'uffd-self', 4 * PAGE);
  const reg = mapped(later, fd, 0, 4 * PAGE);
  const plain = new Uint8Array(mapped(later, fd, 0, 4 * PAGE)); // unregistered: reading it never faults
  const ioctls = native.uffdRegister(uffd.fd, reg, 0, 3 * PAGE, 'missing');
  for (const bit of [UFFD_IOCTL.copy, UFFD_IOCTL.zeropage, UFFD_IOCTL.wake]) t.true(has(ioctls, bit));
  t.false(has(ioctls, UFFD_IOCTL.continue), 'continue only for minor registrations');

  const src = pattern(PAGE, 3);
  t.is(native.uffdCopy(uffd.fd, reg, PAGE, src), PAGE);
  // Checked through the plain mapping first: had the copy not happened, this allocates the page instead of
  // leaving a missing page that would block the main thread below.
  t.deepEqual(plain.subarray(PAGE, 2 * PAGE), src);
  t.deepEqual(new Uint8Array(reg, PAGE, PAGE), src);
  const exists = t.throws(() => native.uffdCopy(uffd.fd, reg, PAGE, src)) as SysError;
  t.is(exists.code, 'EEXIST');
  t.is(exists.syscall, 'ioctl');
  t.regex(exists.message, /UFFDIO_COPY/);

  plain[2 * PAGE + 9] = 0; // allocates page 2 through the unregistered mapping
  t.is(code(t.throws(() => native.uffdZeropage(uffd.fd, reg, 2 * PAGE, PAGE))), 'EEXIST');
  t.is(native.uffdZeropage(uffd.fd, reg, 0, PAGE, { dontWake: true }), PAGE);
  t.true(plain.subarray(0, PAGE).every((x) => x === 0));
  t.notThrows(() => native.uffdWake(uffd.fd, reg, 0, 3 * PAGE));
  t.is(uffd.pending(), 0, 'no fault was raised');
  // A range of the mapping that is not registered (page 3): the kernel refuses it.
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, reg, 3 * PAGE, src))), 'ENOENT');

  // Bounds and alignment are checked before any ioctl.
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, reg, 4 * PAGE, src))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.uffdZeropage(uffd.fd, reg, 3 * PAGE, 2 * PAGE))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.uffdWake(uffd.fd, reg, -PAGE, PAGE))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.uffdRegister(uffd.fd, reg, 2 * PAGE, 3 * PAGE, 'missing'))), 'ERR_OUT_OF_RANGE');
  const odd = t.throws(() => native.uffdCopy(uffd.fd, reg, 100, src)) as SysError;
  t.is(odd.code, 'EINVAL');
  t.regex(odd.message, /page aligned/);
  t.is(code(t.throws(() => native.uffdZeropage(uffd.fd, reg, 0, 100))), 'EINVAL');
  t.is(code(t.throws(() => native.uffdZeropage(uffd.fd, reg, 0, 0))), 'EINVAL');
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, reg, 0, new Uint8Array(0)))), 'EINVAL');
  t.is(code(t.throws(() => native.uffdRegister(uffd.fd, reg, 0, PAGE, 'all' as 'missing'))), 'ERR_INVALID_ARG_VALUE');
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, reg, 0, src, { dontWake: 1 as unknown as boolean }))),
    'ERR_INVALID_ARG_TYPE');
  // A mapping whose byte 0 is not page aligned can only name ranges that land on page boundaries.
  const shifted = mapped(later, fd, 100, 2 * PAGE);
  t.is(code(t.throws(() => native.uffdRegister(uffd.fd, shifted, 0, PAGE, 'missing'))), 'EINVAL');
  // Foreign and unmapped buffers.
  t.is(code(t.throws(() => native.uffdWake(uffd.fd, new ArrayBuffer(PAGE), 0, PAGE))), 'EINVAL');
  const gone = native.mmap(fd, 0, PAGE, true);
  native.munmap(gone);
  t.is(code(t.throws(() => native.uffdRegister(uffd.fd, gone, 0, PAGE, 'missing'))), 'EINVAL');
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, gone, 0, src))), 'EINVAL');
  t.is(code(t.throws(() => native.uffdWake(uffd.fd, -1n, 0, PAGE))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.uffdWake(uffd.fd, (1n << 64n) - BPAGE, PAGE, PAGE))), 'ERR_OUT_OF_RANGE');

  native.uffdUnregister(uffd.fd, reg, 0, 3 * PAGE);
  t.is(code(t.throws(() => native.uffdZeropage(uffd.fd, reg, 0, PAGE))), 'ENOENT');
  t.is(native.uffdRead(uffd.fd), null);
});

// ---------------------------------------------------------------- real faults, served from the main thread

test.serial('missing faults of a worker are served with uffdCopy, uffdZeropage, dontWake + uffdWake', async (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const size = 4 * PAGE;
  const fd = memfd(later, 'uffd-missing', size);
  const plain = new Uint8Array(mapped(later, fd, 0, size)); // main's view; pages 0-3 stay untouched until served
  const w = startWorker(later, uffd.fd, fd, size);

  const { address } = await w.call({ op: 'map' });
  t.is(typeof address, 'bigint');
  t.is(address! % BPAGE, 0n);
  t.not(address, native.mmapAddress(plain.buffer as ArrayBuffer));
  const { ioctls } = await w.call({ op: 'register', offset: 0, byteLen: size, mode: 'missing' });
  t.true(has(ioctls!, UFFD_IOCTL.copy) && has(ioctls!, UFFD_IOCTL.zeropage));
  t.is(native.uffdRead(uffd.fd), null);

  // 1. A read of page 0 faults; the worker stays blocked until the copy.
  const read0 = w.call({ op: 'read', offset: 8, byteLen: 4 });
  const f0 = await uffd.next();
  t.is(f0.event, 'pagefault');
  t.is(f0.address, address!, 'the fault is at the address mmapAddress() reported');
  t.is(f0.flags & UFFD_PAGEFAULT_FLAG_WRITE, 0);
  t.is(f0.ptid, 0, 'no UFFD_FEATURE_THREAD_ID');
  t.true(await stillPending(read0, 100));
  const src0 = pattern(PAGE, 11);
  t.is(native.uffdCopy(uffd.fd, f0.address, 0, src0), PAGE);
  t.deepEqual((await read0).bytes, [...src0.subarray(8, 12)]);
  t.deepEqual(plain.subarray(0, PAGE), src0, 'the copy landed in the shared memfd');

  // 2. A write to page 1 faults with the WRITE flag; zeros are placed, then the write completes.
  const write1 = w.call({ op: 'write', offset: PAGE + 5, value: 0x77 });
  const f1 = await uffd.next();
  t.is(f1.address, address! + BPAGE);
  t.not(f1.flags & UFFD_PAGEFAULT_FLAG_WRITE, 0);
  t.is(native.uffdZeropage(uffd.fd, address!, PAGE, PAGE), PAGE);
  await write1;
  const page1 = plain.slice(PAGE, 2 * PAGE);
  t.is(page1[5], 0x77);
  page1[5] = 0;
  t.true(page1.every((x) => x === 0));

  // 3. dontWake: the page is filled but the faulter sleeps until UFFDIO_WAKE.
  const read2 = w.call({ op: 'read', offset: 2 * PAGE, byteLen: 4 });
  const f2 = await uffd.next();
  t.is(f2.address, address! + 2n * BPAGE);
  const src2 = pattern(PAGE, 99);
  t.is(native.uffdCopy(uffd.fd, address!, 2 * PAGE, src2, { dontWake: true }), PAGE);
  t.true(await stillPending(read2, 150), 'not woken by a dontWake copy');
  native.uffdWake(uffd.fd, address!, 2 * PAGE, PAGE);
  t.deepEqual((await read2).bytes, [...src2.subarray(0, 4)]);

  // 4. After unregistering, a missing page (3, never touched) is allocated without a fault.
  await w.call({ op: 'unregister', offset: 0, byteLen: size });
  t.deepEqual((await w.call({ op: 'read', offset: 3 * PAGE, byteLen: 4 })).bytes, [0, 0, 0, 0]);
  await tick(20);
  t.is(uffd.pending(), 0);
  t.is(native.uffdRead(uffd.fd), null);
  await w.call({ op: 'munmap' });
});

test.serial('minor faults are served with uffdContinue; wp faults with uffdWriteProtect', async (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const size = 2 * PAGE;
  const fd = memfd(later, 'uffd-minor', size);
  const plain = new Uint8Array(mapped(later, fd, 0, size));
  const data = pattern(PAGE, 42);
  plain.set(data); // page 0 is in the page cache: a minor fault for any mapping that has not mapped it yet
  const w = startWorker(later, uffd.fd, fd, size);
  const { address } = await w.call({ op: 'map' });

  const { ioctls } = await w.call({ op: 'register', offset: 0, byteLen: PAGE, mode: 'minor' });
  t.true(has(ioctls!, UFFD_IOCTL.continue));
  const read0 = w.call({ op: 'read', offset: 0, byteLen: 4 });
  const f0 = await uffd.next();
  t.is(f0.address, address!);
  t.not(f0.flags & UFFD_PAGEFAULT_FLAG_MINOR, 0);
  t.true(await stillPending(read0, 100));
  plain[0] = 0xee; // the handler may update the page cache before mapping it
  t.is(native.uffdContinue(uffd.fd, address!, 0, PAGE), PAGE);
  t.deepEqual((await read0).bytes, [0xee, ...data.subarray(1, 4)]);

  // Page 1: populate, register 'wp', protect from the worker (relative form), then a write faults.
  await w.call({ op: 'write', offset: PAGE, value: 1 });
  const wp = await w.call({ op: 'register', offset: PAGE, byteLen: PAGE, mode: 'wp' });
  t.true(has(wp.ioctls!, UFFD_IOCTL.writeProtect));
  await w.call({ op: 'protect', offset: PAGE, byteLen: PAGE });
  t.deepEqual((await w.call({ op: 'read', offset: PAGE, byteLen: 1 })).bytes, [1], 'reads do not fault');
  const write1 = w.call({ op: 'write', offset: PAGE, value: 2 });
  const f1 = await uffd.next();
  t.is(f1.address, address! + BPAGE);
  t.not(f1.flags & UFFD_PAGEFAULT_FLAG_WP, 0);
  t.not(f1.flags & UFFD_PAGEFAULT_FLAG_WRITE, 0);
  t.true(await stillPending(write1, 100));
  t.is(plain[PAGE], 1);
  native.uffdWriteProtect(uffd.fd, address!, PAGE, PAGE, false);
  await write1;
  t.is(plain[PAGE], 2);
  await w.call({ op: 'munmap' });
});
