/**
 * Live migration of a test guest between two QEMU 7.2 processes on this machine (docs/devel/migration.rst,
 * qapi/migration.json), each on its own vhost-user backend:
 *
 * ```ts
 * const src = await startMigratable({ ...guestOpts, sock: srcSock, qmp: join(dir, 'src.qmp') });
 * // ... guest boots, traffic flows ...
 * const dst = await startMigratable({ ...guestOpts, sock: dstSock, qmp: join(dir, 'dst.qmp'), incoming: 'defer' });
 * const r = await migrate(src.qmp, dst.qmp, { mode: 'postcopy', uri: `unix:${join(dir, 'mig.sock')}` });
 * // r.status === 'completed', r.downtimeMs, r.totalTimeMs, r.postcopyRequests, ...
 * ```
 *
 * What vhost-user needs from QEMU's side (vhost-user.rst "Migration"; QEMU hw/virtio/vhost.c, vhost-user.c):
 * - Guest RAM shared with the backend (run-guest.sh: memory-backend-memfd share=on) on both sides.
 * - Precopy: the backend offers VHOST_F_LOG_ALL and the LOG_SHMFD protocol feature, else QEMU installs a
 *   migration blocker ("vhost lacks VHOST_F_LOG_ALL"). During the migration QEMU shares a dirty bitmap
 *   (SET_LOG_BASE with a memfd), turns logging on (SET_FEATURES |LOG_ALL, SET_VRING_ADDR with the log flag)
 *   and the backend marks every guest page it writes. At the switchover QEMU stops the device
 *   (GET_VRING_BASE) and the destination starts it from the saved ring positions (SET_VRING_BASE).
 * - Postcopy: capability `postcopy-ram` on BOTH sides; setting it makes QEMU probe every vhost-user device for
 *   the PAGEFAULT protocol feature (else "vhost-user backend not capable of postcopy"). On the destination
 *   QEMU sends POSTCOPY_ADVISE (the backend answers with its own userfaultfd), POSTCOPY_LISTEN, a
 *   SET_MEM_TABLE whose reply carries the backend's mapping addresses, and POSTCOPY_END when all pages are in.
 *   A backend touching a page that has not arrived yet blocks on its userfaultfd until QEMU places the page.
 * - Announce: after the switchover the destination QEMU announces the guest (qemu_announce_self). A Linux guest
 *   that acked VIRTIO_NET_F_GUEST_ANNOUNCE sends gratuitous ARPs itself (through the destination backend), so
 *   a bridge in front of both backends learns the guest MAC on the destination port; without GUEST_ANNOUNCE
 *   QEMU asks the backend to inject a RARP (SEND_RARP, protocol feature RARP).
 *
 * MIGRATION events need the `events` capability; `migrate()` sets it on both sides and also polls
 * `query-migrate`, so a missed event only costs a poll period.
 */
import createDebug from 'debug';
import { startGuest, type Guest, type GuestOptions } from './qemu.ts';
import { connectQmp, QmpError, type Qmp, type QmpEvent } from './qmp.ts';

const log = createDebug('vhost:test:migration');

export type MigrationMode = 'precopy' | 'postcopy';

/** A guest plus its QMP connection. */
export interface Migratable {
  guest: Guest;
  qmp: Qmp;
}

/**
 * Starts a QEMU (source, or destination when `incoming` is set) with a QMP socket and connects to it. For a
 * destination use `incoming: 'defer'`: `migrate()` sets the capabilities first, then starts listening.
 */
export async function startMigratable(opts: GuestOptions & { qmp: string }, connectTimeoutMs = 15_000): Promise<Migratable> {
  const guest = startGuest(opts);
  let qmp: Qmp;
  try {
    qmp = await connectQmp(opts.qmp, {
      timeoutMs: connectTimeoutMs,
      label: opts.incoming ? 'dst' : 'src',
      alive: () => guest.exitInfo === undefined,
    });
  } catch (e) {
    await guest.kill();
    throw new QmpError(`${(e as Error).message}\n--- qemu ---\n${guest.tail(1500)}`, (e as QmpError).code ?? 'QMP_CONNECT');
  }
  opts.teardown?.(async () => qmp.close());
  return { guest, qmp };
}

export interface MigrateOptions {
  mode: MigrationMode;
  /** Where the destination listens and the source connects, e.g. `unix:/tmp/x/mig.sock`. */
  uri: string;
  /** Precopy bandwidth cap, bytes/s (QMP max-bandwidth; QEMU's default is 128 MiB/s). */
  maxBandwidth?: number;
  /**
   * Bandwidth of the background page stream once postcopy runs, bytes/s (max-postcopy-bandwidth; default 0 =
   * unlimited). Pages the destination faults on are requested urgently and bypass the limit, so a low value
   * keeps pages missing for longer: the guest and the destination backend really fault on them.
   */
  maxPostcopyBandwidth?: number;
  /** downtime-limit, ms (QEMU default 300). */
  downtimeLimitMs?: number;
  /**
   * Postcopy: also set `postcopy-preempt` (QEMU ≥ 7.1): urgent page requests travel on a second channel, so they
   * are not queued behind the rate-limited background stream.
   */
  preempt?: boolean;
  /** Postcopy: switch to postcopy after this long in precopy (default 1000 ms). */
  postcopyAfterMs?: number;
  /** Overall limit for the migration to complete. Default 60 s. */
  timeoutMs?: number;
  /** Poll period of query-migrate. Default 200 ms. */
  pollMs?: number;
}

/** The source's `query-migrate` answer (the fields we use). */
export interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    duplicate: number;
    normal: number;
    'dirty-sync-count': number;
    'postcopy-requests': number;
    'mbps': number;
  };
}

export interface MigrationResult {
  mode: MigrationMode;
  status: string;
  /** Source statuses in the order seen (events and polls), e.g. setup, active, postcopy-active, completed. */
  statuses: string[];
  /** QEMU's numbers: total-time, downtime (precopy: VM stopped; postcopy: until the destination ran), setup-time. */
  totalTimeMs: number;
  downtimeMs: number;
  setupTimeMs: number;
  transferredBytes: number;
  /** Pages the destination asked for out of order (postcopy faults, guest or backend). */
  postcopyRequests: number;
  dirtySyncCount: number;
  /** Host times (ms, Date.now() clock): `migrate` issued, source VM stopped (STOP event), destination VM running
   *  (RESUME event; both QEMU's event timestamps), migrate-start-postcopy issued (if), source / destination seen
   *  `completed` by our polls, destination `completed` (its MIGRATION event's timestamp: postcopy ended). */
  t: { start: number; srcStop?: number; dstResume?: number; postcopy?: number; srcDone: number; dstDone: number; dstCompleted?: number };
  srcInfo: MigrateInfo;
}

export class MigrationError extends Error {
  constructor(
    message: string,
    readonly code: 'MIGRATION_FAILED' | 'MIGRATION_TIMEOUT' | 'MIGRATION_NOT_POSTCOPY',
    readonly info?: MigrateInfo,
  ) {
    super(message);
    this.name = 'MigrationError';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FINAL = new Set(['completed', 'failed', 'cancelled']);

async function setCaps(q: Qmp, caps: Record<string, boolean>): Promise<void> {
  await q.execute('migrate-set-capabilities', {
    capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
  });
}

/**
 * Migrates the guest behind `src` into the QEMU behind `dst` (started with `incoming: 'defer'`) and waits until
 * both sides report `completed`. Throws MigrationError with QEMU's error-desc on failed/cancelled, on timeout,
 * and (MIGRATION_NOT_POSTCOPY) when mode is postcopy but precopy finished before the switch could be made.
 */
export async function migrate(src: Qmp, dst: Qmp, o: MigrateOptions): Promise<MigrationResult> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const pollMs = o.pollMs ?? 200;
  const postcopy = o.mode === 'postcopy';
  // Capabilities on both sides before anything starts (migration.json: postcopy-ram "must be set on both the
  // source and destination"). Setting postcopy-ram is where QEMU probes the vhost-user backend for PAGEFAULT.
  const caps = { events: true, ...(postcopy ? { 'postcopy-ram': true } : {}), ...(postcopy && o.preempt ? { 'postcopy-preempt': true } : {}) };
  await setCaps(dst, caps);
  await setCaps(src, caps);
  const params: Record<string, number> = {};
  if (o.maxBandwidth !== undefined) params['max-bandwidth'] = o.maxBandwidth;
  if (o.maxPostcopyBandwidth !== undefined) params['max-postcopy-bandwidth'] = o.maxPostcopyBandwidth;
  if (o.downtimeLimitMs !== undefined) params['downtime-limit'] = o.downtimeLimitMs;
  if (Object.keys(params).length) await src.execute('migrate-set-parameters', params);
  // migrate-incoming returns once the destination listens (socket bound), so `migrate` can connect at once.
  await dst.execute('migrate-incoming', { uri: o.uri });

  const srcMark = src.mark();
  const dstMark = dst.mark();
  const statuses: string[] = [];
  // Events and polls interleave (a poll answer may be older than an event already seen): keep first sightings.
  const note = (s: string | undefined) => {
    if (s && !statuses.includes(s)) {
      statuses.push(s);
      log('source status %s', s);
    }
  };
  const t: MigrationResult['t'] = { start: Date.now(), srcDone: 0, dstDone: 0 };
  await src.execute('migrate', { uri: o.uri });
  const deadline = t.start + timeoutMs;

  const srcEvents = () => src.events.slice(srcMark);
  let seen = srcMark;
  const srcStatusEvent = () => {
    for (; seen < src.events.length; seen++) {
      const e = src.events[seen]!;
      if (e.event === 'MIGRATION') note(String(e.data['status']));
    }
  };
  let info: MigrateInfo = {};
  let postcopyIssued = false;
  for (;;) {
    info = await src.execute<MigrateInfo>('query-migrate');
    srcStatusEvent();
    note(info.status);
    const st = info.status ?? 'none';
    // postcopy-paused: the migration stream broke after the switch (the destination failed or the channel
    // dropped); without `migrate-recover` it never completes, so fail at once with what QEMU knows.
    if (st === 'failed' || st === 'cancelled' || st === 'postcopy-paused') {
      throw new MigrationError(`migration ${st}: ${info['error-desc'] ?? '(no error-desc)'}; statuses ${statuses.join(' → ')}`, 'MIGRATION_FAILED', info);
    }
    if (st === 'completed') break;
    if (postcopy && !postcopyIssued && st === 'active' && Date.now() - t.start >= (o.postcopyAfterMs ?? 1000)) {
      postcopyIssued = true;
      t.postcopy = Date.now();
      log('migrate-start-postcopy after %d ms, %o', t.postcopy - t.start, info.ram);
      await src.execute('migrate-start-postcopy');
    }
    if (Date.now() > deadline) {
      throw new MigrationError(`migration not completed in ${timeoutMs} ms: ${JSON.stringify(info)}; statuses ${statuses.join(' → ')}`, 'MIGRATION_TIMEOUT', info);
    }
    await sleep(pollMs);
  }
  t.srcDone = Date.now();
  srcStatusEvent();
  if (postcopy && !statuses.includes('postcopy-active')) {
    throw new MigrationError(
      `mode postcopy but the migration completed in precopy (statuses ${statuses.join(' → ')}): lower maxBandwidth or postcopyAfterMs`,
      'MIGRATION_NOT_POSTCOPY',
      info,
    );
  }
  // The destination: its own status goes to completed once it has every page (postcopy) or loaded the state.
  for (;;) {
    const d = await dst.execute<MigrateInfo>('query-migrate');
    if (d.status === 'completed') break;
    if (d.status === 'failed' || d.status === 'cancelled') {
      throw new MigrationError(`destination migration ${d.status}: ${d['error-desc'] ?? ''}`, 'MIGRATION_FAILED', d);
    }
    if (Date.now() > deadline) {
      throw new MigrationError(`destination not completed in ${timeoutMs} ms: ${JSON.stringify(d)}`, 'MIGRATION_TIMEOUT', d);
    }
    await sleep(pollMs);
  }
  t.dstDone = Date.now();
  // QEMU's own event timestamps (host realtime clock, like Date.now()): when the source VM stopped and the
  // destination VM started running, without our polling latency.
  const when = (e: QmpEvent) => (e.timestamp ? e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000 : e.receivedAt);
  const stop = srcEvents().find((e) => e.event === 'STOP');
  if (stop) t.srcStop = when(stop);
  const resume = dst.events.slice(dstMark).find((e) => e.event === 'RESUME');
  if (resume) t.dstResume = when(resume);
  const dstCompleted = dst.events.slice(dstMark).find((e) => e.event === 'MIGRATION' && e.data['status'] === 'completed');
  if (dstCompleted) t.dstCompleted = when(dstCompleted);
  const r: MigrationResult = {
    mode: o.mode,
    status: info.status ?? 'none',
    statuses,
    totalTimeMs: info['total-time'] ?? -1,
    downtimeMs: info.downtime ?? -1,
    setupTimeMs: info['setup-time'] ?? -1,
    transferredBytes: info.ram?.transferred ?? -1,
    postcopyRequests: info.ram?.['postcopy-requests'] ?? 0,
    dirtySyncCount: info.ram?.['dirty-sync-count'] ?? 0,
    t,
    srcInfo: info,
  };
  log('migration done: %o', { ...r, srcInfo: undefined });
  return r;
}

/** One-line summary for test logs. */
export function describeMigration(r: MigrationResult): string {
  const rel = (x?: number) => (x === undefined ? '-' : `+${Math.round(x - r.t.start)}ms`);
  return (
    `${r.mode}: ${r.statuses.join('→')}; total ${r.totalTimeMs} ms, downtime ${r.downtimeMs} ms, setup ${r.setupTimeMs} ms, ` +
    `${(r.transferredBytes / 1048576).toFixed(1)} MiB, dirty syncs ${r.dirtySyncCount}, postcopy requests ${r.postcopyRequests}; ` +
    `src STOP ${rel(r.t.srcStop)}, postcopy ${rel(r.t.postcopy)}, dst RESUME ${rel(r.t.dstResume)}, src done ${rel(r.t.srcDone)}, dst done ${rel(r.t.dstDone)}`
  );
}
