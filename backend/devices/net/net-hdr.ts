/**
 * struct virtio_net_hdr (virtio v1.2 §5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
 * csum_offset, and num_buffers (present when VERSION_1 or MRG_RXBUF is negotiated).
 * No offloads are negotiated yet, so RX headers are all zero except num_buffers, and TX headers
 * are skipped.
 */
import type { ChainWriter } from '../../../virtqueue/index.ts';

export const NET_HDR_LEGACY_BYTES = 10;
export const NET_HDR_MRG_BYTES = 12;

const hdr = new Uint8Array(NET_HDR_MRG_BYTES);

/** Writes an RX header with no offload flags; num_buffers is a le16 at offset 10. */
export function writeRxHeader(w: ChainWriter, hdrLen: number, numBuffers: number): void {
  hdr.fill(0);
  if (hdrLen === NET_HDR_MRG_BYTES) {
    hdr[10] = numBuffers & 0xff;
    hdr[11] = numBuffers >> 8;
  }
  w.write(hdr, 0, hdrLen);
}
