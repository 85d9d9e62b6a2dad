/**
 * The tracer: a transcript of every message (both directions, decoded) and of ring events, written
 * as a msgpack stream (.vutrace) so that `vhost-user-ts trace print`, conformance rules and replay
 * tests all read the same data. 64-bit fields stay bigint end to end: msgpackr writes a bigint as
 * int64/uint64 and reads those back as bigint (its default int64AsType), so
 * 0xffff_ffff_ffff_ffffn round-trips exactly; plain numbers stay numbers.
 *
 * This is the one protocol module that touches the file system (TraceRecorder / readTrace); the
 * record and format functions are pure.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { Packr, UnpackrStream } from 'msgpackr';
import type { Channel } from './constants.ts';
import type { VhostMessage } from './codec.ts';
import { formatPayload } from './format.ts';
import { requestName } from './messages.ts';

/** One message, received ('rx') or sent ('tx') by us. */
export interface TraceMessageRecord {
  /** Optional when recording (the recorder fills it in); always 'msg' when read back. */
  kind?: 'msg';
  /** process.hrtime.bigint() at the time of the event. */
  t: bigint;
  /** Set by readTrace(): `t` of the file's first record, so formatRecord(rec) can print relative times. */
  t0?: bigint;
  dir: 'rx' | 'tx';
  /** Which connection, when one trace holds several (e.g. the socket path). */
  endpoint?: string;
  channel: Channel;
  id: number;
  name: string;
  flags: number;
  /** Decoded payload (bigints, numbers, Uint8Arrays); raw bytes when decoding failed. */
  payload: unknown;
  fdCount: number;
  /**
   * What each attached fd was, when the recorder could tell (the proxy looks: 'memfd', 'eventfd',
   * 'socket', 'file', 'anon:<name>', 'other'); replay creates fresh fds of these kinds.
   */
  fdKinds?: string[];
  /** Set when the message was refused (decode error or handler error): "CODE: message". */
  error?: string;
}

/** Something that happened on a ring outside the socket (kick seen, call sent, ring started ...). */
export interface TraceRingRecord {
  kind: 'ring';
  t: bigint;
  /** Set by readTrace(), as for messages. */
  t0?: bigint;
  endpoint?: string;
  queue: number;
  event: 'kick' | 'call' | 'err' | 'start' | 'stop' | 'enable' | 'disable' | 'broken' | 'chain' | (string & {});
  /** For event 'chain': a RingChainDetail. */
  detail?: unknown;
}

/**
 * Detail of a 'chain' ring event: one descriptor chain the device consumed. `dir` 'tx' is a frame the
 * guest sent (TX ring), 'rx' a frame written into the guest's RX buffers. `frame` holds the first
 * bytes of the Ethernet frame (virtio-net header excluded), at most the recorder's snap length.
 */
export interface RingChainDetail {
  dir: 'tx' | 'rx';
  head: number;
  descs: number;
  /** Total bytes of the chain (TX: readable bytes incl. the net header; RX: bytes written). */
  len: number;
  /** Length of the Ethernet frame carried (without the virtio-net header). */
  frameLen: number;
  frame: Uint8Array;
}

export type TraceRecord = TraceMessageRecord | TraceRingRecord;

/** First record of every trace file. */
export interface TraceHeader {
  kind: 'header';
  format: 'vutrace';
  version: 1;
  t: bigint;
  /** Wall clock (ns since the epoch) at `t`, to turn record times into dates (pcapng). Optional: older files lack it. */
  wallNs?: bigint;
  /** What wrote the file ('net', 'proxy'). */
  source?: string;
}

const packr = new Packr({
  useRecords: false,
  largeBigIntToFloat: false,
  useBigIntExtension: true,
  // Keep Uint8Array as msgpack bin; decode gives Buffer (a Uint8Array).
});

function strip<T extends object>(o: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as T;
}

/** Build the trace record of a decoded (rx) or encoded-then-decoded (tx) message. */
export function messageRecord(dir: 'rx' | 'tx', msg: VhostMessage, t: bigint = process.hrtime.bigint(), error?: string): TraceMessageRecord {
  return strip({
    kind: 'msg' as const,
    t,
    dir,
    channel: msg.channel,
    id: msg.id,
    name: msg.name,
    flags: msg.flags,
    payload: msg.payload,
    fdCount: msg.fds.length,
    error,
  });
}

/** Record of a frame that could not be decoded (payload kept raw). */
export function rawRecord(
  dir: 'rx' | 'tx',
  channel: Channel,
  frame: { request: number; flags: number; payload: Uint8Array; fdCount: number },
  error: string,
  t: bigint = process.hrtime.bigint(),
): TraceMessageRecord {
  return {
    kind: 'msg',
    t,
    dir,
    channel,
    id: frame.request,
    name: requestName(channel, frame.request),
    flags: frame.flags,
    payload: frame.payload,
    fdCount: frame.fdCount,
    error,
  };
}

export function ringRecord(queue: number, event: TraceRingRecord['event'], detail?: unknown, t: bigint = process.hrtime.bigint()): TraceRingRecord {
  return strip({ kind: 'ring' as const, t, queue, event, detail });
}

/** A 'chain' ring record (see RingChainDetail); `frame` is copied, so callers may pass a live view. */
export function chainRecord(queue: number, d: RingChainDetail, t: bigint = process.hrtime.bigint()): TraceRingRecord {
  return { kind: 'ring', t, queue, event: 'chain', detail: { ...d, frame: d.frame.slice() } };
}

/** The RingChainDetail of a 'chain' record, or null for any other record (or a malformed one). */
export function chainDetail(rec: TraceRecord): RingChainDetail | null {
  if (rec.kind !== 'ring' || rec.event !== 'chain') return null;
  const d = rec.detail as Partial<RingChainDetail> | null | undefined;
  if (!d || (d.dir !== 'tx' && d.dir !== 'rx') || !(d.frame instanceof Uint8Array)) return null;
  return d as RingChainDetail;
}

/** Appends records to a .vutrace file. */
export class TraceRecorder {
  private readonly out: WriteStream;
  private closed: Promise<void> | null = null;
  private error: Error | null = null;

  constructor(readonly path: string, opts: { source?: string } = {}) {
    this.out = createWriteStream(path);
    this.out.on('error', (e) => {
      this.error = e;
    });
    const header: TraceHeader = {
      kind: 'header',
      format: 'vutrace',
      version: 1,
      t: process.hrtime.bigint(),
      wallNs: BigInt(Date.now()) * 1_000_000n,
      ...(opts.source ? { source: opts.source } : {}),
    };
    this.out.write(packr.pack(header));
  }

  record(rec: TraceRecord): void {
    if (this.closed || this.error) return;
    const { t0: _t0, ...r } = rec;
    this.out.write(packr.pack(strip(r.kind === undefined ? { kind: 'msg', ...r } : r)));
  }

  /** Flush and close; rejects if the file could not be written. */
  close(): Promise<void> {
    this.closed ??= new Promise<void>((resolve, reject) => {
      this.out.end(() => (this.error ? reject(this.error) : resolve()));
    });
    return this.closed;
  }
}

function isRecord(x: unknown): x is TraceRecord {
  if (x === null || typeof x !== 'object') return false;
  const k = (x as { kind?: unknown }).kind;
  return (k === 'msg' || k === 'ring') && typeof (x as { t?: unknown }).t === 'bigint';
}

/** Stream the records of a .vutrace file (the header is checked and skipped). */
export async function* readTrace(path: string): AsyncGenerator<TraceRecord> {
  const stream = createReadStream(path).pipe(new UnpackrStream({ useRecords: false }));
  let first = true;
  let t0: bigint | undefined;
  for await (const item of stream as AsyncIterable<unknown>) {
    if (first) {
      first = false;
      const h = item as Partial<TraceHeader> | null;
      if (!h || h.kind !== 'header' || h.format !== 'vutrace') throw new Error(`${path}: not a vutrace file`);
      if (h.version !== 1) throw new Error(`${path}: unsupported vutrace version ${String(h.version)}`);
      continue;
    }
    if (!isRecord(item)) continue;
    t0 ??= item.t;
    yield { ...item, t0 };
  }
}

/** The header of a .vutrace file (throws if the file is not a trace). */
export async function readTraceHeader(path: string): Promise<TraceHeader> {
  const stream = createReadStream(path).pipe(new UnpackrStream({ useRecords: false }));
  for await (const item of stream as AsyncIterable<unknown>) {
    stream.destroy();
    const h = item as Partial<TraceHeader> | null;
    if (!h || h.kind !== 'header' || h.format !== 'vutrace') throw new Error(`${path}: not a vutrace file`);
    return h as TraceHeader;
  }
  throw new Error(`${path}: empty file, not a vutrace file`);
}

/** All records of a .vutrace file. */
export async function readTraceFile(path: string): Promise<TraceRecord[]> {
  const out: TraceRecord[] = [];
  for await (const r of readTrace(path)) out.push(r);
  return out;
}

/**
 * One line per record: time relative to `t0` (ms), direction arrow, name, fields, fds, error.
 *   +     0.000ms  rx → GET_FEATURES fds=0
 *   +     0.120ms  tx ← GET_FEATURES reply 0x140000000 <PROTOCOL_FEATURES|VERSION_1> fds=0
 */
export function formatRecord(rec: TraceRecord, t0: bigint = rec.t0 ?? rec.t): string {
  const dt = Number(rec.t - t0) / 1e6;
  const time = `+${dt.toFixed(3).padStart(10)}ms`;
  const where = rec.endpoint ? ` [${rec.endpoint}]` : '';
  if (rec.kind === 'ring') {
    const c = chainDetail(rec);
    if (c) {
      return `${time}${where}  ring q${rec.queue} chain ${c.dir} head=${c.head} descs=${c.descs} len=${c.len} frame=${c.frameLen} ${hexBytes(c.frame, 24)}`;
    }
    const detail = rec.detail === undefined ? '' : ` ${formatPayload('', rec.detail)}`;
    return `${time}${where}  ring q${rec.queue} ${rec.event}${detail}`;
  }
  const reply = (rec.flags & 0x4) !== 0;
  const arrow = rec.dir === 'rx' ? 'rx →' : 'tx ←';
  const parts = [`${time}${where}  ${arrow} ${rec.channel === 'backend' ? 'BACKEND_' : ''}${rec.name}`];
  if (reply) parts.push('reply');
  if (rec.flags & 0x8) parts.push('need_reply');
  const p = formatPayload(rec.name, rec.payload, reply);
  if (p) parts.push(p);
  parts.push(rec.fdKinds?.length ? `fds=${rec.fdCount}(${rec.fdKinds.join(',')})` : `fds=${rec.fdCount}`);
  if (rec.error) parts.push(`!! ${rec.error}`);
  return parts.join(' ');
}

function hexBytes(b: Uint8Array, max: number): string {
  let s = '';
  for (let i = 0; i < Math.min(b.length, max); i++) s += b[i]!.toString(16).padStart(2, '0');
  return b.length > max ? `${s}…` : s;
}

/** Format a whole transcript, times relative to its first record. */
export function formatTrace(records: readonly TraceRecord[]): string[] {
  const t0 = records[0]?.t ?? 0n;
  return records.map((r) => formatRecord(r, t0));
}
