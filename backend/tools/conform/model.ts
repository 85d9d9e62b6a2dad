/**
 * The conformance engine's own model of one frontend session, rebuilt from the message stream alone
 * (the trace records): what was offered, negotiated, mapped and configured, as the FRONTEND must see
 * it. Rules judge each message against this model as it was *before* the message; the session's
 * real state is not consulted for protocol rules (a frontend is judged by what it said and what we
 * answered, not by our implementation's reading of it).
 */
import { FrontendReq as R, VirtioF, has } from '../../../protocol/index.ts';
import type { MemoryRegion, MemoryTable, SingleMemoryRegion, VringAddr, VringFd, VringState } from '../../../protocol/index.ts';

export interface ModelRegion {
  gpa: bigint;
  size: bigint;
  uva: bigint;
}

export interface ModelRing {
  index: number;
  num: number;
  addr: VringAddr | null;
  /** SET_VRING_BASE value as sent (null: none since the last stop). */
  base: number | null;
  /** SET_VRING_KICK seen since the last GET_VRING_BASE (vhost-user.rst "Ring states": started). */
  started: boolean;
  /** SET_VRING_ENABLE state (or implicit without PROTOCOL_FEATURES). */
  enabled: boolean;
  everEnabled: boolean;
  kickNoFd: boolean;
  /** Consecutive samples with buffers posted while never enabled (VU-RING-008). */
  disabledWithBuffers: number;
  /** Bumped whenever the ring is (re)configured: ring samples of an older generation are not compared. */
  generation: number;
}

export class SessionModel {
  /** Our GET_FEATURES reply (null: the frontend never asked in this session). */
  offeredFeatures: bigint | null = null;
  offeredProtocolFeatures: bigint | null = null;
  /** SET_FEATURES as accepted (null: none yet). */
  ackedFeatures: bigint | null = null;
  ackedProtocolFeatures: bigint | null = null;
  owner = false;
  /** Our GET_QUEUE_NUM answer. */
  queueNum: number | null = null;
  /** Our GET_MAX_MEM_SLOTS answer. */
  maxMemSlots: number | null = null;
  regions: ModelRegion[] = [];
  readonly rings = new Map<number, ModelRing>();
  /** Highest vring index the frontend addressed. */
  maxRingIndex = -1;
  /** Requests seen, in order (names), for order rules and the report. */
  readonly requests: string[] = [];
  status = 0;

  constructor(
    readonly sessionNo: number,
    /** Rings the device exposes (2 x queue pairs for net). */
    readonly deviceRings: number,
  ) {}

  protoNegotiated(f: number): boolean {
    return this.ackedProtocolFeatures !== null && has(this.ackedProtocolFeatures, f);
  }
  featureAcked(f: number): boolean {
    return this.ackedFeatures !== null && has(this.ackedFeatures, f);
  }
  get packed(): boolean {
    return this.featureAcked(VirtioF.RING_PACKED);
  }
  get iommu(): boolean {
    return this.featureAcked(VirtioF.ACCESS_PLATFORM);
  }
  /** PROTOCOL_FEATURES in force for ring-enable semantics: acked, or SET_PROTOCOL_FEATURES used (D2). */
  get protocolFeaturesInForce(): boolean {
    return this.featureAcked(VirtioF.PROTOCOL_FEATURES) || this.ackedProtocolFeatures !== null;
  }

  ring(index: number): ModelRing {
    let r = this.rings.get(index);
    if (!r) {
      r = { index, num: 0, addr: null, base: null, started: false, enabled: false, everEnabled: false, kickNoFd: false, generation: 0, disabledWithBuffers: 0 };
      this.rings.set(index, r);
    }
    return r;
  }

  /** User address -> the region holding [uva, uva + len), or null. */
  regionOfUva(uva: bigint, len: bigint): ModelRegion | null {
    for (const r of this.regions) if (uva >= r.uva && uva + len <= r.uva + r.size) return r;
    return null;
  }

  /** Apply a request the backend accepted (no error). */
  applyRequest(id: number, payload: unknown): void {
    switch (id) {
      case R.SET_FEATURES: {
        this.ackedFeatures = (payload as { value: bigint }).value;
        if (!this.protocolFeaturesInForce) for (const r of this.rings.values()) if (r.started) this.enable(r, true);
        break;
      }
      case R.SET_PROTOCOL_FEATURES:
        this.ackedProtocolFeatures = (payload as { value: bigint }).value;
        break;
      case R.SET_OWNER:
        this.owner = true;
        break;
      case R.RESET_OWNER:
      case R.RESET_DEVICE:
        for (const r of this.rings.values()) {
          r.started = false;
          r.enabled = false;
          r.num = 0;
          r.addr = null;
          r.base = null;
          r.generation++;
        }
        if (id === R.RESET_DEVICE) {
          this.ackedFeatures = null;
          this.status = 0;
        }
        break;
      case R.SET_MEM_TABLE: {
        const t = payload as MemoryTable;
        // A 0-region SET_MEM_TABLE is QEMU's postcopy ack (codec NOTE 8), not a new table.
        if (t.nregions > 0) this.regions = t.regions.map(toModelRegion);
        break;
      }
      case R.ADD_MEM_REG:
        this.regions.push(toModelRegion((payload as SingleMemoryRegion).region));
        break;
      case R.REM_MEM_REG: {
        const x = toModelRegion((payload as SingleMemoryRegion).region);
        this.regions = this.regions.filter((r) => !(r.gpa === x.gpa && r.uva === x.uva && r.size === x.size));
        break;
      }
      case R.SET_VRING_NUM: {
        const p = payload as VringState;
        const r = this.ring(p.index);
        r.num = p.num;
        r.generation++;
        break;
      }
      case R.SET_VRING_ADDR: {
        const p = payload as VringAddr;
        const r = this.ring(p.index);
        r.addr = p;
        r.generation++;
        break;
      }
      case R.SET_VRING_BASE: {
        const p = payload as VringState;
        const r = this.ring(p.index);
        r.base = p.num >>> 0;
        r.generation++;
        break;
      }
      case R.GET_VRING_BASE: {
        const r = this.ring((payload as VringState).index);
        r.started = false;
        r.generation++;
        break;
      }
      case R.SET_VRING_KICK: {
        const p = payload as VringFd;
        const r = this.ring(p.index);
        r.started = true;
        r.kickNoFd = p.noFd;
        r.generation++;
        if (!this.protocolFeaturesInForce) this.enable(r, true);
        break;
      }
      case R.SET_VRING_ENABLE: {
        const p = payload as VringState;
        this.enable(this.ring(p.index), p.num === 1);
        break;
      }
      case R.SET_STATUS:
        this.status = Number((payload as { value: bigint }).value & 0xffn);
        break;
    }
  }

  private enable(r: ModelRing, on: boolean): void {
    r.enabled = on;
    if (on) r.everEnabled = true;
  }

  /** Apply one of our replies. */
  applyReply(id: number, payload: unknown): void {
    const v = (payload as { value?: unknown } | null)?.value;
    if (typeof v !== 'bigint') return;
    if (id === R.GET_FEATURES) this.offeredFeatures = v;
    else if (id === R.GET_PROTOCOL_FEATURES) this.offeredProtocolFeatures = v;
    else if (id === R.GET_QUEUE_NUM) this.queueNum = Number(v);
    else if (id === R.GET_MAX_MEM_SLOTS) this.maxMemSlots = Number(v);
  }
}

function toModelRegion(r: MemoryRegion): ModelRegion {
  return { gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr };
}

/** Ring area byte sizes (virtio v1.2 2.7 table "Virtqueue Part / Alignment / Size"; 2.8 for packed). */
export function ringAreas(num: number, packed: boolean, eventIdx: boolean): { desc: number; avail: number; used: number } {
  if (packed) return { desc: 16 * num, avail: 4, used: 4 };
  const ev = eventIdx ? 2 : 0;
  return { desc: 16 * num, avail: 4 + 2 * num + ev, used: 4 + 8 * num + ev };
}

