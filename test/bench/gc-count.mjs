// Preload for the benchmarked backend (`node --import ./test/bench/gc-count.mjs bin/vhost-user-ts.js ...`):
// counts garbage collections with a PerformanceObserver (entryType 'gc') and measures event-loop
// utilisation, without changing the backend's code.
//
// Output (stderr, one JSON line each, prefixed so the bench can find it among the CLI's status lines):
//   `gc-count: {"tag":"mark",...}`  on SIGUSR2 (the bench sends one at the start and one at the end of its
//                                   measurement window and subtracts);
//   `gc-count: {"tag":"exit",...}`  when the process exits (the CLI exits cleanly on SIGTERM).
// Counters are cumulative since this preload ran: total GCs, by kind, total GC pause time (ms), and the
// event loop's idle/active time (performance.eventLoopUtilization()).
import { PerformanceObserver, constants, performance } from 'node:perf_hooks';

const KIND = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor', // scavenge
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', // mark-compact
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

const counts = { total: 0, minor: 0, major: 0, incremental: 0, weakcb: 0, other: 0, gcMs: 0 };

function add(entries) {
  for (const e of entries) {
    counts.total++;
    const k = KIND[e.detail?.kind ?? e.kind] ?? 'other';
    counts[k]++;
    counts.gcMs += e.duration;
  }
}

const obs = new PerformanceObserver((list) => add(list.getEntries()));
obs.observe({ entryTypes: ['gc'] });

function report(tag) {
  // Entries not yet delivered to the callback (delivery is asynchronous).
  add(obs.takeRecords());
  const elu = performance.eventLoopUtilization();
  const mem = process.memoryUsage();
  const line = {
    tag,
    t: performance.now(),
    ...counts,
    gcMs: Math.round(counts.gcMs * 1000) / 1000,
    eluIdleMs: elu.idle,
    eluActiveMs: elu.active,
    heapUsed: mem.heapUsed,
    external: mem.external,
    arrayBuffers: mem.arrayBuffers,
  };
  process.stderr.write(`gc-count: ${JSON.stringify(line)}\n`);
}

process.on('SIGUSR2', () => report('mark'));
process.on('exit', () => report('exit'));
