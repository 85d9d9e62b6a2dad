/**
 * Handlers of guest memory and migration: the memory table (SET_MEM_TABLE, CONFIGURE_MEM_SLOTS'
 * GET_MAX_MEM_SLOTS / ADD_MEM_REG / REM_MEM_REG), the dirty log (SET_LOG_BASE, SET_LOG_FD), postcopy
 * (POSTCOPY_ADVISE / LISTEN / END), the inflight buffer (GET/SET_INFLIGHT_FD) and the IOTLB (IOTLB_MSG).
 */
import {
  FrontendReq,
  IotlbType,
  ProtoF,
  type IotlbMsg,
  type LogDescription,
  type MemoryTable as MemoryTablePayload,
  type SingleMemoryRegion,
} from '../../../protocol/index.ts';
import { fail } from '../errors.ts';
import { hex } from '../hex.ts';
import type { MemoryTable } from '../memory-table.ts';
import { InflightBuffer, type InflightShape } from '../inflight-buffer.ts';
import { FD_KINDS, MAX_MEM_SLOTS, type HandlerTable } from '../session.ts';
import { regionOf } from './payload.ts';

export const MEMORY_HANDLERS: HandlerTable = {
  [FrontendReq.SET_MEM_TABLE](msg, fds) {
    const p = msg.payload as MemoryTablePayload;
    this.setMemory(p.regions.map(regionOf), fds.takeAll(FD_KINDS.mappable, 'memory region'));
    if (!this.migration.listening) return;
    // vhost-user.rst SET_MEM_TABLE: in postcopy "the back-end replies with the bases of the memory
    // mapped regions"; the frontend then acks (Session.postcopyAck).
    const views = this.memory.views();
    this.migration.ackPending = msg.id;
    return {
      payload: {
        ...p,
        regions: p.regions.map((r, i) => ({ ...r, userspaceAddr: this.migration.addressOf(views[i]!.ab) })),
      },
    };
  },
  [FrontendReq.GET_MAX_MEM_SLOTS]() {
    return { payload: { value: BigInt(MAX_MEM_SLOTS) } };
  },
  [FrontendReq.ADD_MEM_REG](msg, fds) {
    const p = msg.payload as SingleMemoryRegion;
    const index = this.addMemory(regionOf(p.region), fds.take(0, FD_KINDS.mappable, 'memory region'));
    if (!this.migration.listening) return;
    // Postcopy (QEMU send_add_regions): each region is answered with our mapping's address; one
    // ack follows the last one.
    const views = this.memory.views();
    this.migration.ackPending = msg.id;
    return { payload: { ...p, region: { ...p.region, userspaceAddr: this.migration.addressOf(views[index]!.ab) } } };
  },
  [FrontendReq.REM_MEM_REG](msg) {
    const p = msg.payload as SingleMemoryRegion;
    this.removeMemory(regionOf(p.region));
  },
  [FrontendReq.SET_LOG_BASE](msg, fds) {
    const p = msg.payload as LogDescription;
    // Without LOG_SHMFD the log lives in the frontend's own memory, which we cannot reach.
    if (!this.protoNegotiated(ProtoF.LOG_SHMFD) || fds.fds.length === 0) {
      fail('SESSION_UNSUPPORTED', 'SET_LOG_BASE without a log fd (LOG_SHMFD) is not supported');
    }
    this.migration.setLogBase(fds.take(0, FD_KINDS.mappable, 'dirty log'), p.mmapSize, p.mmapOffset);
    // Reply body: see protocol/messages.ts logBaseReply (empty, like DPDK).
    return { payload: { bytes: new Uint8Array(0) } };
  },
  [FrontendReq.SET_LOG_FD](_msg, fds) {
    this.migration.setLogFd(fds.take(0, FD_KINDS.eventfd, 'log fd'));
  },
  [FrontendReq.POSTCOPY_ADVISE]() {
    return { payload: null, fds: [this.migration.advise()] };
  },
  [FrontendReq.POSTCOPY_LISTEN]() {
    this.migration.listen(this.memory.regionCount);
  },
  [FrontendReq.POSTCOPY_END]() {
    this.migration.end();
    return { payload: { value: 0n } };
  },
  [FrontendReq.GET_INFLIGHT_FD](msg) {
    const p = msg.payload as InflightShape;
    this.inflight?.close();
    this.inflight = null;
    this.inflight = InflightBuffer.create(this.sys, this.packed ? 'packed' : 'split', p.numQueues, p.queueSize);
    const { shape, fd } = this.inflight.describe();
    return { payload: shape, fds: [fd] };
  },
  [FrontendReq.SET_INFLIGHT_FD](msg, fds) {
    const p = msg.payload as InflightShape;
    const buf = InflightBuffer.adopt(this.sys, fds.take(0, FD_KINDS.mappable, 'inflight buffer'), this.packed ? 'packed' : 'split', p);
    this.inflight?.close();
    this.inflight = buf;
  },
  [FrontendReq.IOTLB_MSG](msg) {
    const p = msg.payload as IotlbMsg;
    if (this.iommu === null) fail('SESSION_BAD_STATE', 'IOTLB_MSG without ACCESS_PLATFORM negotiated');
    // An UPDATE maps IOVAs onto the frontend's user addresses: they must be memory we were given
    // (vhost-user.rst "IOMMU support": uaddr is a user address of the memory table; D47).
    if (p.type === IotlbType.UPDATE && !uvaInTable(this.memory, p.userAddr, p.size)) {
      fail('SESSION_BAD_MEMORY', `IOTLB UPDATE of user addresses ${hex(p.userAddr)} (+${hex(p.size)}) outside the memory table`);
    }
    const err = this.iommu.apply(p);
    if (err !== null) fail('SESSION_BAD_STATE', `IOTLB_MSG refused: ${err}`);
    this.runtime.iotlbChanged(p);
  },
};

function uvaInTable(memory: MemoryTable, uaddr: bigint, size: bigint): boolean {
  if (size === 0n || uaddr + size > BigInt(Number.MAX_SAFE_INTEGER)) return false;
  return memory.coversUva(Number(uaddr), Number(size));
}
