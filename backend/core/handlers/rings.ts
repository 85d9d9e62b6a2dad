/**
 * Handlers of ring configuration (vhost-user.rst "Ring states"): SET_VRING_NUM / ADDR / BASE /
 * ENDIAN / ENABLE, GET_VRING_BASE, the three eventfds (SET_VRING_KICK / CALL / ERR), in-band
 * VRING_KICK, and the back-end channel they may use (SET_BACKEND_REQ_FD). The ring runtime does
 * the work; these only check and record.
 */
import createDebug from 'debug';
import { FrontendReq, ProtoF, VirtioF, has, type VringAddr, type VringFd, type VringState } from '../../../protocol/index.ts';
import { BackendChannel } from '../backend-channel.ts';
import { fail } from '../errors.ts';
import { FD_KINDS, type HandlerTable } from '../session.ts';

const log = createDebug('vhost:session');

export const RING_HANDLERS: HandlerTable = {
  [FrontendReq.SET_VRING_NUM](msg) {
    const p = msg.payload as VringState;
    const r = this.runtime.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_NUM on started ring ${p.index}`);
    // virtio v1.2 2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is
    // 32768." 2.8 (packed) drops the power-of-two rule.
    if (p.num === 0 || p.num > 32768) fail('SESSION_BAD_RING', `ring ${p.index}: size ${p.num} is not in 1..32768`);
    if (!this.packed && (p.num & (p.num - 1)) !== 0) {
      fail('SESSION_BAD_RING', `ring ${p.index}: size ${p.num} is not a power of two (split ring)`);
    }
    r.num = p.num;
  },
  [FrontendReq.SET_VRING_ADDR](msg) {
    const p = msg.payload as VringAddr;
    const r = this.runtime.ring(p.index);
    r.addr = {
      flags: p.flags,
      descUva: p.descUserAddr,
      usedUva: p.usedUserAddr,
      availUva: p.availUserAddr,
      logGpa: p.logGuestAddr,
    };
    r.broken = null;
    // A running ring picks up new addresses by restarting (the frontend may move rings while
    // enabled, e.g. when LOG_ALL toggles): force the rebuild.
    if (r.queue) this.runtime.stopQueue(r);
  },
  [FrontendReq.SET_VRING_BASE](msg) {
    const p = msg.payload as VringState;
    const r = this.runtime.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_BASE on started ring ${p.index}`);
    r.base = p.num >>> 0; // interpreted per ring format when the ring starts
    r.broken = null;
  },
  [FrontendReq.GET_VRING_BASE](msg) {
    const p = msg.payload as VringState;
    const base = this.runtime.stop(this.runtime.ring(p.index));
    return { payload: { index: p.index, num: base } };
  },
  [FrontendReq.SET_VRING_KICK](msg, fds) {
    const p = msg.payload as VringFd;
    const ring = this.runtime.ring(p.index);
    this.runtime.replaceKick(ring, p.noFd ? null : fds.take(0, FD_KINDS.eventfd, 'kick fd'));
    this.runtime.start(ring);
  },
  [FrontendReq.SET_VRING_CALL](msg, fds) {
    const p = msg.payload as VringFd;
    this.runtime.setCall(this.runtime.ring(p.index), p.noFd ? null : fds.take(0, FD_KINDS.eventfd, 'call fd'));
  },
  [FrontendReq.SET_VRING_ERR](msg, fds) {
    const p = msg.payload as VringFd;
    this.runtime.setErr(this.runtime.ring(p.index), p.noFd ? null : fds.take(0, FD_KINDS.eventfd, 'err fd'));
  },
  [FrontendReq.SET_VRING_ENDIAN](msg) {
    // vhost-user.rst SET_VRING_ENDIAN (CROSS_ENDIAN and num 0/1 are checked by the table row). Taken
    // while the ring is stopped, before or after SET_VRING_BASE (QEMU sends it after; D33). Modern
    // rings are little-endian (virtio v1.2 2.7: VERSION_1 rings are le; packed needs VERSION_1).
    const p = msg.payload as VringState;
    const r = this.runtime.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_ENDIAN on started ring ${p.index}`);
    if (p.num === 1 && (this.packed || has(this.ackedFeatures, VirtioF.VERSION_1))) {
      fail('SESSION_BAD_RING', `ring ${p.index}: big-endian refused, VERSION_1 / RING_PACKED rings are little-endian`);
    }
    this.runtime.bigEndian[p.index] = p.num === 1;
    log('%s: ring %d is %s-endian', this.label, p.index, p.num === 1 ? 'big' : 'little');
  },
  [FrontendReq.SET_VRING_ENABLE](msg) {
    const p = msg.payload as VringState;
    const r = this.runtime.ring(p.index);
    if (p.num !== 0 && p.num !== 1) fail('SESSION_BAD_STATE', `SET_VRING_ENABLE with ${p.num} (must be 0 or 1)`);
    r.enabled = p.num === 1;
  },
  [FrontendReq.VRING_KICK](msg) {
    const p = msg.payload as VringState;
    this.runtime.inbandKick(this.runtime.ring(p.index));
  },
  [FrontendReq.SET_BACKEND_REQ_FD](_msg, fds) {
    const fd = fds.take(0, FD_KINDS.socket, 'back-end channel');
    this.backendChannel?.close();
    this.backendChannel = new BackendChannel(fd, this.sys, {
      replyAck: () => this.protoNegotiated(ProtoF.REPLY_ACK),
      ...(this.trace ? { trace: this.trace } : {}),
      label: this.label,
    });
  },
};
