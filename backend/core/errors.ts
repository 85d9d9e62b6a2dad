/**
 * Backend error codes. Three families (see spec-notes/decisions.md "Error handling"):
 * - frontend protocol errors (SESSION_*): the request is refused (NACK when REPLY_ACK was asked,
 *   an empty reply when the request expects a payload) and the session goes on;
 * - guest ring errors live in virtqueue/ (VQ_*): that queue is marked broken, others continue;
 * - host/syscall errors carry errno/syscall from the native layer.
 */
export type BackendErrorCode =
  | 'SESSION_NOT_NEGOTIATED' // request needs a feature the frontend did not negotiate
  | 'SESSION_BAD_INDEX' // vring index out of range for this device
  | 'SESSION_BAD_FD' // an fd of the wrong kind (a pipe where an eventfd belongs, a socket where memory belongs)
  | 'SESSION_BAD_REQUEST' // a request the session cannot take at all (e.g. it carries the REPLY flag)
  | 'SESSION_BAD_STATE' // request not valid in the ring's / session's current state
  | 'SESSION_BAD_FEATURES' // frontend acked features we did not offer
  | 'SESSION_UNSUPPORTED' // request known to the codec but not supported by this backend/device
  | 'SESSION_BAD_MEMORY' // memory table region unusable (overlap, fd too small, mmap failure)
  | 'SESSION_BAD_RING' // ring size/addresses unusable
  | 'SESSION_BAD_LOG' // dirty log (SET_LOG_BASE) unusable
  | 'SESSION_POSTCOPY' // postcopy set-up failed (userfaultfd)
  | 'SESSION_BAD_INFLIGHT' // inflight region unusable (GET/SET_INFLIGHT_FD)
  | 'SESSION_BAD_CONFIG' // config space access outside the space or to read-only bytes
  | 'SESSION_BAD_STATE_DATA' // device state (SET_DEVICE_STATE_FD) malformed or not ours
  | 'CLI_USAGE'
  | 'PORT_ERROR';

export class BackendError extends Error {
  readonly code: BackendErrorCode;
  constructor(code: BackendErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BackendError';
    this.code = code;
  }
}

export function fail(code: BackendErrorCode, message: string): never {
  throw new BackendError(code, message);
}
