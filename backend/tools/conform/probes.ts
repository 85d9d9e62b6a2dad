/**
 * Active probes: where the spec lets the back-end ask something of the frontend, ask it and check
 * the answer. Only the back-end channel the frontend negotiated (BACKEND_REQ, SET_BACKEND_REQ_FD) is
 * used, and only with requests whose answer changes nothing for the guest:
 * - iotlb (VU-PRB-001): an IOTLB miss for an IOVA the frontend already mapped for a ring (QEMU answers
 *   with the same UPDATE, which our IOTLB merges); needs ACCESS_PLATFORM.
 * - config (VU-PRB-002): CONFIG_CHANGE_MSG (the frontend may re-read the config space); needs CONFIG.
 * Both go with need_reply when REPLY_ACK is negotiated (VU-BCH-002 then also judges the answer).
 * The reconnect probe needs the endpoint and lives in runner.ts.
 */
import createDebug from 'debug';
import { BackendReq, IotlbType, ProtoF } from '../../../protocol/index.ts';
import type { ConformEngine } from './engine.ts';

const log = createDebug('vhost:conform:probe');

export type ProbeName = 'iotlb' | 'config' | 'reconnect';
export const PROBES: readonly ProbeName[] = ['iotlb', 'config', 'reconnect'];

/** How long an UPDATE answering our miss may lag behind the ack (two sockets: no ordering between them). */
const UPDATE_GRACE_MS = 1000;

/** VU-PRB-001. Resolves when judged (or not applicable). */
export async function probeIotlb(engine: ConformEngine): Promise<void> {
  const model = engine.model;
  const session = engine.currentSession;
  const ch = session?.backendChannel;
  if (!model || !session || !ch?.isOpen || !model.iommu) return;
  const ring = [...model.rings.values()].find((r) => r.started && r.addr !== null);
  if (!ring) return;
  const iova = ring.addr!.descUserAddr;
  const sent = Date.now();
  log('IOTLB miss probe at iova 0x%s', iova.toString(16));
  const covered = () => engine.iotlbUpdates.some((u) => u.at >= sent && u.iova <= iova && iova < u.iova + u.size);
  try {
    const ack = await ch.request(BackendReq.IOTLB_MSG, { iova, size: 0n, userAddr: 0n, perm: 1, type: IotlbType.MISS }, { needReply: true });
    const end = Date.now() + UPDATE_GRACE_MS;
    while (!covered() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    if (!covered()) engine.record('VU-PRB-001', 'fail', `IOTLB miss at 0x${iova.toString(16)} (a mapped ring IOVA): no covering UPDATE (ack ${ack})`);
    else if (ack !== null && ack !== 0n) engine.record('VU-PRB-001', 'fail', `IOTLB miss at 0x${iova.toString(16)}: UPDATE sent but the ack is ${ack}`);
    else engine.record('VU-PRB-001', 'pass');
  } catch (e) {
    engine.record('VU-PRB-001', 'fail', `IOTLB miss probe: ${(e as Error).message}`);
  }
}

/** VU-PRB-002. */
export async function probeConfigChange(engine: ConformEngine): Promise<void> {
  const model = engine.model;
  const ch = engine.currentSession?.backendChannel;
  if (!model || !ch?.isOpen || !model.protoNegotiated(ProtoF.CONFIG) || !model.protoNegotiated(ProtoF.REPLY_ACK)) return;
  try {
    const ack = await ch.request(BackendReq.CONFIG_CHANGE_MSG, null, { needReply: true });
    if (ack === null) return;
    engine.record('VU-PRB-002', 'pass');
    if (ack !== 0n) log('CONFIG_CHANGE_MSG answered %s (failure reported)', ack);
  } catch (e) {
    engine.record('VU-PRB-002', 'fail', `CONFIG_CHANGE_MSG: ${(e as Error).message}`);
  }
}
