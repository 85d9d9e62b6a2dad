/**
 * Handlers of feature negotiation and device lifecycle: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES,
 * SET/RESET_OWNER, GET_QUEUE_NUM, GET/SET_STATUS, RESET_DEVICE.
 */
import { FrontendReq, ProtoF, has } from '../../../protocol/index.ts';
import { fail } from '../errors.ts';
import { hex } from '../hex.ts';
import type { HandlerTable } from '../session.ts';
import { u64 } from './payload.ts';

export const NEGOTIATION_HANDLERS: HandlerTable = {
  [FrontendReq.GET_FEATURES]() {
    return { payload: { value: this.offeredFeatures } };
  },
  [FrontendReq.SET_FEATURES](msg) {
    this.setAckedFeatures(u64(msg));
  },
  [FrontendReq.GET_PROTOCOL_FEATURES]() {
    return { payload: { value: this.offeredProtocolFeatures } };
  },
  [FrontendReq.SET_PROTOCOL_FEATURES](msg) {
    const f = u64(msg);
    const extra = f & ~this.offeredProtocolFeatures;
    if (extra !== 0n) fail('SESSION_BAD_FEATURES', `SET_PROTOCOL_FEATURES acks bits not offered: ${hex(extra)}`);
    // vhost-user.rst "In-band notifications": they travel on the back-end channel and each is acked,
    // so INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK "is an error".
    if (has(f, ProtoF.INBAND_NOTIFICATIONS) && !(has(f, ProtoF.BACKEND_REQ) && has(f, ProtoF.REPLY_ACK))) {
      fail('SESSION_BAD_FEATURES', 'INBAND_NOTIFICATIONS needs BACKEND_REQ and REPLY_ACK negotiated with it');
    }
    this.ackedProtocolFeatures = f;
    this.protocolFeaturesSet = true;
  },
  [FrontendReq.SET_OWNER]() {
    this.owner = true;
  },
  [FrontendReq.RESET_OWNER]() {
    // vhost-user.rst: "no longer used ... recommended that back-ends either ignore this message, or
    // use it to disable all rings". We return every ring to its initial state (stopped, disabled,
    // unconfigured) and keep memory, features and the dirty log (D3).
    this.runtime.resetAll();
  },
  [FrontendReq.GET_QUEUE_NUM]() {
    return { payload: { value: BigInt(this.device.queueNum) } };
  },
  [FrontendReq.GET_STATUS]() {
    return { payload: { value: BigInt(this.status) } };
  },
  [FrontendReq.SET_STATUS](msg) {
    const s = u64(msg);
    if (s > 0xffn) fail('SESSION_BAD_STATE', `SET_STATUS ${hex(s)} is not a device status byte`);
    this.status = Number(s);
  },
  [FrontendReq.RESET_DEVICE]() {
    // "reset all internal device state to the initial state": rings, features, status, the device,
    // and migration state (dirty log, postcopy). The memory table stays: the spec keeps it ("until
    // the frontend sends a new one") and QEMU does not resend it.
    this.resetDevice();
  },
};
