/**
 * struct virtio_net_hdr (virtio v1.2 §5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
 * csum_offset, and num_buffers (present when VERSION_1 or MRG_RXBUF is negotiated: 12 bytes, else 10).
 *
 * One NetHdr object travels with a frame between device and port (reused, valid during the call).
 * Its fields are values in host order; only the guest's copy has a byte order: little-endian, or
 * big-endian for a legacy device (no VERSION_1) in a big-endian guest: with the legacy interface
 * the header's fields are in the guest's native endianness (virtio v1.2 5.1.6.1, "Legacy Interface:
 * Device Operation"), like the ring (vhost-user.rst SET_VRING_ENDIAN). read()/write() take that order.
 */

export const NET_HDR_LEGACY_BYTES = 10;
export const NET_HDR_MRG_BYTES = 12;

/** flags (§5.1.6): the driver/device left a partial checksum to complete. */
export const NET_HDR_F_NEEDS_CSUM = 1;
/** flags: the checksum was already validated (a receive-side hint). */
export const NET_HDR_F_DATA_VALID = 2;

/** gso_type values (§5.1.6). */
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_UDP = 3;
export const GSO_TCPV6 = 4;
export const GSO_ECN = 0x80;

/** Int32Array stores are in host order: writeWords lays out a little-endian header only on such a host. */
const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export class NetHdr {
  flags = 0;
  gsoType = 0;
  hdrLen = 0;
  gsoSize = 0;
  csumStart = 0;
  csumOffset = 0;

  clear(): this {
    this.flags = this.gsoType = this.hdrLen = this.gsoSize = this.csumStart = this.csumOffset = 0;
    return this;
  }

  copyFrom(o: NetHdr): this {
    this.flags = o.flags;
    this.gsoType = o.gsoType;
    this.hdrLen = o.hdrLen;
    this.gsoSize = o.gsoSize;
    this.csumStart = o.csumStart;
    this.csumOffset = o.csumOffset;
    return this;
  }

  /** True when the frame needs no offload work from whoever receives it. */
  get plain(): boolean {
    return (this.flags & NET_HDR_F_NEEDS_CSUM) === 0 && (this.gsoType & ~GSO_ECN) === GSO_NONE;
  }

  /**
   * Reads the first 10 bytes of a header (num_buffers, if any, is the receiver's business);
   * `bigEndian`: the u16 fields are big-endian (legacy big-endian guest).
   */
  read(b: Uint8Array, off = 0, bigEndian = false): this {
    this.flags = b[off]!;
    this.gsoType = b[off + 1]!;
    if (bigEndian) {
      this.hdrLen = (b[off + 2]! << 8) | b[off + 3]!;
      this.gsoSize = (b[off + 4]! << 8) | b[off + 5]!;
      this.csumStart = (b[off + 6]! << 8) | b[off + 7]!;
      this.csumOffset = (b[off + 8]! << 8) | b[off + 9]!;
      return this;
    }
    this.hdrLen = b[off + 2]! | (b[off + 3]! << 8);
    this.gsoSize = b[off + 4]! | (b[off + 5]! << 8);
    this.csumStart = b[off + 6]! | (b[off + 7]! << 8);
    this.csumOffset = b[off + 8]! | (b[off + 9]! << 8);
    return this;
  }

  /**
   * write() of the 12-byte little-endian header as three 32-bit stores: `words` is an Int32Array over
   * a whole ArrayBuffer and `byteAt` the header's offset in that buffer. False (nothing written) when
   * `byteAt` is not 4-byte aligned or the host is big-endian; write() is then the way.
   */
  writeWords(words: Int32Array, byteAt: number, numBuffers: number): boolean {
    if (!HOST_LE || (byteAt & 3) !== 0) return false;
    const w = byteAt >>> 2;
    words[w] = this.flags | (this.gsoType << 8) | (this.hdrLen << 16);
    words[w + 1] = this.gsoSize | (this.csumStart << 16);
    words[w + 2] = this.csumOffset | (numBuffers << 16);
    return true;
  }

  /**
   * Writes `byteLen` (10 or 12) bytes; num_buffers (u16 at 10) when 12. `bigEndian`: the u16 fields,
   * num_buffers included, big-endian (legacy big-endian guest).
   */
  write(b: Uint8Array, off: number, byteLen: number, numBuffers = 0, bigEndian = false): void {
    b[off] = this.flags;
    b[off + 1] = this.gsoType;
    if (bigEndian) {
      b[off + 2] = this.hdrLen >> 8;
      b[off + 3] = this.hdrLen & 0xff;
      b[off + 4] = this.gsoSize >> 8;
      b[off + 5] = this.gsoSize & 0xff;
      b[off + 6] = this.csumStart >> 8;
      b[off + 7] = this.csumStart & 0xff;
      b[off + 8] = this.csumOffset >> 8;
      b[off + 9] = this.csumOffset & 0xff;
      if (byteLen === NET_HDR_MRG_BYTES) {
        b[off + 10] = numBuffers >> 8;
        b[off + 11] = numBuffers & 0xff;
      }
      return;
    }
    b[off + 2] = this.hdrLen & 0xff;
    b[off + 3] = this.hdrLen >> 8;
    b[off + 4] = this.gsoSize & 0xff;
    b[off + 5] = this.gsoSize >> 8;
    b[off + 6] = this.csumStart & 0xff;
    b[off + 7] = this.csumStart >> 8;
    b[off + 8] = this.csumOffset & 0xff;
    b[off + 9] = this.csumOffset >> 8;
    if (byteLen === NET_HDR_MRG_BYTES) {
      b[off + 10] = numBuffers & 0xff;
      b[off + 11] = numBuffers >> 8;
    }
  }
}

/**
 * The header of a plain frame (all fields zero: no checksum, no GSO), shared and frozen: a sender
 * without host offloads passes it (D40), and a receiver takes it as it is (nothing to clear), which
 * spares a header copy per frame.
 */
export const PLAIN_HDR: NetHdr = Object.freeze(new NetHdr());
