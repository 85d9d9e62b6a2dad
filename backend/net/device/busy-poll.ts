/**
 * Busy polling of TX rings after they ran empty (spec-notes/performance.md, step 3).
 *
 * Without it a drained TX ring re-enables notifications at once, so in a latency-bound loop (a few
 * bursts in flight) the driver kicks for every burst: an eventfd write in the guest or frontend, and
 * here epoll + eventfd read + a trip through the event loop per burst. DPDK's vhost PMD never
 * re-enables notifications at all (it polls forever). We poll for a short window instead: a ring
 * that ran empty keeps notifications disabled and is polled (one atomic load of avail.idx / the next
 * descriptor's flags, no syscall) by one loop shared by every device of the process, so two guests
 * switched through a port pair are served alternately. A ring idle for longer than the window gets
 * its notifications back (with the race re-check of virtio v1.2 2.7.10 / 2.8.x) and leaves the loop;
 * an idle backend therefore stops polling after one window and sleeps in epoll as before.
 *
 * Cost: up to one window of CPU per burst of a trickle (e.g. 50 us per frame of a 1 kpps flow, 5 %
 * of a core); nothing when idle. The loop yields to the event loop every SLICE_MS so vhost-user
 * messages, kicks of other rings and timers are served (at most SLICE_MS late).
 */
import { performance } from 'node:perf_hooks';

/** What the poll loop needs from a device. */
export interface PolledRing {
  /** Still the ring the device polls (false after a stop / reset / memory table change). */
  pollValid(index: number): boolean;
  /** A chain is available (no side effects besides reading the ring). */
  pollAvailable(index: number): boolean;
  /** Process the ring (notifications stay disabled when it runs empty). */
  pollProcess(index: number): void;
  /** Leave polling: re-enable notifications; true when chains raced in (the caller processes them). */
  pollStop(index: number): boolean;
}

/** The loop yields to the event loop after this long (vhost-user messages, kicks of other rings). */
const SLICE_MS = 1;

interface Entry {
  dev: PolledRing;
  index: number;
  /** performance.now() of the last chain seen. */
  lastWork: number;
}

export class BusyPoller {
  private entries: Entry[] = [];
  private scheduled = false;
  /** Inside run(): the loop's current time (watch() called from a poll needs no clock read of its own). */
  private running = false;
  private loopNow = 0;

  constructor(private readonly windowMs: number) {}

  /** Polls `dev`'s ring `index` (it just ran empty with notifications disabled) until idle for the window. */
  watch(dev: PolledRing, index: number): void {
    // performance.now() returns a boxed number when it is not inlined: read once per loop turn instead.
    const now = this.running ? this.loopNow : performance.now();
    const list = this.entries;
    // An index loop: for-of would allocate an iterator per call (once per burst on a busy ring).
    for (let i = 0; i < list.length; i++) {
      const e = list[i]!;
      if (e.dev === dev && e.index === index) {
        e.lastWork = now;
        return this.schedule();
      }
    }
    this.entries.push({ dev, index, lastWork: now });
    this.schedule();
  }

  get polling(): number {
    return this.entries.length;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.run);
  }

  private readonly run = (): void => {
    this.scheduled = false;
    const start = performance.now();
    const window = this.windowMs;
    let now = start;
    this.loopNow = now;
    this.running = true;
    try {
      this.loop(start, window, now);
    } finally {
      this.running = false;
    }
  };

  private loop(start: number, window: number, now: number): void {
    while (this.entries.length > 0) {
      const list = this.entries;
      for (let i = 0; i < list.length; i++) {
        const e = list[i]!;
        const d = e.dev;
        if (!d.pollValid(e.index)) {
          // Stopped, broken or waiting for the uplink: never leave a live ring with notifications off.
          list.splice(i--, 1);
          d.pollStop(e.index);
          continue;
        }
        if (d.pollAvailable(e.index)) {
          e.lastWork = now;
          d.pollProcess(e.index);
        } else if (now - e.lastWork >= window) {
          list.splice(i--, 1);
          // Race of 2.7.10: chains made available before the driver saw notifications re-enabled.
          if (d.pollStop(e.index)) d.pollProcess(e.index);
        }
      }
      now = performance.now();
      this.loopNow = now;
      if (now - start >= SLICE_MS) {
        if (this.entries.length > 0) this.schedule();
        return;
      }
    }
  }
}
