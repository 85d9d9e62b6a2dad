/**
 * Codec errors. Every one is a frontend protocol error (family (a) in spec-notes/decisions.md):
 * the session NACKs the request when it can (REPLY_ACK asked and the header was readable) or
 * closes the connection; nothing here is thrown out of the event loop by design of the caller.
 *
 * Header-level errors (PROTO_BAD_HEADER, PROTO_TOO_LARGE) leave the byte stream unsynchronised:
 * the only recovery is closing the connection. The others are per-message.
 */

export type ProtocolErrorCode =
  | 'PROTO_BAD_HEADER' // version != 1 (framing lost)
  | 'PROTO_TOO_LARGE' // header size over MAX_PAYLOAD (framing lost)
  | 'PROTO_UNKNOWN_REQUEST' // request id not in the table for this channel
  | 'PROTO_BAD_SIZE' // payload size does not fit the request's layout
  | 'PROTO_INVALID_PAYLOAD' // layout validate() or the row's check() refused the payload
  | 'PROTO_BAD_FDS' // number of attached fds does not match the row's fd policy
  | 'PROTO_ENCODE' // the caller asked to encode something the layout cannot represent
  | 'PROTO_UNEXPECTED_REPLY' // (scripted frontend) a reply that matches no outstanding request
  | 'PROTO_TIMEOUT' // (scripted frontend) no reply in time
  | 'PROTO_CLOSED'; // (scripted frontend) transport closed with requests outstanding

export interface ProtocolErrorInfo {
  requestId?: number;
  requestName?: string;
  /** Header flags of the offending message, when known (lets the caller honour NEED_REPLY). */
  flags?: number;
  cause?: unknown;
}

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly requestId?: number;
  readonly requestName?: string;
  readonly flags?: number;
  constructor(code: ProtocolErrorCode, message: string, info: ProtocolErrorInfo = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    this.name = 'ProtocolError';
    this.code = code;
    if (info.requestId !== undefined) this.requestId = info.requestId;
    if (info.requestName !== undefined) this.requestName = info.requestName;
    if (info.flags !== undefined) this.flags = info.flags;
  }

  /** True when the byte stream can no longer be trusted and the connection must close. */
  get framingLost(): boolean {
    return this.code === 'PROTO_BAD_HEADER' || this.code === 'PROTO_TOO_LARGE';
  }
}
