/**
 * The 12-byte vhost-user header (vhost-user.rst "Header"): request u32, flags u32, size u32, native
 * byte order. flags: bits 0-1 version (1), bit 2 REPLY, bit 3 NEED_REPLY; other bits undefined.
 */
import {
  HEADER_SIZE,
  MAX_PAYLOAD,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import { LITTLE_ENDIAN, view } from './layout.ts';

export interface Header {
  request: number;
  flags: number;
  /** Payload size in bytes. */
  size: number;
}

export function readHeader(bytes: Uint8Array, offset = 0): Header {
  if (bytes.length - offset < HEADER_SIZE) throw new RangeError('readHeader: fewer than 12 bytes');
  const dv = view(bytes);
  return {
    request: dv.getUint32(offset, LITTLE_ENDIAN),
    flags: dv.getUint32(offset + 4, LITTLE_ENDIAN),
    size: dv.getUint32(offset + 8, LITTLE_ENDIAN),
  };
}

export function writeHeader(out: Uint8Array, h: Header, offset = 0): void {
  const dv = view(out);
  dv.setUint32(offset, h.request >>> 0, LITTLE_ENDIAN);
  dv.setUint32(offset + 4, h.flags >>> 0, LITTLE_ENDIAN);
  dv.setUint32(offset + 8, h.size >>> 0, LITTLE_ENDIAN);
}

export function headerVersion(flags: number): number {
  return flags & VHOST_USER_VERSION_MASK;
}
export function isReplyFlags(flags: number): boolean {
  return (flags & VHOST_USER_REPLY_MASK) !== 0;
}
export function needsReplyFlags(flags: number): boolean {
  return (flags & VHOST_USER_NEED_REPLY_MASK) !== 0;
}

/** Flags for an outgoing message: version 1 plus the requested bits. */
export function makeFlags(opts: { reply?: boolean; needReply?: boolean; extra?: number } = {}): number {
  let f = VHOST_USER_VERSION | ((opts.extra ?? 0) & ~VHOST_USER_VERSION_MASK);
  if (opts.reply) f |= VHOST_USER_REPLY_MASK;
  if (opts.needReply) f |= VHOST_USER_NEED_REPLY_MASK;
  return f >>> 0;
}

/**
 * Header checks that do not need the table: version must be 1 and size within MAX_PAYLOAD. Either
 * failure means the stream can no longer be framed. Undefined flag bits are tolerated (spec-notes).
 */
export function checkHeader(h: Header, maxPayload = MAX_PAYLOAD): void {
  if (headerVersion(h.flags) !== VHOST_USER_VERSION) {
    throw new ProtocolError(
      'PROTO_BAD_HEADER',
      `request ${h.request}: header version ${headerVersion(h.flags)}, expected ${VHOST_USER_VERSION} (flags 0x${h.flags.toString(16)})`,
      { requestId: h.request, flags: h.flags },
    );
  }
  if (h.size > maxPayload) {
    throw new ProtocolError('PROTO_TOO_LARGE', `request ${h.request}: payload size ${h.size} exceeds ${maxPayload}`, {
      requestId: h.request,
      flags: h.flags,
    });
  }
}
