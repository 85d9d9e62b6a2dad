/**
 * THE TABLE: one row per vhost-user request on both channels (vhost-user.rst "Front-end message
 * types" and "Back-end message types"). Decode, encode, validation, fd policy, feature gating,
 * reply handling, logging and tracing are all driven from these rows; nothing else in the code
 * base switches on a request id to learn the protocol's shape (DPDK's VHOST_MESSAGE_HANDLER list,
 * as data).
 *
 * Reading a row:
 * - `request`: payload layout, or 'none' (the spec's "N/A": size 0).
 * - `reply`: what a reply carries when one is sent. A layout means the request always solicits that
 *   reply (unless `replyWhen` narrows it); 'ack' means only the REPLY_ACK u64, and only when the
 *   request had NEED_REPLY set; 'none' is the same on the wire as 'ack' (any request may be acked,
 *   vhost-user.rst "REPLY_ACK") but marks requests the spec never answers by itself.
 * - `replyWhen`: the body reply is only sent under that condition; otherwise the request behaves as
 *   'ack'. Decoding such a reply: exactly 8 bytes is the REPLY_ACK u64, anything else the body.
 * - `fds` / `replyFds`: how many fds travel with the request / the reply (see FdPolicy).
 * - `requires`: the feature that must have been negotiated for the request to be legal (checked by
 *   the session, not the codec: the codec has no session state). Both fields set = both needed.
 * - `check`: request-specific syntax beyond the layout (e.g. SET_VRING_ENABLE num is 0 or 1).
 *
 * Spec ambiguities resolved here are listed in spec-notes/vhost-user.md (its "Where" column names
 * the row); each is marked by a comment starting with "NOTE:".
 */
import { BackendReq, FrontendReq, type Channel } from './constants.ts';
import { ProtoF, VirtioF } from './features.ts';
import { perr, type Layout, type LayoutValue, type PayloadError } from './layout.ts';
import { Payloads, empty, opaque } from './payloads.ts';

/**
 * How many fds travel with a message:
 * - 'none': zero.
 * - 'one': exactly one.
 * - 'optional': zero or one.
 * - 'one-unless-nofd': one, or zero when bit 8 (VHOST_USER_VRING_NOFD_MASK) of the payload's u64 is
 *   set (SET_VRING_KICK/CALL/ERR; SET_DEVICE_STATE_FD's reply).
 * - 'per-region': one per memory region, in order (SET_MEM_TABLE).
 */
export type FdPolicy = 'none' | 'one' | 'optional' | 'one-unless-nofd' | 'per-region';

/** When a body reply is sent (otherwise the request is only acked, on NEED_REPLY). */
export type ReplyCondition =
  | { kind: 'protocol-feature'; protocolFeature: number }
  /** After POSTCOPY_LISTEN (vhost-user.rst SET_MEM_TABLE: "replies with the bases of the memory mapped regions"). */
  | { kind: 'postcopy-listening' };

export interface Requires {
  /** vhost-user protocol feature bit (ProtoF) that must be negotiated. */
  protocolFeature?: number;
  /** virtio feature bit (VirtioF) that must be negotiated. */
  virtioFeature?: number;
  /**
   * NOTE: the virtio feature need only be OFFERED by the back-end (in GET_FEATURES), not acked by
   * SET_FEATURES: GET/SET_PROTOCOL_FEATURES "must [be supported] even before SET_FEATURES".
   */
  offeredOnly?: boolean;
}

export interface MessageDef<Req = unknown, Rep = unknown> {
  readonly id: number;
  /** The spec name without prefix: 'SET_VRING_ADDR', 'SHARED_OBJECT_ADD'. */
  readonly name: string;
  /** The full spec name: 'VHOST_USER_SET_VRING_ADDR', 'VHOST_USER_BACKEND_SHARED_OBJECT_ADD'. */
  readonly specName: string;
  readonly channel: Channel;
  readonly request: Layout<Req> | 'none';
  readonly reply: Layout<Rep> | 'ack' | 'none';
  readonly replyWhen?: ReplyCondition;
  /** GET_CONFIG: "back-end uses zero length of payload to indicate an error". */
  readonly replyMayBeEmpty?: boolean;
  /**
   * The reply body is a u64 result whose failure is a value, not an empty body: a refused request
   * (by the codec or the backend) is answered with this value (SET_DEVICE_STATE_FD,
   * CHECK_DEVICE_STATE, POSTCOPY_END; QEMU reads exactly 8 bytes there).
   */
  readonly failureResult?: bigint;
  readonly fds: FdPolicy;
  readonly replyFds: FdPolicy;
  readonly requires?: Requires;
  /** Request-specific syntax check on the decoded request payload. */
  check?(payload: Req): PayloadError | null;
  /** The spec's one-line description. */
  readonly summary: string;
}

type RowInput<Req, Rep> = Omit<MessageDef<Req, Rep>, 'id' | 'name' | 'specName' | 'channel' | 'replyFds' | 'check'> & {
  replyFds?: FdPolicy;
  /** Typed by the request layout (NoInfer: the layout alone decides Req). */
  check?: (payload: NoInfer<Req>) => PayloadError | null;
};

function frontend<N extends Exclude<keyof typeof FrontendReq, 'NONE'>, Req = null, Rep = null>(
  name: N,
  r: RowInput<Req, Rep>,
): MessageDef<Req, Rep> & { readonly name: N } {
  return { ...r, replyFds: r.replyFds ?? 'none', id: FrontendReq[name], name, specName: `VHOST_USER_${name}`, channel: 'frontend' };
}

function backend<N extends Exclude<keyof typeof BackendReq, 'NONE'>, Req = null, Rep = null>(
  name: N,
  r: RowInput<Req, Rep>,
): MessageDef<Req, Rep> & { readonly name: N } {
  return {
    ...r,
    replyFds: r.replyFds ?? 'none',
    id: BackendReq[name],
    name,
    specName: `VHOST_USER_BACKEND_${name}`,
    channel: 'backend',
  };
}

const numIs01 =
  (what: string) =>
  (p: { num: number }): PayloadError | null =>
    p.num === 0 || p.num === 1 ? null : perr('VRING_STATE_NUM', `${what}: num ${p.num} is not 0 or 1`);

/**
 * NOTE: SET_LOG_BASE's reply body: the spec says "N/A" but lists SET_LOG_BASE among the requests
 * that need a reply (with LOG_SHMFD). DPDK replies with an empty body ("QEMU doesn't expect any
 * payload"), rust-vmm echoes the log description; QEMU checks only the request id. We accept any
 * body and send an empty one (spec-notes/vhost-user.md N3).
 */
const logBaseReply = opaque('log_base_reply');

const P = Payloads;

/** Front-end -> back-end requests, keyed by name. */
export const FRONTEND_MESSAGES = {
  GET_FEATURES: frontend('GET_FEATURES', {
    request: 'none',
    reply: P.u64,
    fds: 'none',
    summary: 'Get from the underlying vhost implementation the features bitmask.',
  }),
  SET_FEATURES: frontend('SET_FEATURES', {
    request: P.u64,
    reply: 'ack',
    fds: 'none',
    summary: 'Enable features in the underlying vhost implementation using a bitmask.',
  }),
  SET_OWNER: frontend('SET_OWNER', {
    request: 'none',
    reply: 'ack',
    fds: 'none',
    summary: 'Issued when a new connection is established; marks the sender as the front-end that owns the session.',
  }),
  RESET_OWNER: frontend('RESET_OWNER', {
    request: 'none',
    reply: 'ack',
    fds: 'none',
    summary: 'Deprecated; back-ends should ignore it or use it to disable all rings.',
  }),
  SET_MEM_TABLE: frontend('SET_MEM_TABLE', {
    request: P.memoryTable,
    // NOTE: postcopy only; QEMU then acks with a SET_MEM_TABLE carrying u64 0 (decodes as 0 regions).
    reply: P.memoryTable,
    replyWhen: { kind: 'postcopy-listening' },
    fds: 'per-region',
    summary: 'Sets the memory map regions on the back-end so it can translate the vring addresses.',
  }),
  SET_LOG_BASE: frontend('SET_LOG_BASE', {
    // NOTE: the spec's table says u64; QEMU, DPDK and rust-vmm all use the 16-byte log description.
    request: P.logDescription,
    reply: logBaseReply,
    replyWhen: { kind: 'protocol-feature', protocolFeature: ProtoF.LOG_SHMFD },
    // NOTE: QEMU attaches the log fd only with LOG_SHMFD; without it the message carries no fd.
    fds: 'optional',
    summary: 'Sets logging shared memory space.',
  }),
  SET_LOG_FD: frontend('SET_LOG_FD', {
    request: 'none',
    reply: 'ack',
    fds: 'one',
    summary: 'Sets the logging file descriptor, which is passed as ancillary data.',
  }),
  SET_VRING_NUM: frontend('SET_VRING_NUM', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    summary: 'Set the size of the queue.',
  }),
  SET_VRING_ADDR: frontend('SET_VRING_ADDR', {
    request: P.vringAddr,
    reply: 'ack',
    fds: 'none',
    summary: 'Sets the addresses of the different aspects of the vring.',
  }),
  SET_VRING_BASE: frontend('SET_VRING_BASE', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    summary: 'Sets the next index to use for descriptors in this vring.',
  }),
  GET_VRING_BASE: frontend('GET_VRING_BASE', {
    request: P.vringState,
    reply: P.vringState,
    fds: 'none',
    summary: 'Stops the vring and returns the current descriptor index or indices.',
  }),
  SET_VRING_KICK: frontend('SET_VRING_KICK', {
    request: P.vringFd,
    reply: 'ack',
    fds: 'one-unless-nofd',
    summary: 'Set the event file descriptor for adding buffers to the vring.',
  }),
  SET_VRING_CALL: frontend('SET_VRING_CALL', {
    request: P.vringFd,
    reply: 'ack',
    fds: 'one-unless-nofd',
    summary: 'Set the event file descriptor to signal when buffers are used.',
  }),
  SET_VRING_ERR: frontend('SET_VRING_ERR', {
    request: P.vringFd,
    reply: 'ack',
    fds: 'one-unless-nofd',
    summary: 'Set the event file descriptor to signal when error occurs.',
  }),
  GET_PROTOCOL_FEATURES: frontend('GET_PROTOCOL_FEATURES', {
    request: 'none',
    reply: P.u64,
    fds: 'none',
    requires: { virtioFeature: VirtioF.PROTOCOL_FEATURES, offeredOnly: true },
    summary: 'Get the protocol feature bitmask from the underlying vhost implementation.',
  }),
  SET_PROTOCOL_FEATURES: frontend('SET_PROTOCOL_FEATURES', {
    request: P.u64,
    reply: 'ack',
    fds: 'none',
    requires: { virtioFeature: VirtioF.PROTOCOL_FEATURES, offeredOnly: true },
    summary: 'Enable protocol features in the underlying vhost implementation.',
  }),
  GET_QUEUE_NUM: frontend('GET_QUEUE_NUM', {
    request: 'none',
    reply: P.u64,
    fds: 'none',
    requires: { protocolFeature: ProtoF.MQ },
    summary: 'Query how many queues the back-end supports.',
  }),
  SET_VRING_ENABLE: frontend('SET_VRING_ENABLE', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    requires: { virtioFeature: VirtioF.PROTOCOL_FEATURES },
    check: numIs01('SET_VRING_ENABLE'),
    summary: 'Signal the back-end to enable or disable corresponding vring.',
  }),
  SEND_RARP: frontend('SEND_RARP', {
    request: P.rarpMac,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.RARP },
    summary: 'Ask the back-end to broadcast a fake RARP to notify the migration is terminated.',
  }),
  NET_SET_MTU: frontend('NET_SET_MTU', {
    request: P.u64,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.NET_MTU, virtioFeature: VirtioF.NET_F_MTU },
    summary: 'Set host MTU value exposed to the guest.',
  }),
  SET_BACKEND_REQ_FD: frontend('SET_BACKEND_REQ_FD', {
    request: 'none',
    reply: 'ack',
    fds: 'one',
    requires: { protocolFeature: ProtoF.BACKEND_REQ },
    summary: 'Set the socket file descriptor for back-end initiated requests.',
  }),
  IOTLB_MSG: frontend('IOTLB_MSG', {
    request: P.iotlbMsg,
    // NOTE: the spec says the back-end "has to acknowledge" with a u64; QEMU always sets NEED_REPLY
    // for it and DPDK/rust-vmm only answer NEED_REPLY, so it is modelled as 'ack'.
    reply: 'ack',
    fds: 'none',
    requires: { virtioFeature: VirtioF.ACCESS_PLATFORM },
    summary: 'Send IOTLB messages (update, invalidate) with struct vhost_iotlb_msg as payload.',
  }),
  SET_VRING_ENDIAN: frontend('SET_VRING_ENDIAN', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.CROSS_ENDIAN },
    check: numIs01('SET_VRING_ENDIAN'),
    summary: 'Set the endianness of a VQ for legacy devices (num 0: little, 1: big).',
  }),
  GET_CONFIG: frontend('GET_CONFIG', {
    request: P.deviceConfig,
    reply: P.deviceConfig,
    replyMayBeEmpty: true,
    fds: 'none',
    requires: { protocolFeature: ProtoF.CONFIG },
    summary: 'Fetch the contents of the virtio device configuration space.',
  }),
  SET_CONFIG: frontend('SET_CONFIG', {
    request: P.deviceConfig,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.CONFIG },
    summary: 'Change the contents of the virtio device configuration space.',
  }),
  CREATE_CRYPTO_SESSION: frontend('CREATE_CRYPTO_SESSION', {
    request: P.cryptoSession,
    reply: P.cryptoSession,
    fds: 'none',
    requires: { protocolFeature: ProtoF.CRYPTO_SESSION },
    summary: 'Create a session for crypto operation.',
  }),
  CLOSE_CRYPTO_SESSION: frontend('CLOSE_CRYPTO_SESSION', {
    request: P.u64,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.CRYPTO_SESSION },
    summary: 'Close a session for crypto operation.',
  }),
  POSTCOPY_ADVISE: frontend('POSTCOPY_ADVISE', {
    request: 'none',
    // NOTE: "reply payload: userfault fd": an empty body with the fd; no fd means failure.
    reply: empty,
    replyFds: 'optional',
    fds: 'none',
    requires: { protocolFeature: ProtoF.PAGEFAULT },
    summary: 'Advise the back-end that a migration with postcopy enabled is underway.',
  }),
  POSTCOPY_LISTEN: frontend('POSTCOPY_LISTEN', {
    request: 'none',
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.PAGEFAULT },
    summary: 'Advise the back-end that a transition to postcopy mode has happened.',
  }),
  POSTCOPY_END: frontend('POSTCOPY_END', {
    request: 'none',
    reply: P.u64,
    failureResult: 1n,
    fds: 'none',
    requires: { protocolFeature: ProtoF.PAGEFAULT },
    summary: 'Advise that postcopy migration has now completed.',
  }),
  GET_INFLIGHT_FD: frontend('GET_INFLIGHT_FD', {
    request: P.inflightDescription,
    // NOTE: the spec's row says "reply payload: N/A", but the text, QEMU and rust-vmm reply with the
    // inflight description and the shared buffer's fd.
    reply: P.inflightDescription,
    replyFds: 'one',
    fds: 'none',
    requires: { protocolFeature: ProtoF.INFLIGHT_SHMFD },
    summary: 'Get a shared buffer from the back-end to track inflight I/O.',
  }),
  SET_INFLIGHT_FD: frontend('SET_INFLIGHT_FD', {
    request: P.inflightDescription,
    reply: 'ack',
    fds: 'one',
    requires: { protocolFeature: ProtoF.INFLIGHT_SHMFD },
    summary: 'Send the shared inflight buffer back to the back-end.',
  }),
  GPU_SET_SOCKET: frontend('GPU_SET_SOCKET', {
    request: 'none',
    reply: 'ack',
    fds: 'one',
    summary: 'Sets the GPU protocol socket file descriptor.',
  }),
  RESET_DEVICE: frontend('RESET_DEVICE', {
    request: 'none',
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.RESET_DEVICE },
    summary: 'Ask the back-end to disable all rings and reset all internal device state to the initial state.',
  }),
  VRING_KICK: frontend('VRING_KICK', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.INBAND_NOTIFICATIONS },
    summary: 'Indicate that a buffer was added to the vring (in-band kick).',
  }),
  GET_MAX_MEM_SLOTS: frontend('GET_MAX_MEM_SLOTS', {
    request: 'none',
    reply: P.u64,
    fds: 'none',
    requires: { protocolFeature: ProtoF.CONFIGURE_MEM_SLOTS },
    summary: 'Return the maximum number of memory slots for QEMU to expose to the guest.',
  }),
  ADD_MEM_REG: frontend('ADD_MEM_REG', {
    // NOTE: the spec's row swaps them ("request payload: N/A, reply payload: single memory region");
    // the text and every implementation send the region as the request.
    request: P.singleMemoryRegion,
    reply: P.singleMemoryRegion,
    replyWhen: { kind: 'postcopy-listening' },
    fds: 'one',
    requires: { protocolFeature: ProtoF.CONFIGURE_MEM_SLOTS },
    summary: 'Update the memory tables by adding the region described.',
  }),
  REM_MEM_REG: frontend('REM_MEM_REG', {
    // NOTE: the same swap as ADD_MEM_REG in the spec's row; the region is the request.
    request: P.singleMemoryRegion,
    reply: 'ack',
    // "No file descriptors SHOULD be passed ... the back-end MAY accept messages with one file
    // descriptor. If a file descriptor is passed, the back-end MUST close it".
    fds: 'optional',
    requires: { protocolFeature: ProtoF.CONFIGURE_MEM_SLOTS },
    summary: 'Update the memory tables by removing the region described.',
  }),
  SET_STATUS: frontend('SET_STATUS', {
    request: P.u64,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.STATUS },
    summary: 'Notify the back-end with updated device status as defined in the Virtio specification.',
  }),
  GET_STATUS: frontend('GET_STATUS', {
    request: 'none',
    reply: P.u64,
    fds: 'none',
    requires: { protocolFeature: ProtoF.STATUS },
    summary: 'Query the back-end for its device status as defined in the Virtio specification.',
  }),
  GET_SHARED_OBJECT: frontend('GET_SHARED_OBJECT', {
    request: P.sharedObject,
    // NOTE: "reply payload: dmabuf fd": empty body, the fd when found, none otherwise (rust-vmm does this).
    reply: empty,
    replyFds: 'optional',
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHARED_OBJECT },
    summary: 'Retrieve a dma-buf fd from the back-end for the given UUID.',
  }),
  SET_DEVICE_STATE_FD: frontend('SET_DEVICE_STATE_FD', {
    request: P.deviceStateTransfer,
    // Bits 0-7: 0 on success; bit 8: no fd returned (the front-end keeps its own channel).
    reply: P.u64,
    // Failure (bits 0-7 non-zero) with bit 8: no fd comes back.
    failureResult: 0x101n,
    replyFds: 'one-unless-nofd',
    fds: 'one',
    requires: { protocolFeature: ProtoF.DEVICE_STATE },
    summary: "Negotiate a channel over which to transfer the back-end's internal state during migration.",
  }),
  CHECK_DEVICE_STATE: frontend('CHECK_DEVICE_STATE', {
    request: 'none',
    reply: P.u64,
    failureResult: 1n,
    fds: 'none',
    requires: { protocolFeature: ProtoF.DEVICE_STATE },
    summary: 'Check whether the back-end was able to fully process the transferred state.',
  }),
  GET_SHMEM_CONFIG: frontend('GET_SHMEM_CONFIG', {
    request: 'none',
    reply: P.shmemConfig,
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHMEM },
    summary: 'Gather the VIRTIO Shared Memory Region configuration (count and size of each region).',
  }),
} as const;

/**
 * Back-end -> front-end requests (on the SET_BACKEND_REQ_FD socket), keyed by name. The channel
 * itself exists only with BACKEND_REQ; the replies come from the front-end.
 */
export const BACKEND_MESSAGES = {
  IOTLB_MSG: backend('IOTLB_MSG', {
    request: P.iotlbMsg,
    reply: 'ack',
    fds: 'none',
    requires: { virtioFeature: VirtioF.ACCESS_PLATFORM },
    summary: 'Notify the front-end of an IOTLB miss or access failure.',
  }),
  CONFIG_CHANGE_MSG: backend('CONFIG_CHANGE_MSG', {
    request: 'none',
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.CONFIG },
    summary: "Notify that the virtio device's configuration space has changed.",
  }),
  VRING_HOST_NOTIFIER_MSG: backend('VRING_HOST_NOTIFIER_MSG', {
    request: P.vringArea,
    reply: 'ack',
    // With an fd: register the notifier; without: only de-register the existing one.
    fds: 'optional',
    requires: { protocolFeature: ProtoF.HOST_NOTIFIER },
    summary: 'Set the host notifier (mmap-able notify area) for a specified queue.',
  }),
  VRING_CALL: backend('VRING_CALL', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.INBAND_NOTIFICATIONS },
    summary: 'Indicate that a buffer was used from the vring (in-band call).',
  }),
  VRING_ERR: backend('VRING_ERR', {
    request: P.vringState,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.INBAND_NOTIFICATIONS },
    summary: 'Indicate that an error occurred on the specific vring (in-band).',
  }),
  SHARED_OBJECT_ADD: backend('SHARED_OBJECT_ADD', {
    request: P.sharedObject,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHARED_OBJECT },
    summary: 'Add the back-end as exporter of a UUID to the virtio shared object table.',
  }),
  SHARED_OBJECT_REMOVE: backend('SHARED_OBJECT_REMOVE', {
    request: P.sharedObject,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHARED_OBJECT },
    summary: 'Remove the back-end as exporter of a UUID from the virtio shared object table.',
  }),
  SHARED_OBJECT_LOOKUP: backend('SHARED_OBJECT_LOOKUP', {
    request: P.sharedObject,
    // "reply payload: dmabuf fd and u64": zero and the fd on success, non-zero and no fd otherwise.
    reply: P.u64,
    replyFds: 'optional',
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHARED_OBJECT },
    summary: 'Retrieve a dma-buf fd from the virtio shared object table given a UUID.',
  }),
  SHMEM_MAP: backend('SHMEM_MAP', {
    request: P.shmemMmap,
    reply: 'ack',
    fds: 'one',
    requires: { protocolFeature: ProtoF.SHMEM },
    summary: 'Ask the front-end to mmap the given fd into a VIRTIO Shared Memory Region.',
  }),
  SHMEM_UNMAP: backend('SHMEM_UNMAP', {
    request: P.shmemMmap,
    reply: 'ack',
    fds: 'none',
    requires: { protocolFeature: ProtoF.SHMEM },
    summary: 'Ask the front-end to unmap a range of a VIRTIO Shared Memory Region.',
  }),
} as const;

// ---- typed views ----

export type FrontendMessageName = keyof typeof FRONTEND_MESSAGES;
export type BackendMessageName = keyof typeof BACKEND_MESSAGES;
type ReqOf<D> = D extends MessageDef<infer R, unknown> ? R : never;
type RepOf<D> = D extends { reply: infer L } ? (L extends Layout<infer T> ? T : { value: bigint }) : never;
/** Decoded request payload of a front-end request: `FrontendPayload<'SET_VRING_ADDR'>` is VringAddr. */
export type FrontendPayload<N extends FrontendMessageName> = ReqOf<(typeof FRONTEND_MESSAGES)[N]>;
/** Reply body of a front-end request ('ack'/'none' rows: the REPLY_ACK u64). */
export type FrontendReplyPayload<N extends FrontendMessageName> = RepOf<(typeof FRONTEND_MESSAGES)[N]>;
export type BackendPayload<N extends BackendMessageName> = ReqOf<(typeof BACKEND_MESSAGES)[N]>;
export type BackendReplyPayload<N extends BackendMessageName> = RepOf<(typeof BACKEND_MESSAGES)[N]>;
export type { LayoutValue };

/** Every row of both channels, front-end rows first, each in id order. */
export const MESSAGES: readonly MessageDef[] = [
  ...Object.values(FRONTEND_MESSAGES),
  ...Object.values(BACKEND_MESSAGES),
].sort((a, b) => (a.channel === b.channel ? a.id - b.id : a.channel === 'frontend' ? -1 : 1)) as MessageDef[];

const byId: Record<Channel, Map<number, MessageDef>> = { frontend: new Map(), backend: new Map() };
const byName: Record<Channel, Map<string, MessageDef>> = { frontend: new Map(), backend: new Map() };
for (const d of MESSAGES) {
  if (byId[d.channel].has(d.id)) throw new Error(`duplicate ${d.channel} request id ${d.id}`);
  byId[d.channel].set(d.id, d);
  byName[d.channel].set(d.name, d);
  byName[d.channel].set(d.specName, d);
}

/** The row for a request id on a channel, or undefined for an id the spec does not define. */
export function messageDef(channel: Channel, id: number): MessageDef | undefined {
  return byId[channel].get(id);
}

/** The row by name: 'SET_VRING_ADDR' or 'VHOST_USER_SET_VRING_ADDR' (backend: ..._BACKEND_...). */
export function messageDefByName(channel: Channel, name: string): MessageDef | undefined {
  return byName[channel].get(name);
}

/** Display name for an id (`UNKNOWN(99)` when not in the table). */
export function requestName(channel: Channel, id: number): string {
  return messageDef(channel, id)?.name ?? `UNKNOWN(${id})`;
}

/** The layout of the request payload ('none' rows: the empty layout). */
export function requestLayout(def: MessageDef): Layout<unknown> {
  return def.request === 'none' ? (empty as Layout<unknown>) : def.request;
}

/** The body layout of a reply: the row's layout, or the REPLY_ACK u64 for 'ack'/'none' rows. */
export function replyBodyLayout(def: MessageDef): Layout<unknown> {
  return typeof def.reply === 'string' ? (Payloads.u64 as Layout<unknown>) : def.reply;
}

/**
 * Whether the front-end must wait for a reply to this request, given NEED_REPLY and whether the
 * row's `replyWhen` condition currently holds (default: assume it does).
 */
export function expectsReply(def: MessageDef, needReply: boolean, conditionHolds = true): boolean {
  if (typeof def.reply !== 'string' && (def.replyWhen === undefined || conditionHolds)) return true;
  return needReply;
}
