/**
 * THE RULE TABLE of `vhost-user-ts conform`: what a vhost-user FRONTEND must (or should) do,
 * according to QEMU's docs/interop/vhost-user.rst and the VIRTIO 1.2 ring rules, each rule with the
 * sentence it comes from, and a check over the live message stream (trace records), the engine's
 * model of the session (model.ts) and ring samples (ring-sample.ts).
 *
 * Data-driven where the protocol table (protocol/messages.ts) already knows the answer: payload
 * sizes, fd counts and payload syntax are judged by the codec that the table drives (the rule only
 * maps the codec's error code to the rule), and feature gating reads `def.requires`. Nothing about
 * a message's shape is restated here.
 *
 * Severity: MUST / SHOULD as the spec words it; DIVERGENCE for places where implementations
 * disagree with each other or with the text: such a rule never fails, it reports which reading the
 * frontend took (`diverge(reading, ...)`), with every reading cited.
 *
 * Outcome of a rule over a run (engine.ts): fail if any violation, else divergence if a divergent
 * reading was observed, else pass if the rule was exercised at least once, else not-applicable.
 *
 * One file because it is one table: each rule is a spec quote and a check of a few lines, read in
 * order against spec-notes/conformance.md; the helpers the checks share live in model.ts.
 */
import {
  FrontendReq as R,
  IotlbType,
  ProtoF,
  VirtioF,
  has,
  type MessageDef,
  type TraceMessageRecord,
  type VringState,
  type MemoryTable,
  type SingleMemoryRegion,
  type IotlbMsg,
  type VringFd,
} from '../../../protocol/index.ts';
import { ringAreas, type ModelRegion, type SessionModel } from './model.ts';
import type { ChainProblemKind, RingSample } from './ring-sample.ts';

export type Severity = 'MUST' | 'SHOULD' | 'DIVERGENCE';

export interface SpecRef {
  doc: 'vhost-user.rst' | 'virtio-v1.2';
  section: string;
  quote: string;
}

/** One way an ambiguous point is read, and who reads it so. */
export interface Reading {
  id: string;
  who: string;
  text: string;
}

/** A decoded message as the rules see it. */
export interface MsgEvent {
  rec: TraceMessageRecord;
  def: MessageDef | undefined;
  /** Decoded payload; raw bytes when the codec refused the frame. */
  payload: unknown;
  needReply: boolean;
  /** The REPLY flag (bit 2) is set. */
  replyFlag: boolean;
  /** The backend refused it: "CODE: message". */
  error: string | null;
  /** CODE of `error` (PROTO_BAD_SIZE, SESSION_NOT_NEGOTIATED, ...). */
  errorCode: string | null;
  /** The layout's / row's payload error code, e.g. VRING_ADDR_ALIGN (from "[CODE]" in the message). */
  payloadCode: string | null;
}

export interface Check {
  readonly model: SessionModel;
  /** The rule applied and held here. */
  pass(): void;
  /** The frontend violated the rule. */
  fail(detail: string): void;
  /** DIVERGENCE rules: the frontend took reading `reading` (a Reading id). */
  diverge(reading: string, detail: string): void;
}

export interface Rule {
  id: string;
  title: string;
  severity: Severity;
  /** Where the rule comes from; the first entry is the primary one. */
  spec: SpecRef[];
  /** DIVERGENCE rules: every reading, cited. */
  readings?: Reading[];
  /** Checked by an active probe (probes.ts) rather than passively. */
  probe?: string;
  /** A frontend request, judged against the model as it was before it. */
  onRequest?(c: Check, ev: MsgEvent): void;
  /** Our reply to `req`. */
  onReply?(c: Check, ev: MsgEvent, req: MsgEvent | null): void;
  /** The frontend's reply (or anything it sent) on the back-end channel. */
  onBackendRx?(c: Check, ev: MsgEvent): void;
  /** A ring sample (prev: the previous sample of the same ring generation). */
  onRing?(c: Check, s: RingSample, prev: RingSample | null): void;
  /** The connection ended (reason as the connection reported it). */
  onClose?(c: Check, reason: string): void;
}

const VU = 'vhost-user.rst';
const VIO = 'virtio-v1.2';
const hex = (v: bigint | number) => '0x' + v.toString(16);
const vs = (ev: MsgEvent) => ev.payload as VringState;

/** Payload error codes a dedicated rule reports (VU-MSG-004 leaves them to it). */
const CLAIMED_PAYLOAD_CODES = new Set(['VRING_ADDR_ALIGN']);

/** Requests that configure memory or rings (VU-NEG-006). */
const CONFIG_REQUESTS = new Set<number>([
  R.SET_MEM_TABLE,
  R.ADD_MEM_REG,
  R.SET_VRING_NUM,
  R.SET_VRING_ADDR,
  R.SET_VRING_BASE,
  R.SET_VRING_KICK,
]);

/** Requests addressing one vring by `index` (VU-RING-006). */
const RING_REQUESTS = new Set<number>([
  R.SET_VRING_NUM,
  R.SET_VRING_ADDR,
  R.SET_VRING_BASE,
  R.GET_VRING_BASE,
  R.SET_VRING_KICK,
  R.SET_VRING_CALL,
  R.SET_VRING_ERR,
  R.SET_VRING_ENABLE,
  R.VRING_KICK,
]);

/**
 * virtio-net feature dependencies (virtio v1.2 5.1.3.1 "Feature bit requirements"), as
 * [feature, one-of-these-required]; plus the generic ring ones.
 */
const NET_DEPENDENCIES: [number, number[], string][] = [
  [VirtioF.NET_F_GUEST_TSO4, [VirtioF.NET_F_GUEST_CSUM], 'VIRTIO_NET_F_GUEST_TSO4 Requires VIRTIO_NET_F_GUEST_CSUM.'],
  [VirtioF.NET_F_GUEST_TSO6, [VirtioF.NET_F_GUEST_CSUM], 'VIRTIO_NET_F_GUEST_TSO6 Requires VIRTIO_NET_F_GUEST_CSUM.'],
  [VirtioF.NET_F_GUEST_ECN, [VirtioF.NET_F_GUEST_TSO4, VirtioF.NET_F_GUEST_TSO6], 'VIRTIO_NET_F_GUEST_ECN Requires VIRTIO_NET_F_GUEST_TSO4 or VIRTIO_NET_F_GUEST_TSO6.'],
  [VirtioF.NET_F_GUEST_UFO, [VirtioF.NET_F_GUEST_CSUM], 'VIRTIO_NET_F_GUEST_UFO Requires VIRTIO_NET_F_GUEST_CSUM.'],
  [VirtioF.NET_F_HOST_TSO4, [VirtioF.NET_F_CSUM], 'VIRTIO_NET_F_HOST_TSO4 Requires VIRTIO_NET_F_CSUM.'],
  [VirtioF.NET_F_HOST_TSO6, [VirtioF.NET_F_CSUM], 'VIRTIO_NET_F_HOST_TSO6 Requires VIRTIO_NET_F_CSUM.'],
  [VirtioF.NET_F_HOST_ECN, [VirtioF.NET_F_HOST_TSO4, VirtioF.NET_F_HOST_TSO6], 'VIRTIO_NET_F_HOST_ECN Requires VIRTIO_NET_F_HOST_TSO4 or VIRTIO_NET_F_HOST_TSO6.'],
  [VirtioF.NET_F_HOST_UFO, [VirtioF.NET_F_CSUM], 'VIRTIO_NET_F_HOST_UFO Requires VIRTIO_NET_F_CSUM.'],
  [VirtioF.NET_F_CTRL_RX, [VirtioF.NET_F_CTRL_VQ], 'VIRTIO_NET_F_CTRL_RX Requires VIRTIO_NET_F_CTRL_VQ.'],
  [VirtioF.NET_F_CTRL_VLAN, [VirtioF.NET_F_CTRL_VQ], 'VIRTIO_NET_F_CTRL_VLAN Requires VIRTIO_NET_F_CTRL_VQ.'],
  [VirtioF.NET_F_GUEST_ANNOUNCE, [VirtioF.NET_F_CTRL_VQ], 'VIRTIO_NET_F_GUEST_ANNOUNCE Requires VIRTIO_NET_F_CTRL_VQ.'],
  [VirtioF.NET_F_MQ, [VirtioF.NET_F_CTRL_VQ], 'VIRTIO_NET_F_MQ Requires VIRTIO_NET_F_CTRL_VQ.'],
  [VirtioF.NET_F_CTRL_MAC_ADDR, [VirtioF.NET_F_CTRL_VQ], 'VIRTIO_NET_F_CTRL_MAC_ADDR Requires VIRTIO_NET_F_CTRL_VQ.'],
];

/** Codec error code of a request -> this rule fails (data-driven: the table decided). */
function codecRule(code: string, extra?: (ev: MsgEvent) => boolean): Rule['onRequest'] {
  return (c, ev) => {
    if (ev.errorCode === code && (extra?.(ev) ?? true)) c.fail(`${ev.rec.name}: ${ev.error}`);
    else if (ev.def) c.pass();
  };
}

function overlaps(a: ModelRegion, b: ModelRegion): string | null {
  if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) return `guest ranges ${hex(a.gpa)}+${hex(a.size)} and ${hex(b.gpa)}+${hex(b.size)} overlap`;
  if (a.uva < b.uva + b.size && b.uva < a.uva + a.size) return `user ranges ${hex(a.uva)}+${hex(a.size)} and ${hex(b.uva)}+${hex(b.size)} overlap`;
  return null;
}

function chainRule(kinds: ChainProblemKind[]): Rule['onRing'] {
  return (c, s) => {
    if (s.chainsWalked === 0) return;
    const bad = s.problems.filter((p) => kinds.includes(p.kind));
    if (bad.length) for (const p of bad) c.fail(`ring ${s.index}, chain at ${p.head}: ${p.detail}`);
    else c.pass();
  };
}

export const RULES: readonly Rule[] = [
  // ---------------------------------------------------------------- messages (the table decides)
  {
    id: 'VU-MSG-001',
    title: 'Header: version 1, size within limits (framing)',
    severity: 'MUST',
    spec: [{ doc: VU, section: 'Message Specification / Header', quote: 'Lower 2 bits are the version (currently 0x01)' }],
    onRequest: (c) => c.pass(),
    onClose: (c, reason) => {
      if (/PROTO_BAD_HEADER|PROTO_TOO_LARGE/.test(reason)) c.fail(`connection ended: ${reason}`);
    },
  },
  {
    id: 'VU-MSG-002',
    title: 'Only request ids the spec defines',
    severity: 'MUST',
    spec: [{ doc: VU, section: 'Front-end message types', quote: ':request: 32-bit type of the request' }],
    onRequest: codecRule('PROTO_UNKNOWN_REQUEST'),
  },
  {
    id: 'VU-MSG-003',
    title: "Payload size fits the request's layout (protocol/messages.ts)",
    severity: 'MUST',
    spec: [{ doc: VU, section: 'Message Specification / Payload', quote: ':size: 32-bit size of the payload' }],
    onRequest: codecRule('PROTO_BAD_SIZE'),
  },
  {
    id: 'VU-MSG-004',
    title: 'Payload fields are valid for the request (layout validation and row checks)',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_SET_VRING_ENDIAN (and every payload description)',
        quote: 'Little-endian is indicated with state.num set to 0 and big-endian is indicated with state.num set to 1. Other values are invalid.',
      },
    ],
    onRequest: codecRule('PROTO_INVALID_PAYLOAD', (ev) => !CLAIMED_PAYLOAD_CODES.has(ev.payloadCode ?? '')),
  },
  {
    id: 'VU-MSG-005',
    title: "Number of fds matches the request's fd policy",
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_SET_MEM_TABLE',
        quote: 'In the ancillary data there is an array of file descriptors for each memory mapped region. The size and ordering of the fds matches the number and ordering of memory regions.',
      },
      { doc: VU, section: 'VHOST_USER_ADD_MEM_REG', quote: 'Exactly one file descriptor from which the memory is mapped is passed in the ancillary data.' },
    ],
    onRequest: codecRule('PROTO_BAD_FDS'),
  },
  {
    id: 'VU-MSG-006',
    title: 'Requests do not carry the reply flag',
    severity: 'MUST',
    spec: [{ doc: VU, section: 'Message Specification / Header', quote: 'Bit 2 is the reply flag - needs to be sent on each reply from the back-end' }],
    onRequest: (c, ev) => (ev.replyFlag ? c.fail(`${ev.rec.name} sent with the reply flag (flags ${hex(ev.rec.flags)})`) : c.pass()),
  },
  {
    id: 'VU-MSG-007',
    title: 'need_reply only once REPLY_ACK is negotiated',
    severity: 'SHOULD',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_PROTOCOL_F_REPLY_ACK',
        quote: 'With this protocol extension negotiated, the sender (QEMU) can set the need_reply [Bit 3] flag to any command.',
      },
    ],
    onRequest: (c, ev) => {
      if (!ev.needReply) return;
      if (!c.model.protoNegotiated(ProtoF.REPLY_ACK)) c.fail(`${ev.rec.name} with need_reply but REPLY_ACK not negotiated`);
      else c.pass();
    },
  },
  {
    id: 'VU-MSG-008',
    title: "Requests only after the feature they require was negotiated (the table's `requires`)",
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_GET_QUEUE_NUM (and each request gated by a feature)',
        quote: 'This request should be sent only when VHOST_USER_PROTOCOL_F_MQ is set in queried protocol features by VHOST_USER_GET_PROTOCOL_FEATURES.',
      },
      {
        doc: VU,
        section: 'VHOST_USER_SEND_RARP',
        quote: 'Only legal if feature bit VHOST_USER_F_PROTOCOL_FEATURES is present in VHOST_USER_GET_FEATURES and protocol feature bit VHOST_USER_PROTOCOL_F_RARP is present in VHOST_USER_GET_PROTOCOL_FEATURES.',
      },
    ],
    onRequest: (c, ev) => {
      const req = ev.def?.requires;
      if (!req) return;
      const m = c.model;
      const missing: string[] = [];
      if (req.protocolFeature !== undefined && !m.protoNegotiated(req.protocolFeature)) missing.push(`protocol feature ${req.protocolFeature}`);
      const vf = req.virtioFeature;
      if (vf !== undefined) {
        if (req.offeredOnly) {
          if (m.offeredFeatures === null || !has(m.offeredFeatures, vf)) return; // VU-NEG-003 judges this
        } else if (!m.featureAcked(vf)) {
          // PROTOCOL_FEATURES used before SET_FEATURES acked it: the known divergence VU-DIV-004.
          if (vf === VirtioF.PROTOCOL_FEATURES && m.ackedProtocolFeatures !== null) return;
          missing.push(`virtio feature ${vf}`);
        }
      }
      if (missing.length) c.fail(`${ev.rec.name} without ${missing.join(' and ')} negotiated`);
      else c.pass();
    },
  },
  // ---------------------------------------------------------------- negotiation
  {
    id: 'VU-NEG-001',
    title: 'SET_FEATURES accepts only features GET_FEATURES offered',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.2.1 Driver Requirements: Feature Bits',
        quote: 'The driver MUST NOT accept a feature which the device did not offer, and MUST NOT accept a feature which requires another feature which was not accepted.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_FEATURES || ev.errorCode?.startsWith('PROTO_')) return;
      const f = (ev.payload as { value: bigint }).value;
      const offered = c.model.offeredFeatures;
      if (offered === null) return c.fail(`SET_FEATURES ${hex(f)} before any GET_FEATURES`);
      const extra = f & ~offered;
      if (extra !== 0n) c.fail(`SET_FEATURES acks ${hex(extra)}, not offered (offered ${hex(offered)})`);
      else c.pass();
    },
  },
  {
    id: 'VU-NEG-002',
    title: 'SET_PROTOCOL_FEATURES enables only offered protocol features',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'Communication',
        quote: 'Any protocol extensions are gated by protocol feature bits, which allows full backwards compatibility on both front-end and back-end.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_PROTOCOL_FEATURES || ev.errorCode?.startsWith('PROTO_')) return;
      const f = (ev.payload as { value: bigint }).value;
      const offered = c.model.offeredProtocolFeatures;
      if (offered === null) return c.fail(`SET_PROTOCOL_FEATURES ${hex(f)} before any GET_PROTOCOL_FEATURES`);
      const extra = f & ~offered;
      if (extra !== 0n) c.fail(`SET_PROTOCOL_FEATURES enables ${hex(extra)}, not offered (offered ${hex(offered)})`);
      else c.pass();
    },
  },
  {
    id: 'VU-NEG-003',
    title: 'GET/SET_PROTOCOL_FEATURES only after GET_FEATURES showed VHOST_USER_F_PROTOCOL_FEATURES',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_GET_PROTOCOL_FEATURES',
        quote: 'Only legal if feature bit VHOST_USER_F_PROTOCOL_FEATURES is present in VHOST_USER_GET_FEATURES.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.GET_PROTOCOL_FEATURES && ev.rec.id !== R.SET_PROTOCOL_FEATURES) return;
      const o = c.model.offeredFeatures;
      if (o === null) c.fail(`${ev.rec.name} before GET_FEATURES in this connection`);
      else if (!has(o, VirtioF.PROTOCOL_FEATURES)) c.fail(`${ev.rec.name} but GET_FEATURES did not offer bit 30`);
      else c.pass();
    },
  },
  {
    id: 'VU-NEG-004',
    title: 'Feature dependencies hold in SET_FEATURES',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.2.1 Driver Requirements: Feature Bits',
        quote: 'The driver MUST NOT accept a feature which the device did not offer, and MUST NOT accept a feature which requires another feature which was not accepted.',
      },
      { doc: VIO, section: '5.1.3.1 Feature bit requirements', quote: 'Some networking feature bits require other networking feature bits (see 2.2.1): VIRTIO_NET_F_GUEST_TSO4 Requires VIRTIO_NET_F_GUEST_CSUM. ...' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_FEATURES || ev.errorCode?.startsWith('PROTO_')) return;
      const f = (ev.payload as { value: bigint }).value;
      // A required feature the back-end never offered is one the frontend keeps for itself (the control
      // virtqueue: QEMU hw/net/vhost_net.c forwards only its user_feature_bits, CTRL_VQ is not among them
      // ("vhost-user: ignore qemu-only features"); DPDK virtio-user emulates the control queue too), while
      // it still forwards the dependent bit (GUEST_ANNOUNCE: "implies RARP isn't sent by QEMU out of band").
      // The frontend could not ack it without breaking VU-NEG-001: not judged here.
      const offered = c.model.offeredFeatures;
      const judged = NET_DEPENDENCIES.filter(([, need]) => offered === null || need.some((n) => has(offered, n)));
      const bad = judged.filter(([feat, need]) => has(f, feat) && !need.some((n) => has(f, n))).map(([, , t]) => t);
      if (bad.length) c.fail(`SET_FEATURES ${hex(f)}: ${bad.join(' ')}`);
      else c.pass();
    },
  },
  {
    id: 'VU-NEG-005',
    title: 'INBAND_NOTIFICATIONS only together with BACKEND_REQ and REPLY_ACK',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'In-band notifications',
        quote: 'It is also considered an error to negotiate this feature without also negotiating VHOST_USER_PROTOCOL_F_SLAVE_REQ and VHOST_USER_PROTOCOL_F_REPLY_ACK',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_PROTOCOL_FEATURES || ev.errorCode?.startsWith('PROTO_')) return;
      const f = (ev.payload as { value: bigint }).value;
      if (!has(f, ProtoF.INBAND_NOTIFICATIONS)) return;
      if (!has(f, ProtoF.BACKEND_REQ) || !has(f, ProtoF.REPLY_ACK)) c.fail(`SET_PROTOCOL_FEATURES ${hex(f)}: INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK`);
      else c.pass();
    },
  },
  {
    id: 'VU-NEG-006',
    title: 'SET_OWNER starts each connection, before memory and rings are configured',
    severity: 'SHOULD',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_SET_OWNER',
        quote: 'Issued when a new connection is established. It marks the sender as the front-end that owns of the session. This can be used on the *back-end* as a "session start" flag.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id === R.SET_OWNER) return c.pass();
      if (CONFIG_REQUESTS.has(ev.rec.id) && !c.model.owner) c.fail(`${ev.rec.name} before SET_OWNER in connection ${c.model.sessionNo}`);
    },
  },
  // ---------------------------------------------------------------- memory
  {
    id: 'VU-MEM-001',
    title: 'Memory regions are sane: non-empty, no overlap in guest or user addresses',
    severity: 'MUST',
    spec: [
      { doc: VU, section: 'Memory access', quote: 'User addresses map to the vhost memory region containing that user address.' },
      { doc: VU, section: 'Memory access', quote: 'Guest addresses map to the vhost memory region containing that guest address.' },
    ],
    onRequest: (c, ev) => {
      let regions: ModelRegion[];
      if (ev.rec.id === R.SET_MEM_TABLE && !ev.errorCode?.startsWith('PROTO_BAD_SIZE') && ev.payload && (ev.payload as MemoryTable).regions) {
        const t = ev.payload as MemoryTable;
        if (t.nregions === 0) return; // postcopy ack form (codec NOTE 8)
        regions = t.regions.map((r) => ({ gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr }));
      } else if (ev.rec.id === R.ADD_MEM_REG && ev.payload && (ev.payload as SingleMemoryRegion).region) {
        const r = (ev.payload as SingleMemoryRegion).region;
        regions = [...c.model.regions, { gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr }];
      } else return;
      const bad: string[] = [];
      for (let i = 0; i < regions.length; i++) {
        if (regions[i]!.size === 0n) bad.push(`region ${i} has size 0`);
        for (let j = i + 1; j < regions.length; j++) {
          const o = overlaps(regions[i]!, regions[j]!);
          if (o) bad.push(o);
        }
      }
      if (bad.length) c.fail(`${ev.rec.name}: ${bad.join('; ')}`);
      else c.pass();
    },
  },
  {
    id: 'VU-MEM-002',
    title: 'REM_MEM_REG names a region that was added (guest address, user address and size)',
    severity: 'MUST',
    spec: [{ doc: VU, section: 'VHOST_USER_REM_MEM_REG', quote: 'The memory region to be removed is identified by its guest address, user address and size. The mmap offset is ignored.' }],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.REM_MEM_REG || !ev.payload || !(ev.payload as SingleMemoryRegion).region) return;
      const r = (ev.payload as SingleMemoryRegion).region;
      const found = c.model.regions.some((x) => x.gpa === r.guestPhysAddr && x.uva === r.userspaceAddr && x.size === r.memorySize);
      if (!found) c.fail(`REM_MEM_REG gpa ${hex(r.guestPhysAddr)} uva ${hex(r.userspaceAddr)} size ${hex(r.memorySize)}: no such region`);
      else c.pass();
    },
  },
  {
    id: 'VU-MEM-003',
    title: 'REM_MEM_REG carries no file descriptor',
    severity: 'SHOULD',
    spec: [{ doc: VU, section: 'VHOST_USER_REM_MEM_REG', quote: 'No file descriptors SHOULD be passed in the ancillary data.' }],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.REM_MEM_REG) return;
      if (ev.rec.fdCount > 0) c.fail(`REM_MEM_REG with ${ev.rec.fdCount} fd(s)`);
      else c.pass();
    },
  },
  {
    id: 'VU-MEM-004',
    title: 'No more regions than GET_MAX_MEM_SLOTS answered',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_GET_MAX_MEM_SLOTS',
        quote: 'The back-end should return the message with a u64 payload containing the maximum number of memory slots for QEMU to expose to the guest.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.ADD_MEM_REG || c.model.maxMemSlots === null) return;
      if (c.model.regions.length + 1 > c.model.maxMemSlots) c.fail(`ADD_MEM_REG makes ${c.model.regions.length + 1} regions, max ${c.model.maxMemSlots}`);
      else c.pass();
    },
  },
  // ---------------------------------------------------------------- rings: configuration
  {
    id: 'VU-RING-001',
    title: 'Ring areas lie inside one memory region when the ring starts',
    severity: 'MUST',
    spec: [
      { doc: VU, section: 'A vring address description', quote: 'Note that a ring address is an IOVA if VIRTIO_F_IOMMU_PLATFORM has been negotiated. Otherwise it is a user address.' },
      { doc: VU, section: 'VHOST_USER_SET_MEM_TABLE', quote: 'Sets the memory map regions on the back-end so it can translate the vring addresses.' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_KICK || ev.errorCode?.startsWith('PROTO_')) return;
      const m = c.model;
      if (m.iommu) return; // IOVAs: translated through the IOTLB (the ring samples see misses)
      const r = m.ring((ev.payload as VringFd).index);
      if (r.addr === null || r.num === 0) return; // VU-RING-005
      const areas = ringAreas(r.num, m.packed, m.featureAcked(VirtioF.RING_EVENT_IDX));
      const bad: string[] = [];
      const chk = (what: string, at: bigint, len: number) => {
        if (!m.regionOfUva(at, BigInt(len))) bad.push(`${what} ${hex(at)} +${len}`);
      };
      chk('descriptor table', r.addr.descUserAddr, areas.desc);
      chk(m.packed ? 'driver area' : 'available ring', r.addr.availUserAddr, areas.avail);
      chk(m.packed ? 'device area' : 'used ring', r.addr.usedUserAddr, areas.used);
      if (bad.length) c.fail(`ring ${r.index} started with ${bad.join(', ')} outside every memory region`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-002',
    title: 'Ring areas are aligned (descriptors 16, used 4, available 2)',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.7 Split Virtqueues',
        quote: 'The memory alignment and size requirements, in bytes, of each part of the virtqueue are summarized in the following table: Descriptor Table 16, Available Ring 2, Used Ring 4',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_ADDR) return;
      if (ev.payloadCode === 'VRING_ADDR_ALIGN') c.fail(`SET_VRING_ADDR: ${ev.error}`);
      else if (!ev.error) c.pass();
    },
  },
  {
    id: 'VU-RING-003',
    title: 'Queue size: 1..32768, a power of two for split rings',
    severity: 'MUST',
    spec: [
      { doc: VIO, section: '2.7 Split Virtqueues', quote: 'Queue Size value is always a power of 2. The maximum Queue Size value is 32768.' },
      { doc: VIO, section: '2.8 Packed Virtqueues', quote: 'Packed virtqueues support up to 2^15 entries each.' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_NUM || ev.errorCode?.startsWith('PROTO_')) return;
      const n = vs(ev).num;
      if (n === 0 || n > 32768) c.fail(`ring ${vs(ev).index}: size ${n} not in 1..32768`);
      else if (!c.model.packed && (n & (n - 1)) !== 0) c.fail(`ring ${vs(ev).index}: split ring size ${n} is not a power of 2`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-004',
    title: 'SET_VRING_NUM / SET_VRING_BASE only on a stopped ring',
    severity: 'SHOULD',
    spec: [
      {
        doc: VU,
        section: 'Ring states',
        quote: 'Each ring is initialized in a stopped state. The back-end must start ring upon receiving a kick (that is, detecting that file descriptor is readable) on the descriptor specified by VHOST_USER_SET_VRING_KICK or receiving the in-band message VHOST_USER_VRING_KICK if negotiated, and stop ring upon receiving VHOST_USER_GET_VRING_BASE.',
      },
    ],
    onRequest: (c, ev) => {
      if ((ev.rec.id !== R.SET_VRING_NUM && ev.rec.id !== R.SET_VRING_BASE) || ev.errorCode?.startsWith('PROTO_')) return;
      const r = c.model.ring(vs(ev).index);
      if (r.started) c.fail(`${ev.rec.name} on ring ${r.index} while it is started (no GET_VRING_BASE since SET_VRING_KICK)`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-005',
    title: 'A ring has its size, addresses and the memory table before it is started',
    severity: 'SHOULD',
    spec: [
      { doc: VU, section: 'VHOST_USER_SET_VRING_NUM', quote: 'Set the size of the queue.' },
      { doc: VU, section: 'VHOST_USER_SET_MEM_TABLE', quote: 'Sets the memory map regions on the back-end so it can translate the vring addresses.' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_KICK || ev.errorCode?.startsWith('PROTO_')) return;
      const m = c.model;
      const r = m.ring((ev.payload as VringFd).index);
      const missing = [r.num === 0 ? 'SET_VRING_NUM' : '', r.addr === null ? 'SET_VRING_ADDR' : '', m.regions.length === 0 ? 'a memory table' : ''].filter(Boolean);
      if (missing.length) c.fail(`ring ${r.index} started (SET_VRING_KICK) without ${missing.join(', ')}`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-006',
    title: 'Ring indexes stay below the number of rings the back-end supports',
    severity: 'SHOULD',
    spec: [
      {
        doc: VU,
        section: 'Multiple queue support',
        quote: 'The max number of queues the back-end supports can be queried with message VHOST_USER_GET_QUEUE_NUM. Front-end should stop when the number of requested queues is bigger than that.',
      },
    ],
    onRequest: (c, ev) => {
      if (!RING_REQUESTS.has(ev.rec.id) || ev.errorCode?.startsWith('PROTO_') || !ev.payload) return;
      const index = (ev.payload as { index: number }).index;
      if (index >= c.model.deviceRings) c.fail(`${ev.rec.name} on ring ${index}: the device has ${c.model.deviceRings} rings`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-007',
    title: 'SET_VRING_BASE value: split reserved bits zero, packed indices inside the ring',
    severity: 'MUST',
    spec: [
      { doc: VU, section: 'A vring descriptor index for split virtqueues', quote: 'Bits 16–31: Reserved (set to zero)' },
      {
        doc: VU,
        section: 'Vring descriptor indices for packed virtqueues',
        quote: 'Bits 0–14: Index of the next *Available Ring* descriptor that the back-end will process. ... Bits 16–30: Index of the entry in the *Used Ring* where the back-end will place the next descriptor.',
      },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_BASE || ev.errorCode?.startsWith('PROTO_')) return;
      const { index, num } = vs(ev);
      const m = c.model;
      const r = m.ring(index);
      if (!m.packed) {
        if (num >>> 16 !== 0) c.fail(`ring ${index}: split base ${hex(num >>> 0)} has reserved bits 16-31 set`);
        else c.pass();
        return;
      }
      if (r.num === 0) return;
      const avail = num & 0x7fff;
      const used = (num >>> 16) & 0x7fff;
      if (avail >= r.num || used >= r.num) c.fail(`ring ${index}: packed base ${hex(num >>> 0)} (avail ${avail}, used ${used}) outside ring of ${r.num}`);
      else c.pass();
    },
  },
  {
    id: 'VU-RING-008',
    title: 'With PROTOCOL_FEATURES, a started ring the driver uses gets SET_VRING_ENABLE 1',
    severity: 'SHOULD',
    spec: [
      {
        doc: VU,
        section: 'Ring states',
        quote: 'If VHOST_USER_F_PROTOCOL_FEATURES has been negotiated, the ring is initialized in a disabled state and is enabled by VHOST_USER_SET_VRING_ENABLE with parameter 1.',
      },
    ],
    onRing: (c, s) => {
      const m = c.model;
      const r = m.rings.get(s.index);
      if (!r || !m.protocolFeaturesInForce) return;
      if (r.enabled || r.everEnabled) return c.pass();
      const pending = s.availIdx !== null && s.lastAvail !== null ? (s.availIdx - s.lastAvail) & 0xffff : 0;
      r.disabledWithBuffers = pending > 0 ? r.disabledWithBuffers + 1 : 0;
      // ~1 s of samples with buffers posted and the ring never enabled: the driver waits for nothing.
      if (r.disabledWithBuffers === 50) c.fail(`ring ${s.index} is started and has ${pending} buffers posted but was never enabled`);
    },
  },
  // ---------------------------------------------------------------- rings: driver behaviour (samples)
  {
    id: 'VU-VQ-001',
    title: 'avail.idx never goes back and never runs more than the queue size ahead',
    severity: 'MUST',
    spec: [
      { doc: VIO, section: '2.7.6.1 Driver Requirements: The Virtqueue Available Ring', quote: 'A driver MUST NOT decrement the available idx on a virtqueue (ie. there is no way to “unexpose” buffers).' },
      { doc: VIO, section: '2.7.5 The Virtqueue Descriptor Table', quote: 'The number of descriptors in the table is defined by the queue size for this virtqueue: this is the maximum possible descriptor chain length.' },
    ],
    onRing: (c, s, prev) => {
      if (s.packed || s.availIdx === null) return;
      if (prev && prev.availIdx !== null) {
        // Going back by 1..num between two samples is a decrement (going forward by more than
        // 65536 - num buffers within one sample period is not possible).
        const back = (prev.availIdx - s.availIdx) & 0xffff;
        if (back > 0 && back <= s.num) return c.fail(`ring ${s.index}: avail.idx went back from ${prev.availIdx} to ${s.availIdx}`);
      }
      if (s.lastAvail === null) return;
      const pending = (s.availIdx - s.lastAvail) & 0xffff;
      if (pending > s.num) c.fail(`ring ${s.index}: avail.idx ${s.availIdx} is ${pending} ahead of the device's ${s.lastAvail} (size ${s.num})`);
      else c.pass();
    },
  },
  {
    id: 'VU-VQ-002',
    title: 'Split avail.flags: 0 or 1 without EVENT_IDX, 0 with it (used buffer notification suppression)',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.7.7.1 Driver Requirements: Used Buffer Notification Suppression',
        quote: 'If the VIRTIO_F_EVENT_IDX feature bit is not negotiated: The driver MUST set flags to 0 or 1. ... Otherwise, if the VIRTIO_F_EVENT_IDX feature bit is negotiated: The driver MUST set flags to 0.',
      },
    ],
    onRing: (c, s) => {
      if (s.packed || s.availFlags === null) return;
      const ok = s.eventIdx ? s.availFlags === 0 : s.availFlags <= 1;
      if (ok) c.pass();
      else c.fail(`ring ${s.index}: avail.flags ${hex(s.availFlags)} with EVENT_IDX ${s.eventIdx ? 'negotiated' : 'not negotiated'}`);
    },
  },
  {
    id: 'VU-VQ-003',
    title: 'Avail entries and next fields index the descriptor table',
    severity: 'MUST',
    spec: [
      { doc: VIO, section: '2.7.6 The Virtqueue Available Ring', quote: 'The driver uses the available ring to offer buffers to the device: each ring entry refers to the head of a descriptor chain.' },
      { doc: VIO, section: '2.7.5 The Virtqueue Descriptor Table', quote: 'The number of descriptors in the table is defined by the queue size for this virtqueue' },
    ],
    onRing: chainRule(['head-range', 'next-range']),
  },
  {
    id: 'VU-VQ-004',
    title: 'No descriptor loops, chains no longer than the queue size nor 2^32 bytes',
    severity: 'MUST',
    spec: [
      { doc: VIO, section: '2.7.5.2 Driver Requirements: The Virtqueue Descriptor Table', quote: 'Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total; this implies that loops in the descriptor chain are forbidden!' },
      { doc: VIO, section: '2.7.5.3.1 Driver Requirements: Indirect Descriptors', quote: 'A driver MUST NOT create a descriptor chain longer than the Queue Size of the device.' },
    ],
    onRing: chainRule(['loop', 'too-long']),
  },
  {
    id: 'VU-VQ-005',
    title: 'Indirect descriptors: only when negotiated, one level, never with NEXT',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.7.5.3.1 Driver Requirements: Indirect Descriptors',
        quote: 'The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the VIRTIO_F_INDIRECT_DESC feature was negotiated. The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor (ie. only one table per descriptor). ... A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags.',
      },
    ],
    onRing: chainRule(['indirect-not-negotiated', 'indirect-nested', 'indirect-next', 'indirect-len']),
  },
  {
    id: 'VU-VQ-006',
    title: 'Device-writable descriptors come after device-readable ones',
    severity: 'MUST',
    spec: [{ doc: VIO, section: '2.7.4.2 Driver Requirements: Message Framing', quote: 'The driver MUST place any device-writable descriptor elements after any device-readable descriptor elements.' }],
    onRing: chainRule(['read-after-write']),
  },
  {
    id: 'VU-VQ-007',
    title: 'Descriptor buffers lie in guest memory',
    severity: 'MUST',
    spec: [
      { doc: VIO, section: '2.7.5 The Virtqueue Descriptor Table', quote: 'The descriptor table refers to the buffers the driver is using for the device. addr is a physical address' },
      { doc: VU, section: 'Memory access', quote: 'Guest addresses map to the vhost memory region containing that guest address.' },
    ],
    onRing: (c, s, prev) => {
      // With ACCESS_PLATFORM buffer addresses are IOVAs, and the sampler knows only the IOTLB entries the
      // back-end has already asked for (vhost-user.rst IOMMU support: the back-end sends a MISS for the
      // others and the frontend answers with an UPDATE): an IOVA missing there is no evidence of a buffer
      // outside guest memory, so only non-IOMMU sessions are judged.
      if (c.model.iommu) return;
      chainRule(['unmapped'])!(c, s, prev);
    },
  },
  {
    id: 'VU-VQ-008',
    title: 'Packed driver event suppression flags: 0, 1, or 2 only with EVENT_IDX',
    severity: 'MUST',
    spec: [
      {
        doc: VIO,
        section: '2.8 Packed Virtqueues, Event Suppression Structure Format',
        quote: '#define RING_EVENT_FLAGS_DESC 0x2 (Enable events for a specific descriptor ... Only valid if VIRTIO_F_RING_EVENT_IDX has been negotiated.) The value 0x3 is reserved',
      },
    ],
    onRing: (c, s) => {
      if (!s.packed || s.driverEventFlags === null) return;
      const f = s.driverEventFlags;
      if (f === 3) c.fail(`ring ${s.index}: driver event flags 0x3 (reserved)`);
      else if (f === 2 && !s.eventIdx) c.fail(`ring ${s.index}: driver event flags RING_EVENT_FLAGS_DESC without EVENT_IDX`);
      else if (f > 3) c.fail(`ring ${s.index}: driver event flags ${hex(f)}`);
      else c.pass();
    },
  },
  // ---------------------------------------------------------------- back-end channel
  {
    id: 'VU-BCH-001',
    title: "The frontend's messages on the back-end channel are well-formed replies",
    severity: 'MUST',
    spec: [
      { doc: VU, section: 'Back-end message types', quote: 'For this type of message, the request is sent by the back-end and the reply is sent by the front-end.' },
      { doc: VU, section: 'Message Specification / Header', quote: 'Bit 2 is the reply flag' },
    ],
    onBackendRx: (c, ev) => {
      if (ev.error) c.fail(`back-end channel: ${ev.rec.name}: ${ev.error}`);
      else if (!ev.replyFlag) c.fail(`back-end channel: ${ev.rec.name} without the reply flag`);
      else c.pass();
    },
  },
  {
    id: 'VU-BCH-002',
    title: 'The frontend answers back-end requests sent with need_reply',
    severity: 'MUST',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_SLAVE_IOTLB_MSG',
        quote: 'If VHOST_USER_PROTOCOL_F_REPLY_ACK is negotiated, and back-end set the VHOST_USER_NEED_REPLY flag, the front-end must respond with zero when operation is successfully completed, or non-zero otherwise.',
      },
    ],
    // Checked by the engine's own bookkeeping of outstanding back-end requests (engine.ts).
  },
  {
    id: 'VU-PRB-001',
    title: 'Probe: an IOTLB miss is answered by an UPDATE covering it, then the ack',
    severity: 'MUST',
    probe: 'iotlb',
    spec: [
      {
        doc: VU,
        section: 'IOMMU support',
        quote: 'For miss events, completed operation means either front-end sent an update message containing the IOTLB entry containing requested address and permission, or front-end sent nothing if the IOTLB miss message is invalid (invalid IOVA or permission).',
      },
    ],
  },
  {
    id: 'VU-PRB-002',
    title: 'Probe: CONFIG_CHANGE_MSG with need_reply is acknowledged',
    severity: 'MUST',
    probe: 'config',
    spec: [
      {
        doc: VU,
        section: 'VHOST_USER_SLAVE_CONFIG_CHANGE_MSG',
        quote: 'If VHOST_USER_PROTOCOL_F_REPLY_ACK is negotiated, and the back-end sets the VHOST_USER_NEED_REPLY flag, the front-end must respond with zero when operation is successfully completed, or non-zero otherwise.',
      },
    ],
  },
  {
    id: 'VU-RCN-001',
    title: 'Probe: after the back-end drops the connection, the frontend reconnects and sets the device up again',
    severity: 'SHOULD',
    probe: 'reconnect',
    spec: [
      { doc: VU, section: 'Communication', quote: 'If *front-end* is unable to send the full message or receives a wrong reply it will close the connection. An optional reconnection mechanism can be implemented.' },
      { doc: VU, section: 'VHOST_USER_SET_OWNER', quote: 'Issued when a new connection is established.' },
    ],
  },
  // ---------------------------------------------------------------- known divergences
  {
    id: 'VU-DIV-001',
    title: 'Packed SET_VRING_BASE for a fresh ring: 0x80008000 (both halves) or 0x8000 (avail half only)',
    severity: 'DIVERGENCE',
    spec: [
      {
        doc: VU,
        section: 'Vring descriptor indices for packed virtqueues',
        quote: 'Bit 15: Driver (Available) Ring Wrap Counter ... Bits 16–30: Index of the entry in the *Used Ring* where the back-end will place the next descriptor. ... Bit 31: Device (Used) Ring Wrap Counter',
      },
    ],
    readings: [
      { id: 'both-halves', who: 'QEMU 7.2 (vhost_virtqueue_start), the spec text', text: 'both indices and both wrap counters: a fresh ring is 0x80008000' },
      { id: 'avail-half', who: 'DPDK 22.11 virtio-user (and DPDK vhost reads only the low half)', text: 'only the avail half: a fresh ring is 0x8000, used = avail implied' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_BASE || !c.model.packed || ev.errorCode?.startsWith('PROTO_')) return;
      const n = vs(ev).num >>> 0;
      if (n >>> 16 === 0 && (n & 0xffff) !== 0) c.diverge('avail-half', `ring ${vs(ev).index}: SET_VRING_BASE ${hex(n)}`);
      else c.diverge('both-halves', `ring ${vs(ev).index}: SET_VRING_BASE ${hex(n)}`);
    },
  },
  {
    id: 'VU-DIV-002',
    title: 'SET_LOG_BASE: u64 or 16-byte log description; reply with LOG_SHMFD',
    severity: 'DIVERGENCE',
    spec: [
      { doc: VU, section: 'VHOST_USER_SET_LOG_BASE', quote: ':request payload: u64 :reply payload: N/A' },
      { doc: VU, section: 'Communication', quote: 'Here is a list of the ones that do: ... VHOST_USER_SET_LOG_BASE (if VHOST_USER_PROTOCOL_F_LOG_SHMFD)' },
    ],
    readings: [
      { id: 'log-description-with-reply', who: 'QEMU 7.2, DPDK, rust-vmm', text: 'the 16-byte log description (size, offset) with the fd; with LOG_SHMFD QEMU waits for a reply and checks only its request id (DPDK replies with an empty body, rust-vmm echoes the description, we reply empty)' },
      { id: 'u64-no-reply', who: "the spec's message table", text: 'a u64 payload and no reply' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_LOG_BASE) return;
      if (ev.errorCode === 'PROTO_BAD_SIZE') c.diverge('u64-no-reply', `SET_LOG_BASE with a ${(ev.payload as Uint8Array).length ?? '?'}-byte payload`);
      else c.diverge('log-description-with-reply', `SET_LOG_BASE with the 16-byte log description, ${ev.rec.fdCount} fd, LOG_SHMFD ${c.model.protoNegotiated(ProtoF.LOG_SHMFD) ? 'negotiated' : 'not negotiated'}`);
    },
  },
  {
    id: 'VU-DIV-003',
    title: 'GET_QUEUE_NUM: queues or queue pairs',
    severity: 'DIVERGENCE',
    spec: [{ doc: VU, section: 'VHOST_USER_GET_QUEUE_NUM', quote: 'Query how many queues the back-end supports.' }],
    readings: [
      { id: 'pairs', who: 'QEMU net/vhost-user.c (compares it with queues=), DPDK vhost (returns queue pairs), this back-end', text: 'the number of queue PAIRS for net: the frontend uses up to 2 x N rings' },
      { id: 'queues', who: 'the spec text', text: 'the number of queues (virtqueues): the frontend uses at most N rings' },
    ],
    onRequest: (c, ev) => {
      if (!RING_REQUESTS.has(ev.rec.id) || c.model.queueNum === null || !ev.payload) return;
      const index = (ev.payload as { index?: number }).index;
      if (typeof index === 'number' && index >= c.model.queueNum && index < 2 * c.model.queueNum) {
        c.diverge('pairs', `GET_QUEUE_NUM answered ${c.model.queueNum}, ${ev.rec.name} uses ring ${index}`);
      }
    },
    onClose: (c) => {
      const m = c.model;
      if (m.queueNum === null || m.maxRingIndex < 0) return;
      if (m.maxRingIndex < m.queueNum) c.diverge(m.queueNum === 1 ? 'pairs' : 'queues', `GET_QUEUE_NUM answered ${m.queueNum}; highest ring used ${m.maxRingIndex} (consistent with both readings)`);
    },
  },
  {
    id: 'VU-DIV-004',
    title: 'SET_VRING_ENABLE before SET_FEATURES acked VHOST_USER_F_PROTOCOL_FEATURES',
    severity: 'DIVERGENCE',
    spec: [{ doc: VU, section: 'VHOST_USER_SET_VRING_ENABLE', quote: 'This request should be sent only when VHOST_USER_F_PROTOCOL_FEATURES has been negotiated.' }],
    readings: [
      { id: 'after-set-protocol-features', who: 'QEMU 7.2 (vhost_user_set_vring_enable at connect, before SET_FEATURES); rust-vmm/vhost#41 accepts it', text: 'negotiated = SET_PROTOCOL_FEATURES done (bit 30 only offered)' },
      { id: 'after-set-features', who: 'the spec text, DPDK virtio-user', text: 'negotiated = acked by SET_FEATURES' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.SET_VRING_ENABLE) return;
      if (c.model.featureAcked(VirtioF.PROTOCOL_FEATURES)) c.diverge('after-set-features', `SET_VRING_ENABLE ring ${vs(ev)?.index} after SET_FEATURES`);
      else if (c.model.ackedProtocolFeatures !== null) c.diverge('after-set-protocol-features', `SET_VRING_ENABLE ring ${vs(ev)?.index} before SET_FEATURES acked bit 30`);
    },
  },
  {
    id: 'VU-DIV-005',
    title: 'IOTLB_MSG acknowledgement: always, or only with need_reply',
    severity: 'DIVERGENCE',
    spec: [
      { doc: VU, section: 'VHOST_USER_IOTLB_MSG', quote: 'The back-end has to acknowledge the request with sending zero as u64 payload for success, non-zero otherwise.' },
      { doc: VU, section: 'VHOST_USER_PROTOCOL_F_REPLY_ACK', quote: 'This indicates that the back-end MUST respond with a Payload VhostUserMsg indicating success or failure.' },
    ],
    readings: [
      { id: 'need-reply', who: 'QEMU 7.2 (always sets need_reply on IOTLB_MSG), DPDK and rust-vmm (answer only need_reply)', text: 'the ack is the REPLY_ACK one: the frontend sets need_reply' },
      { id: 'implicit-reply', who: 'the spec text for IOTLB_MSG', text: 'the back-end acks every IOTLB_MSG, need_reply or not' },
    ],
    onRequest: (c, ev) => {
      if (ev.rec.id !== R.IOTLB_MSG || !ev.payload) return;
      const t = (ev.payload as IotlbMsg).type;
      if (t !== IotlbType.UPDATE && t !== IotlbType.INVALIDATE) return;
      c.diverge(ev.needReply ? 'need-reply' : 'implicit-reply', `IOTLB_MSG type ${t} ${ev.needReply ? 'with' : 'without'} need_reply`);
    },
  },
];

export const RULES_BY_ID: ReadonlyMap<string, Rule> = new Map(RULES.map((r) => [r.id, r]));
