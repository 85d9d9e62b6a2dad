/**
 * The virtio-net configuration space as this backend serves it (VIRTIO v1.2 5.1.4) for frontends
 * that use GET_CONFIG / SET_CONFIG (protocol feature CONFIG), NET_SET_MTU (NET_MTU), and the net
 * device's internal state for SET_DEVICE_STATE_FD (DEVICE_STATE).
 *
 *   struct virtio_net_config {            offset
 *     u8   mac[6];                         0
 *     le16 status;                         6   VIRTIO_NET_S_LINK_UP (1), _ANNOUNCE (2)
 *     le16 max_virtqueue_pairs;            8
 *     le16 mtu;                           10
 *     le32 speed;                         12   Mbit/s, 0xffffffff = unknown
 *     u8   duplex;                        16   0 half, 1 full, 0xff unknown
 *     u8   rss_max_key_size;              17
 *     le16 rss_max_indirection_table_length; 18
 *     le32 supported_hash_types;          20
 *   };                                    24 bytes
 *
 * QEMU 7.2's vhost-user-net serves the config space itself and never acks CONFIG; DPDK
 * virtio-user emulates it. Frontends that do ask get these bytes.
 */
import { pack, unpack } from 'msgpackr';
import { BackendError, fail } from '../../core/errors.ts';
import { MAX_DEVICE_STATE_BYTES, type DeviceConfigSpace } from '../../core/device.ts';

export const NET_CONFIG_BYTES = 24;
export const VIRTIO_NET_S_LINK_UP = 1;
/** VIRTIO v1.2 5.1.4.1: "The device MUST set mtu to between 68 and 65535 inclusive". */
export const MIN_MTU = 68;
export const MAX_MTU = 65535;
const DEFAULT_MTU = 1500;
/** Serialized device state version (SET_DEVICE_STATE_FD); bump on any change of the fields. */
const STATE_VERSION = 1;

export class NetConfig implements DeviceConfigSpace {
  readonly size = NET_CONFIG_BYTES;
  mac = new Uint8Array(6);
  status = VIRTIO_NET_S_LINK_UP;
  mtu = DEFAULT_MTU;
  /** Called after the backend itself changed the space (link state, MTU): CONFIG_CHANGE_MSG. */
  onChange: (() => void) | null = null;

  constructor(readonly maxQueuePairs: number) {}

  /** The whole space, little-endian as the spec lays it out. */
  bytes(): Uint8Array {
    const b = new Uint8Array(NET_CONFIG_BYTES);
    const dv = new DataView(b.buffer);
    b.set(this.mac, 0);
    dv.setUint16(6, this.status, true);
    dv.setUint16(8, this.maxQueuePairs, true);
    dv.setUint16(10, this.mtu, true);
    dv.setUint32(12, 0xffffffff, true); // speed unknown
    b[16] = 0xff; // duplex unknown
    return b;
  }

  /** GET_CONFIG: [offset, offset + size) of the space; a range outside it is refused. */
  read(offset: number, size: number): Uint8Array {
    if (offset + size > NET_CONFIG_BYTES || size === 0) {
      fail('SESSION_BAD_CONFIG', `config range [${offset}, +${size}) is outside the ${NET_CONFIG_BYTES}-byte net config space`);
    }
    return this.bytes().slice(offset, offset + size);
  }

  /**
   * SET_CONFIG. VIRTIO v1.2 5.1.4: the net config space is read-only for the driver (mac is
   * writable only for legacy drivers); a frontend restoring a migrated device (flags = MIGRATION)
   * may write mac, status and mtu. Anything else is refused, nothing is half-written.
   */
  write(offset: number, bytes: Uint8Array, migration: boolean): void {
    const end = offset + bytes.length;
    if (end > NET_CONFIG_BYTES || bytes.length === 0) fail('SESSION_BAD_CONFIG', `config write [${offset}, +${bytes.length}) is outside the space`);
    const writableEnd = migration ? 12 : 6;
    if (end > writableEnd) {
      fail('SESSION_BAD_CONFIG', `config bytes [${offset}, ${end}) are read-only${migration ? '' : ' (only mac, for legacy drivers)'}`);
    }
    const next = this.bytes();
    next.set(bytes, offset);
    const dv = new DataView(next.buffer);
    const mtu = dv.getUint16(10, true);
    if (mtu < MIN_MTU) fail('SESSION_BAD_CONFIG', `mtu ${mtu} is below ${MIN_MTU}`);
    this.mac = next.slice(0, 6);
    this.status = dv.getUint16(6, true);
    this.mtu = mtu;
  }

  /** NET_SET_MTU (vhost-user.rst: "Set host MTU value exposed to the guest"). */
  setMtu(mtu: number): void {
    if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > MAX_MTU) fail('SESSION_BAD_CONFIG', `MTU ${mtu} is not in ${MIN_MTU}..${MAX_MTU}`);
    this.mtu = mtu;
  }

  /** The backend's view of the link (e.g. the port went down): a config change the driver must hear of. */
  setLinkUp(up: boolean): void {
    const next = up ? this.status | VIRTIO_NET_S_LINK_UP : this.status & ~VIRTIO_NET_S_LINK_UP;
    if (next === this.status) return;
    this.status = next;
    this.onChange?.();
  }

  // ---- device state (SET_DEVICE_STATE_FD) --------------------------------------------------

  /** The device's internal state: what a destination backend needs that is not in rings or memory. */
  saveState(): Uint8Array {
    return pack({ v: STATE_VERSION, kind: 'net', mac: Array.from(this.mac), status: this.status, mtu: this.mtu, pairs: this.maxQueuePairs });
  }

  /** Loads a state saved by saveState (hostile input: every field checked, nothing applied on error). */
  loadState(bytes: Uint8Array): void {
    if (bytes.length === 0 || bytes.length > MAX_DEVICE_STATE_BYTES) fail('SESSION_BAD_STATE_DATA', `device state of ${bytes.length} bytes`);
    let s: unknown;
    try {
      s = unpack(bytes);
    } catch (e) {
      throw new BackendError('SESSION_BAD_STATE_DATA', `device state does not decode: ${(e as Error).message}`, { cause: e });
    }
    const o = s as { v?: unknown; kind?: unknown; mac?: unknown; status?: unknown; mtu?: unknown; pairs?: unknown };
    if (typeof s !== 'object' || s === null) fail('SESSION_BAD_STATE_DATA', 'device state is not a map');
    if (o.v !== STATE_VERSION || o.kind !== 'net') fail('SESSION_BAD_STATE_DATA', `device state version/kind ${String(o.v)}/${String(o.kind)} is not 1/net`);
    const mac = o.mac;
    if (!Array.isArray(mac) || mac.length !== 6 || !mac.every((x) => Number.isInteger(x) && x >= 0 && x <= 255)) {
      fail('SESSION_BAD_STATE_DATA', 'device state mac is not 6 bytes');
    }
    if (!Number.isInteger(o.status) || (o.status as number) < 0 || (o.status as number) > 0xffff) fail('SESSION_BAD_STATE_DATA', 'bad status');
    if (!Number.isInteger(o.mtu) || (o.mtu as number) < MIN_MTU || (o.mtu as number) > MAX_MTU) fail('SESSION_BAD_STATE_DATA', 'bad mtu');
    if (o.pairs !== this.maxQueuePairs) {
      fail('SESSION_BAD_STATE_DATA', `state of a device with ${String(o.pairs)} queue pairs, this one has ${this.maxQueuePairs}`);
    }
    this.mac = Uint8Array.from(mac as number[]);
    this.status = o.status as number;
    this.mtu = o.mtu as number;
  }
}
