/**
 * Handlers of the requests that reach into the device rather than the rings: the configuration
 * space (GET_CONFIG / SET_CONFIG, protocol feature CONFIG), NET_SET_MTU (NET_MTU), the transfer of
 * the device's internal state (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, DEVICE_STATE;
 * vhost-user.rst "Migrating back-end state") and SEND_RARP (RARP).
 */
import createDebug from 'debug';
import { FrontendReq, type DeviceConfig, type RarpMac, type VhostMessage } from '../../../protocol/index.ts';
import { DeviceStateTransfer } from '../device-state.ts';
import { fail } from '../errors.ts';
import { FD_KINDS, type HandlerTable } from '../session.ts';
import { u64 } from './payload.ts';

const log = createDebug('vhost:device-state');

/** vhost-user.rst SET_CONFIG flags: "VHOST_SET_CONFIG_TYPE_MIGRATION 1". */
const SET_CONFIG_TYPE_MIGRATION = 1;
/** SET_DEVICE_STATE_FD reply: "bit 8 ... no file descriptor is passed back" (we use the frontend's). */
const STATE_FD_NO_FD = 0x100n;
/** Our failure value in those results (bits 0-7 non-zero). */
const STATE_FAILED = 1n;

export const DEVICE_HANDLERS: HandlerTable = {
  [FrontendReq.GET_CONFIG](msg: VhostMessage) {
    const p = msg.payload as DeviceConfig;
    const cfg = this.device.config;
    if (!cfg) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no config space`);
    return { payload: { ...p, payload: cfg.read(p.offset, p.size) } };
  },
  [FrontendReq.SET_CONFIG](msg: VhostMessage) {
    const p = msg.payload as DeviceConfig;
    const cfg = this.device.config;
    if (!cfg) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no config space`);
    if (p.size !== p.payload.length) fail('SESSION_BAD_CONFIG', `SET_CONFIG size ${p.size} but ${p.payload.length} bytes`);
    cfg.write(p.offset, p.payload, (p.flags & SET_CONFIG_TYPE_MIGRATION) !== 0);
  },
  [FrontendReq.NET_SET_MTU](msg: VhostMessage) {
    const mtu = u64(msg);
    const cfg = this.device.config;
    if (!cfg?.setMtu) fail('SESSION_UNSUPPORTED', `the ${this.device.kind} device has no MTU`);
    if (mtu > 0xffffn) fail('SESSION_BAD_CONFIG', `MTU ${mtu} is not a 16-bit value`);
    cfg.setMtu(Number(mtu));
  },
  // Both replies are u64 results (vhost-user.rst): a failure is a non-zero value, not a refused
  // request, so these handlers answer instead of throwing.
  [FrontendReq.SET_DEVICE_STATE_FD](msg: VhostMessage, fds) {
    const p = msg.payload as { transferDirection: number; migrationPhase: number };
    const fd = fds.take(0, FD_KINDS.stream, 'device state fd');
    // "the back-end ... must stop all rings" before the state is transferred (phase STOPPED only,
    // the codec checked it).
    if (this.rings.some((r) => r.queue !== null)) {
      this.sys.close(fd);
      log('%s: SET_DEVICE_STATE_FD while rings run', this.label);
      return { payload: { value: STATE_FAILED | STATE_FD_NO_FD } };
    }
    this.stateTransfer?.close();
    this.stateTransfer = new DeviceStateTransfer(this.sys, fd, p.transferDirection, this.device, this.label);
    // A transfer that failed at once is answered as failed (CHECK_DEVICE_STATE reports it too).
    return { payload: { value: this.stateTransfer.failed ? STATE_FAILED | STATE_FD_NO_FD : STATE_FD_NO_FD } };
  },
  [FrontendReq.CHECK_DEVICE_STATE]() {
    const t = this.stateTransfer;
    // "The front-end ... has to wait until the back-end closes the fd (SAVE) / closes its end (LOAD)
    // before checking": a LOAD whose EOF we have not seen yet is incomplete.
    let error: string | null;
    if (t === null) error = 'CHECK_DEVICE_STATE without a transfer';
    else if (t.result === null) error = 'device state transfer not finished (no EOF yet)';
    else error = t.result === '' ? null : t.result;
    if (t !== null && t.result !== null) this.stateTransfer = null;
    if (error !== null) log('%s: CHECK_DEVICE_STATE: %s', this.label, error);
    return { payload: { value: error === null ? 0n : STATE_FAILED } };
  },
  [FrontendReq.SEND_RARP](msg) {
    const { mac } = msg.payload as RarpMac;
    if (!this.device.sendRarp) fail('SESSION_UNSUPPORTED', 'device cannot send RARP');
    this.device.sendRarp(mac);
  },
};
