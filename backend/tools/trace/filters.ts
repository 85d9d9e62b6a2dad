/**
 * Record filters for `trace print` / `trace diagram` / `trace export`: by message name, ring, time
 * window (ms relative to the first record of the file) and direction. Pure functions over records.
 */
import { BackendError } from '../../core/errors.ts';
import type { TraceRecord } from '../../../protocol/index.ts';

export interface TraceFilter {
  /** Message names (with or without the VHOST_USER_ prefix, case-insensitive); ring records are dropped when set. */
  messages?: string[];
  /** Ring index: ring records of that queue, and messages whose payload names that index. */
  ring?: number;
  /** Time window in ms relative to the first record (inclusive). */
  fromMs?: number;
  toMs?: number;
  /** 'rx' or 'tx', as recordDirection() defines them. */
  direction?: 'rx' | 'tx';
  /** Only messages ('msg') or only ring events ('ring'). */
  kind?: 'msg' | 'ring';
  /** Only records of this endpoint (socket path, or the proxy's connection label). */
  endpoint?: string;
}

function normName(n: string): string {
  return n.trim().toUpperCase().replace(/^VHOST_USER_/, '').replace(/^BACKEND_/, '');
}

/** The ring index a message is about, if its payload names one (vring state/addr/fd, VRING_KICK ...). */
export function messageRing(payload: unknown): number | null {
  if (payload === null || typeof payload !== 'object') return null;
  const idx = (payload as { index?: unknown }).index;
  if (typeof idx === 'number') return idx;
  if (typeof idx === 'bigint') return Number(idx);
  return null;
}

/**
 * Direction of a record. Messages: 'rx' = sent by the frontend, 'tx' = sent by the backend. Ring
 * records: chains carry their own ('tx' = frame sent by the guest, 'rx' = frame given to the guest);
 * kicks come from the driver ('rx'), calls go to it ('tx'); other ring events have none.
 */
export function recordDirection(rec: TraceRecord): 'rx' | 'tx' | null {
  if (rec.kind !== 'ring') return rec.dir;
  if (rec.event === 'chain') {
    const d = (rec.detail as { dir?: unknown } | undefined)?.dir;
    return d === 'rx' || d === 'tx' ? d : null;
  }
  if (rec.event === 'kick') return 'rx';
  if (rec.event === 'call') return 'tx';
  return null;
}

/**
 * `ring`: the ring a record is about when known from elsewhere (a reply answers the request before it:
 * an ack names no ring, the request did). Defaults to the record's own.
 */
export function makeFilter(f: TraceFilter): (rec: TraceRecord, t0: bigint, ring?: number | null) => boolean {
  const names = f.messages?.length ? new Set(f.messages.map(normName)) : null;
  const from = f.fromMs === undefined ? null : BigInt(Math.round(f.fromMs * 1e6));
  const to = f.toMs === undefined ? null : BigInt(Math.round(f.toMs * 1e6));
  return (rec, t0, ring) => {
    const dt = rec.t - t0;
    if (from !== null && dt < from) return false;
    if (to !== null && dt > to) return false;
    if (f.kind && (rec.kind ?? 'msg') !== f.kind) return false;
    if (f.endpoint !== undefined && rec.endpoint !== f.endpoint) return false;
    if (names) {
      if (rec.kind === 'ring') return false;
      if (!names.has(normName(rec.name))) return false;
    }
    if (f.ring !== undefined) {
      const q = rec.kind === 'ring' ? rec.queue : ring !== undefined ? ring : messageRing(rec.payload);
      if (q !== f.ring) return false;
    }
    if (f.direction && recordDirection(rec) !== f.direction) return false;
    return true;
  };
}

/** Apply a filter to records (times stay relative to the first record of the whole file). */
export function filterRecords(records: readonly TraceRecord[], f: TraceFilter): TraceRecord[] {
  const t0 = records[0]?.t0 ?? records[0]?.t ?? 0n;
  const keep = makeFilter(f);
  // Replies inherit the ring of the request they answer (same channel and id, the latest one).
  const lastReq = new Map<string, number | null>();
  return records.filter((r) => {
    if (r.kind === 'ring') return keep(r, t0);
    const key = `${r.channel}:${r.id}`;
    let ring = messageRing(r.payload);
    if ((r.flags & 0x4) === 0) lastReq.set(key, ring);
    else if (ring === null) ring = lastReq.get(key) ?? null;
    return keep(r, t0, ring);
  });
}

function num(v: string, what: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new BackendError('CLI_USAGE', `${what} must be a number, got '${v}'`);
  return n;
}

/** Build a filter from parsed CLI values (`--message A,B --ring N --from MS --to MS --direction rx|tx --kind msg|ring`). */
export function filterFromArgs(v: {
  message?: string | undefined;
  ring?: string | undefined;
  from?: string | undefined;
  to?: string | undefined;
  direction?: string | undefined;
  kind?: string | undefined;
  endpoint?: string | undefined;
}): TraceFilter {
  const f: TraceFilter = {};
  if (v.endpoint !== undefined) f.endpoint = v.endpoint;
  if (v.message !== undefined) f.messages = v.message.split(',').filter((s) => s.trim() !== '');
  if (v.ring !== undefined) {
    const r = num(v.ring, '--ring');
    if (!Number.isInteger(r) || r < 0) throw new BackendError('CLI_USAGE', `--ring must be a ring index, got '${v.ring}'`);
    f.ring = r;
  }
  if (v.from !== undefined) f.fromMs = num(v.from, '--from');
  if (v.to !== undefined) f.toMs = num(v.to, '--to');
  if (v.direction !== undefined) {
    if (v.direction !== 'rx' && v.direction !== 'tx') throw new BackendError('CLI_USAGE', `--direction must be rx or tx, got '${v.direction}'`);
    f.direction = v.direction;
  }
  if (v.kind !== undefined) {
    if (v.kind !== 'msg' && v.kind !== 'ring') throw new BackendError('CLI_USAGE', `--kind must be msg or ring, got '${v.kind}'`);
    f.kind = v.kind;
  }
  return f;
}
