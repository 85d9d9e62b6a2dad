/**
 * Table-driven codec: RawFrame -> VhostMessage (decode) and request/reply -> bytes + fds (encode).
 *
 * Security model: the peer is an external, possibly hostile process ("Do not assume received
 * VhostUserMsg fields contain sensible values", DPDK vhost_user.c). decode() checks everything that
 * can be checked without session state, in this order, each failure a ProtocolError with its own
 * code: known request id (PROTO_UNKNOWN_REQUEST), header version (PROTO_BAD_HEADER), payload size
 * against the row's layout (PROTO_BAD_SIZE), the layout's syntactic validate() and the row's
 * check() (PROTO_INVALID_PAYLOAD), the number of fds against the row's fd policy (PROTO_BAD_FDS).
 * Feature gating (`def.requires`) and ring/session state are the session's job.
 *
 * The codec never closes fds: on error the caller still owns `frame.fds` and must close them.
 */
import {
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VRING_NOFD_MASK,
  HEADER_SIZE,
  MAX_PAYLOAD,
  type Channel,
} from './constants.ts';
import { ProtocolError, type ProtocolErrorCode } from './errors.ts';
import { formatPayload } from './format.ts';
import type { RawFrame } from './framer.ts';
import { headerVersion, isReplyFlags, needsReplyFlags, writeHeader } from './header.ts';
import { LayoutSizeError, type Layout, type PayloadError } from './layout.ts';
import {
  messageDef,
  replyBodyLayout,
  requestLayout,
  type FdPolicy,
  type MessageDef,
} from './messages.ts';
import { Payloads, empty } from './payloads.ts';

/** A decoded, syntactically valid message. */
export interface VhostMessage<P = unknown> {
  channel: Channel;
  id: number;
  name: string;
  /** The table row. */
  def: MessageDef;
  flags: number;
  /** NEED_REPLY set on a request (always false on replies). */
  needReply: boolean;
  isReply: boolean;
  /** Decoded payload, typed by `layout`; null for an empty payload. */
  payload: P | null;
  /** Name of the layout the payload was decoded with ('u64' for a REPLY_ACK). */
  layout: string;
  /** Attached fds; the receiver owns them. */
  fds: number[];
}

export interface DecodeOptions {
  /**
   * For a reply to a row with `replyWhen` (SET_MEM_TABLE, ADD_MEM_REG, SET_LOG_BASE): decode as
   * the body or as the REPLY_ACK u64. Default: an 8-byte reply is the ack, anything else the body.
   */
  replyAs?: 'body' | 'ack';
}

function fail(code: ProtocolErrorCode, def: MessageDef | undefined, id: number, flags: number, message: string, cause?: unknown): never {
  throw new ProtocolError(code, message, {
    requestId: id,
    requestName: def?.name ?? `UNKNOWN(${id})`,
    flags,
    ...(cause === undefined ? {} : { cause }),
  });
}

/** Which layout (and fd policy) a message uses; `null` layout = empty payload decoded as null. */
function pick(
  def: MessageDef,
  isReply: boolean,
  size: number,
  payload: unknown,
  replyAs: 'body' | 'ack' | undefined,
): { layout: Layout<unknown>; fds: FdPolicy } {
  if (!isReply) return { layout: requestLayout(def), fds: def.fds };
  if (typeof def.reply === 'string') return { layout: Payloads.u64 as Layout<unknown>, fds: 'none' };
  if (def.replyMayBeEmpty && (size === 0 || payload === null)) return { layout: empty as Layout<unknown>, fds: 'none' };
  if (def.replyWhen) {
    const ack = replyAs === 'ack' || (replyAs === undefined && (size === 8 || typeof payload === 'bigint'));
    if (ack) return { layout: Payloads.u64 as Layout<unknown>, fds: 'none' };
  }
  return { layout: replyBodyLayout(def), fds: def.replyFds };
}

function noFdFlag(payload: unknown): boolean {
  if (payload !== null && typeof payload === 'object') {
    const p = payload as { noFd?: unknown; value?: unknown };
    if (typeof p.noFd === 'boolean') return p.noFd;
    if (typeof p.value === 'bigint') return (p.value & BigInt(VHOST_USER_VRING_NOFD_MASK)) !== 0n;
  }
  return false;
}

/** null when `count` fds satisfy `policy` for this payload, else why not. */
export function checkFdPolicy(policy: FdPolicy, payload: unknown, count: number): string | null {
  let want: number | [number, number];
  switch (policy) {
    case 'none':
      want = 0;
      break;
    case 'one':
      want = 1;
      break;
    case 'optional':
      want = [0, 1];
      break;
    case 'one-unless-nofd':
      want = noFdFlag(payload) ? 0 : 1;
      break;
    case 'per-region':
      want = (payload as { nregions?: number } | null)?.nregions ?? 0;
      break;
  }
  const ok = typeof want === 'number' ? count === want : count >= want[0] && count <= want[1];
  if (ok) return null;
  const expected = typeof want === 'number' ? String(want) : `${want[0]}..${want[1]}`;
  return `${count} fds attached, expected ${expected} (policy '${policy}')`;
}

function validatePayload(def: MessageDef, layout: Layout<unknown>, isReply: boolean, payload: unknown): PayloadError | null {
  if (payload === null && layout.minSize === 0) return null;
  const e = layout.validate(payload);
  if (e) return e;
  if (!isReply && def.check && layout === requestLayout(def)) return def.check(payload);
  return null;
}

/** Decode and syntactically validate one frame received on `channel`. Throws ProtocolError. */
export function decode(channel: Channel, frame: RawFrame, opts: DecodeOptions = {}): VhostMessage {
  const { request: id, flags } = frame;
  const def = messageDef(channel, id);
  if (!def) fail('PROTO_UNKNOWN_REQUEST', undefined, id, flags, `unknown ${channel} request id ${id}`);
  if (headerVersion(flags) !== VHOST_USER_VERSION) {
    fail('PROTO_BAD_HEADER', def, id, flags, `${def.name}: header version ${headerVersion(flags)}, expected 1`);
  }
  const isReply = isReplyFlags(flags);
  const needReply = !isReply && needsReplyFlags(flags);
  const { layout, fds: fdPolicy } = pick(def, isReply, frame.payload.length, undefined, opts.replyAs);

  let payload: unknown;
  try {
    payload = layout.decode(frame.payload);
  } catch (e) {
    if (e instanceof LayoutSizeError) fail('PROTO_BAD_SIZE', def, id, flags, `${def.name}${isReply ? ' reply' : ''}: ${e.message}`, e);
    throw e;
  }
  const invalid = validatePayload(def, layout, isReply, payload);
  if (invalid) {
    fail('PROTO_INVALID_PAYLOAD', def, id, flags, `${def.name}${isReply ? ' reply' : ''}: [${invalid.code}] ${invalid.message}`);
  }
  const fdErr = checkFdPolicy(fdPolicy, payload, frame.fds.length);
  if (fdErr) fail('PROTO_BAD_FDS', def, id, flags, `${def.name}${isReply ? ' reply' : ''}: ${fdErr}`);

  return {
    channel,
    id,
    name: def.name,
    def,
    flags,
    needReply,
    isReply,
    payload: payload ?? null,
    layout: layout.name,
    fds: [...frame.fds],
  };
}

export interface EncodeOptions {
  /**
   * Base header flags (default: version 1). Lets tests build bad headers (with `unchecked`).
   * `reply` / `needReply` are OR-ed in.
   */
  flags?: number;
  reply?: boolean;
  needReply?: boolean;
  /**
   * The payload object for the layout; null/undefined for empty payloads. For u64 layouts a bare
   * bigint is accepted. For a reply to a `replyWhen` row a bigint means "send the REPLY_ACK".
   */
  payload?: unknown;
  fds?: number[];
  /** Skip validate(), check() and the fd policy (to build invalid messages in tests). */
  unchecked?: boolean;
}

export interface Encoded {
  bytes: Uint8Array;
  fds: number[];
}

/** Header + raw payload bytes (no table involved). */
export function encodeRaw(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  writeHeader(out, { request, flags, size: payload.length });
  out.set(payload, HEADER_SIZE);
  return out;
}

function normalize(layout: Layout<unknown>, payload: unknown): unknown {
  if (layout.name === 'u64' && typeof payload === 'bigint') return { value: payload };
  if ((payload === undefined || payload === null) && layout.minSize === 0 && layout !== (empty as Layout<unknown>)) {
    return { bytes: new Uint8Array(0) }; // opaque layouts
  }
  return payload ?? null;
}

/** Encode a request (or, with `reply: true`, a reply) for `id` on `channel`. Throws ProtocolError. */
export function encode(channel: Channel, id: number, opts: EncodeOptions = {}): Encoded {
  const def = messageDef(channel, id);
  const base = opts.flags ?? VHOST_USER_VERSION;
  const flags = (base | (opts.reply ? VHOST_USER_REPLY_MASK : 0) | (opts.needReply ? VHOST_USER_NEED_REPLY_MASK : 0)) >>> 0;
  if (!def) fail('PROTO_UNKNOWN_REQUEST', undefined, id, flags, `cannot encode unknown ${channel} request id ${id}`);
  const isReply = opts.reply === true;
  const { layout, fds: fdPolicy } = pick(def, isReply, -1, opts.payload ?? null, undefined);
  const payload = normalize(layout, opts.payload);
  const fds = [...(opts.fds ?? [])];
  const what = `${def.name}${isReply ? ' reply' : ''}`;

  if (!opts.unchecked) {
    if (payload === null && layout.minSize > 0) fail('PROTO_ENCODE', def, id, flags, `${what}: a ${layout.name} payload is required`);
    let invalid: PayloadError | null;
    try {
      invalid = validatePayload(def, layout, isReply, payload);
    } catch (e) {
      fail('PROTO_ENCODE', def, id, flags, `${what}: payload does not fit the ${layout.name} layout (${(e as Error).message})`, e);
    }
    if (invalid) fail('PROTO_INVALID_PAYLOAD', def, id, flags, `${what}: [${invalid.code}] ${invalid.message}`);
    const fdErr = checkFdPolicy(fdPolicy, payload, fds.length);
    if (fdErr) fail('PROTO_BAD_FDS', def, id, flags, `${what}: ${fdErr}`);
  }

  let size: number;
  let body: Uint8Array;
  try {
    size = payload === null ? 0 : layout.sizeOf(payload);
    if (size > MAX_PAYLOAD && !opts.unchecked) fail('PROTO_TOO_LARGE', def, id, flags, `${what}: payload of ${size} bytes exceeds ${MAX_PAYLOAD}`);
    body = new Uint8Array(size);
    if (payload !== null) layout.encode(payload, body);
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    fail('PROTO_ENCODE', def, id, flags, `${what}: ${(e as Error).message}`, e);
  }
  return { bytes: encodeRaw(id, flags, body), fds };
}

/**
 * Encode the reply to `req`: REPLY flag + version, the row's reply layout (REPLY_ACK u64 for
 * 'ack'/'none' rows, which takes a bare bigint: 0n success, non-zero failure).
 */
export function encodeReply(req: VhostMessage, payload: unknown, fds: number[] = []): Encoded {
  return encode(req.channel, req.id, { reply: true, payload, fds });
}

/** One-line rendering: name, reply/need_reply markers, key fields (hex), fd count. */
export function describe(msg: VhostMessage): string {
  const parts = [msg.channel === 'backend' ? `BACKEND_${msg.name}` : msg.name];
  if (msg.isReply) parts.push(msg.layout === 'u64' && (typeof msg.def.reply === 'string' || msg.def.replyWhen) ? 'ack' : 'reply');
  if (msg.needReply) parts.push('need_reply');
  const p = formatPayload(msg.name, msg.payload, msg.isReply);
  if (p) parts.push(p);
  parts.push(`fds=${msg.fds.length}`);
  return parts.join(' ');
}
