/**
 * vIOMMU support of one session (VIRTIO_F_ACCESS_PLATFORM; vhost-user.rst "IOMMU support"): with
 * the feature negotiated every ring and buffer address is an IOVA. Translations come from the
 * frontend's IOTLB_MSG updates into an IOTLB cache (virtqueue/iotlb.ts); an address the cache does
 * not know is a miss: the queue stops there (nothing consumed), we send an IOTLB_MSG MISS on the
 * back-end channel, and the queue resumes when the frontend's UPDATE arrives. A device access the
 * mapping's permissions forbid is an ACCESS_FAIL: reported, and the ring is broken.
 */
import createDebug from 'debug';
import { BackendReq, IotlbType, type IotlbMsg } from '../../protocol/index.ts';
import {
  IotlbCache,
  IotlbMemory,
  iotlbPermBits,
  type IotlbAccess,
  type UvaMemory,
} from '../../virtqueue/iotlb.ts';
import type { BackendChannel } from './backend-channel.ts';

const log = createDebug('vhost:iommu');

export class Iommu {
  readonly cache = new IotlbCache();
  readonly memory: IotlbMemory;
  /** Misses and access failures sent to the frontend (diagnostics, tests). */
  missesSent = 0;
  accessFailsSent = 0;

  constructor(
    backing: UvaMemory,
    private readonly channel: () => BackendChannel | null,
    private readonly label: string,
  ) {
    this.memory = new IotlbMemory(this.cache, backing);
    this.memory.onFault = (kind, access) => this.onFault(kind, access);
  }

  /** IOTLB_MSG from the frontend; null = applied, else why it was refused. */
  apply(msg: IotlbMsg): string | null {
    return this.cache.applyMessage(msg);
  }

  /**
   * A translation failed inside the engine. Sending happens after the current turn: the engine is
   * in the middle of a pop and must not re-enter the session.
   */
  private onFault(kind: 'miss' | 'denied', access: IotlbAccess): void {
    if (kind === 'miss' && !this.cache.shouldSendMiss(access.iova, access.write)) return;
    const type = kind === 'miss' ? IotlbType.MISS : IotlbType.ACCESS_FAIL;
    // vhost-user.rst: a miss carries the IOVA and the access wanted ("perm"); QEMU treats anything
    // but RO as a write.
    const msg: IotlbMsg = { iova: BigInt(access.iova), size: 0n, userAddr: 0n, perm: iotlbPermBits(access.write ? 'wo' : 'ro'), type };
    queueMicrotask(() => {
      const ch = this.channel();
      if (ch === null || !ch.isOpen) {
        log('%s: IOTLB %s at %s but no backend channel to report it', this.label, kind, access.iova.toString(16));
        return;
      }
      if (kind === 'miss') this.missesSent++;
      else this.accessFailsSent++;
      log('%s: IOTLB %s at iova 0x%s (%s)', this.label, kind, access.iova.toString(16), access.write ? 'write' : 'read');
      ch.request(BackendReq.IOTLB_MSG, msg, { needReply: true }).catch((e: Error) =>
        log('%s: IOTLB %s report failed: %s', this.label, kind, e.message),
      );
    });
  }
}
