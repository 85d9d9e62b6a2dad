/**
 * Judging a recorded trace by its records, not by its printed text: what in a session went wrong.
 *
 * A record counts as a refusal or error when
 * - it is a message record with `error` set (the session sets it on a request it refused, or on a
 *   frame the codec rejected; the proxy on a frame it could not decode), except the session's label
 *   on a successful postcopy memory ack ('postcopy memory ack', which uses the error field as a note);
 * - it is a REPLY_ACK reply (an 8-byte u64 to a request whose only reply is the ack) that is not 0,
 *   in either direction (our NACK to the frontend, or the frontend's NACK of a back-end request);
 * - it is a ring record of a broken ring.
 */
import { messageDef, type TraceRecord } from '../../protocol/index.ts';
import { formatRecord } from '../../protocol/trace.ts';

const REPLY = 0x4;

export function traceProblems(records: readonly TraceRecord[]): string[] {
  const out: string[] = [];
  const t0 = records[0]?.t ?? 0n;
  for (const r of records) {
    if (r.kind === 'ring') {
      if (r.event === 'broken' || r.event === 'err') out.push(formatRecord(r, t0));
      continue;
    }
    if (r.error !== undefined && r.error !== 'postcopy memory ack') {
      out.push(formatRecord(r, t0));
      continue;
    }
    if ((r.flags & REPLY) === 0) continue;
    const def = messageDef(r.channel, r.id);
    const ackOnly = def !== undefined && (typeof def.reply === 'string' || def.replyWhen !== undefined);
    const v = ackValue(r.payload);
    if (ackOnly && v !== null && v !== 0n) {
      out.push(formatRecord(r, t0));
    }
  }
  return out;
}

/** The u64 of a REPLY_ACK payload as decoded ({ value }), or null when the payload is a body. */
function ackValue(p: unknown): bigint | null {
  if (typeof p === 'bigint') return p;
  if (typeof p === 'number') return BigInt(p);
  if (p !== null && typeof p === 'object' && Object.keys(p).length === 1 && typeof (p as { value?: unknown }).value === 'bigint') {
    return (p as { value: bigint }).value;
  }
  return null;
}
