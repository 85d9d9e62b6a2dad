/**
 * What the userfaultfd tests share (native-uffd, native-prefault): the kernel's page size, ordered
 * cleanups, memfds and their mappings, a uffd whose messages a Poller queues, and a "still pending" probe.
 * The main thread plays the frontend: it never touches a registered page that may be missing itself.
 */
import type { ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { native, POLL_READABLE } from '../../native/index.ts';
import type { Fd, UffdMsg } from '../../native/index.ts';

/** The page size of this process's mappings (what UFFDIO_* work in). */
export const PAGE = (() => {
  const kb = /^KernelPageSize:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/smaps', 'utf8'))?.[1];
  if (kb === undefined) throw new Error('no KernelPageSize in /proc/self/smaps');
  return Number(kb) * 1024;
})();
export const BPAGE = BigInt(PAGE);

export type Later = (s: () => unknown) => void;

export const tick = (ms: number) => new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms));

/** Runs cleanups once, in the order given (the uffd must be closed before its memfds go; ava's own order is not that). */
export function cleanup(t: ExecutionContext): Later {
  const steps: (() => unknown)[] = [];
  t.teardown(async () => {
    for (const s of steps.splice(0)) {
      try {
        await s();
      } catch {
        // best effort: the remaining steps must still run
      }
    }
  });
  return (s) => steps.push(s);
}

export function memfd(later: Later, name: string, size: number): Fd {
  const fd = native.memfdCreate(name, false);
  later(() => native.close(fd));
  native.ftruncate(fd, size);
  return fd;
}

export function mapped(later: Later, fd: Fd, offset: number, byteLen: number, writable = true): ArrayBuffer {
  const ab = native.mmap(fd, offset, byteLen, writable);
  later(() => native.munmap(ab));
  return ab;
}

export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** A uffd (non-blocking, API done) whose messages a Poller queues; the Poller, then the fd, closed in the cleanup. */
export function openUffd(later: Later) {
  const fd = native.userfaultfd(true);
  const msgs: UffdMsg[] = [];
  let wake: (() => void) | undefined;
  const poller = new native.Poller(fd, (err) => {
    if (err) throw err;
    for (let m = native.uffdRead(fd); m !== null; m = native.uffdRead(fd)) msgs.push(m);
    wake?.();
  });
  // Poller before fd (the Poller rule); closing the uffd releases the context and wakes blocked faulters.
  later(() => poller.close());
  later(() => native.close(fd));
  const api = native.uffdApi(fd, 0n);
  poller.start(POLL_READABLE);
  return {
    fd,
    api,
    /** The next message, or a rejection after `ms`. */
    async next(ms = 3000): Promise<UffdMsg> {
      const deadline = Date.now() + ms;
      while (msgs.length === 0) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error('no uffd message');
        await Promise.race([new Promise<void>((r) => (wake = r)), tick(left)]);
      }
      return msgs.shift()!;
    },
    pending: () => msgs.length,
  };
}

/** Whether `p` is still pending after `ms`. */
export async function stillPending(p: Promise<unknown>, ms: number): Promise<boolean> {
  return (await Promise.race([p.then(() => 'done'), tick(ms)])) === 'timeout';
}
