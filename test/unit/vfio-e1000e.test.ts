/**
 * The e1000e driver (backend/net/ports/vfio/e1000e.ts) on fake hardware: a register file that behaves like the
 * 82574L where the driver depends on it (CTRL.RST self-clears, EERD completes, RAL0/RAH0 hold the MAC,
 * statistics clear on read) and DMA memory in a plain ArrayBuffer, with the test playing the NIC's side of
 * the rings (writing RX descriptors + buffers, setting TX DD).
 */
import test from 'ava';
import {
  BUF_BYTES,
  CTRL_RST,
  CTRL_SLU,
  DESC_BYTES,
  E1000e,
  RCTL_BAM,
  RCTL_EN,
  RCTL_SECRC,
  RCTL_UPE,
  REG,
  RXD_STAT_DD,
  RXD_STAT_EOP,
  TCTL_EN,
  TXD_CMD_EOP,
  TXD_CMD_RS,
  TXD_STAT_DD,
  type Regs,
} from '../../backend/net/ports/vfio/e1000e.ts';
import type { DmaChunk } from '../../backend/net/ports/vfio/dma.ts';

const IOVA_BASE = 0x10000000;

class FakeNic implements Regs {
  readonly r = new Map<number, number>();
  readonly writes: [number, number][] = [];
  readonly eeprom = [0x5452, 0x0000, 0x0ee1]; // 52:54:00:00:e1:0e little-endian words
  clearOnRead = new Set<number>([REG.ICR, REG.GPRC, REG.GPTC, REG.MPC, REG.GORCL, REG.GORCH]);
  constructor(macInRar: boolean) {
    if (macInRar) {
      this.r.set(REG.RAL0, 0x00005452);
      this.r.set(REG.RAH0, 0x80000ee1);
    }
  }
  read(off: number): number {
    const v = this.r.get(off) ?? 0;
    if (this.clearOnRead.has(off)) this.r.set(off, 0);
    return v >>> 0;
  }
  write(off: number, v: number): void {
    this.writes.push([off, v >>> 0]);
    if (off === REG.CTRL) v &= ~CTRL_RST; // reset completes at once, as in QEMU
    if (off === REG.CTRL && v & CTRL_SLU) this.r.set(REG.STATUS, 0x283);
    if (off === REG.EERD && v & 1) v = (this.eeprom[(v >>> 2) & 0x3fff]! << 16) | 2; // DONE + data
    this.r.set(off, v >>> 0);
  }
}

class FakeDma {
  readonly mem = new ArrayBuffer(2 << 20);
  private next = 0;
  alloc(byteLen: number, align = 64): DmaChunk {
    const offset = Math.ceil(this.next / align) * align;
    this.next = offset + byteLen;
    if (this.next > this.mem.byteLength) throw new RangeError('fake dma full');
    return { offset, iova: IOVA_BASE + offset, byteLen, bytes: new Uint8Array(this.mem, offset, byteLen) };
  }
  view(): DataView {
    return new DataView(this.mem);
  }
  /** Bytes at a device address. */
  at(iova: number, len: number): Uint8Array {
    return new Uint8Array(this.mem, iova - IOVA_BASE, len);
  }
}

function setup(opts: { macInRar?: boolean; rx?: number; tx?: number } = {}) {
  const hw = new FakeNic(opts.macInRar ?? true);
  const dma = new FakeDma();
  const nic = new E1000e(hw, dma, { rxRing: opts.rx ?? 16, txRing: opts.tx ?? 8 });
  nic.init();
  const dv = dma.view();
  const rdba = hw.r.get(REG.RDBAL)! + hw.r.get(REG.RDBAH)! * 2 ** 32 - IOVA_BASE;
  const tdba = hw.r.get(REG.TDBAL)! + hw.r.get(REG.TDBAH)! * 2 ** 32 - IOVA_BASE;
  /** The NIC completes RX descriptor i with `frame`. */
  const deviceRx = (i: number, frame: Uint8Array, status = RXD_STAT_DD | RXD_STAT_EOP, errors = 0) => {
    const o = rdba + i * DESC_BYTES;
    const addr = Number(dv.getBigUint64(o, true));
    dma.at(addr, frame.length).set(frame);
    dv.setUint16(o + 8, frame.length, true);
    dv.setUint8(o + 13, errors);
    dv.setUint8(o + 12, status);
  };
  const txDesc = (i: number) => {
    const o = tdba + i * DESC_BYTES;
    return { addr: Number(dv.getBigUint64(o, true)), len: dv.getUint16(o + 8, true), cmd: dv.getUint8(o + 11), status: dv.getUint8(o + 12), o };
  };
  return { hw, dma, nic, dv, rdba, tdba, deviceRx, txDesc };
}

const frame = (len: number, seed: number) => Uint8Array.from({ length: len }, (_, i) => (i * 3 + seed) & 0xff);

test('init: reset first, interrupts masked, MAC from RAL0/RAH0, rings and RCTL/TCTL as programmed', (t) => {
  const { hw, nic, rdba } = setup();
  const ctrlWrites = hw.writes.filter(([o]) => o === REG.CTRL).map(([, v]) => v);
  t.truthy(ctrlWrites[0]! & CTRL_RST, 'the first CTRL write is the reset');
  t.is(hw.writes[0]![0], REG.IMC, 'interrupts masked before the reset');
  t.truthy(hw.r.get(REG.CTRL)! & CTRL_SLU, 'link up requested');
  t.is(Array.from(nic.mac, (b) => b.toString(16).padStart(2, '0')).join(':'), '52:54:00:00:e1:0e');
  t.is(hw.r.get(REG.RDLEN), 16 * DESC_BYTES);
  t.is(hw.r.get(REG.RDH), 0);
  t.is(hw.r.get(REG.RDT), 15, 'RDT = size-1: one descriptor always stays empty');
  t.is(hw.r.get(REG.TDLEN), 8 * DESC_BYTES);
  t.is(hw.r.get(REG.TDT), 0);
  t.is(rdba % 128, 0, 'ring base aligned');
  const rctl = hw.r.get(REG.RCTL)!;
  t.is(rctl & (RCTL_EN | RCTL_UPE | RCTL_BAM | RCTL_SECRC), RCTL_EN | RCTL_UPE | RCTL_BAM | RCTL_SECRC);
  t.is((rctl >>> 16) & 3, 0, 'BSIZE 2048');
  t.truthy(hw.r.get(REG.TCTL)! & TCTL_EN);
  // RCTL.EN is written after the ring registers (§4.6.6 order).
  const idx = (off: number) => hw.writes.findIndex(([o]) => o === off);
  t.true(idx(REG.RCTL) > idx(REG.RDT) && idx(REG.RDT) > idx(REG.RDBAL));
  t.true(nic.linkUp);
});

test('init: MAC from the EEPROM (EERD) when RAH0.AV is clear, and RAR0 programmed with it', (t) => {
  const { hw, nic } = setup({ macInRar: false });
  t.deepEqual(Array.from(nic.mac), [0x52, 0x54, 0x00, 0x00, 0xe1, 0x0e]);
  t.is(hw.r.get(REG.RAL0), 0x00005452);
  t.is(hw.r.get(REG.RAH0), 0x80000ee1);
});

test('rxBurst: frames in ring order with their bytes, descriptors recycled, RDT trails by one', (t) => {
  const { hw, nic, dv, rdba, deviceRx } = setup();
  t.false(nic.rxPending);
  deviceRx(0, frame(60, 1));
  deviceRx(1, frame(1514, 2));
  t.true(nic.rxPending);
  const seen: Uint8Array[] = [];
  t.is(nic.rxBurst((b, len) => (seen.push(b.slice(0, len)), 'ok')), 2);
  t.deepEqual(seen, [frame(60, 1), frame(1514, 2)]);
  t.is(hw.r.get(REG.RDT), 1, 'both descriptors handed back: RDT = last processed');
  t.is(dv.getUint8(rdba + 12), 0, 'status cleared for reuse');
  t.is(Number(dv.getBigUint64(rdba, true)) % BUF_BYTES, 0, 'buffer address kept');
  t.false(nic.rxPending);
  t.is(nic.rxBurst(() => 'ok'), 0, 'nothing more');
});

test('rxBurst: busy keeps the frame for the next burst; errors and fragments are dropped and counted', (t) => {
  const { hw, nic, deviceRx } = setup();
  deviceRx(0, frame(100, 1));
  deviceRx(1, frame(100, 2));
  let calls = 0;
  t.is(nic.rxBurst(() => (calls++ === 0 ? 'ok' : 'busy')), 1);
  t.is(hw.r.get(REG.RDT), 0);
  const again: number[] = [];
  t.is(nic.rxBurst((b) => (again.push(b[0]!), 'ok')), 1);
  t.deepEqual(again, [frame(100, 2)[0]!], 'the refused frame comes again');
  deviceRx(2, frame(100, 3), RXD_STAT_DD | RXD_STAT_EOP, 0x01 /* CE */);
  deviceRx(3, frame(100, 4), RXD_STAT_DD /* no EOP */);
  deviceRx(4, frame(100, 5));
  const ok: number[] = [];
  t.is(nic.rxBurst((b) => (ok.push(b[0]!), 'ok')), 3);
  t.deepEqual(ok, [frame(100, 5)[0]!]);
  t.is(nic.rxErrors, 2);
});

test('rxBurst: wraps around the ring and respects the budget', (t) => {
  const { hw, nic, deviceRx } = setup({ rx: 8 });
  let n = 0;
  for (let round = 0; round < 3; round++) {
    for (let k = 0; k < 5; k++) deviceRx((round * 5 + k) % 8, frame(64, n++));
    t.is(nic.rxBurst(() => 'ok', 3), 3);
    t.is(nic.rxBurst(() => 'ok', 64), 2);
  }
  t.is(hw.r.get(REG.RDT), (15 - 1 + 8) % 8);
});

test('TX: descriptors carry buffer, length and EOP|IFCS|RS; TDT only on flush; full ring until DD reclaim', (t) => {
  const { hw, nic, dma, dv, txDesc } = setup({ tx: 8 });
  t.true(nic.txFrame(frame(60, 9), 60));
  t.true(nic.txFrame(frame(1514, 8), 1000));
  t.is(hw.r.get(REG.TDT), 0, 'not published yet');
  nic.txFlush();
  t.is(hw.r.get(REG.TDT), 2);
  const d0 = txDesc(0);
  t.is(d0.len, 60);
  t.is(d0.cmd & (TXD_CMD_EOP | TXD_CMD_RS), TXD_CMD_EOP | TXD_CMD_RS);
  t.is(d0.status, 0);
  t.deepEqual(dma.at(d0.addr, 60).slice(), frame(60, 9));
  t.deepEqual(dma.at(txDesc(1).addr, 1000).slice(), frame(1514, 8).slice(0, 1000));
  // 8 slots, one always empty: 5 more fit, then full.
  for (let i = 0; i < 5; i++) t.true(nic.txFrame(frame(64, i), 64));
  t.false(nic.txFrame(frame(64, 0), 64), 'ring full');
  t.is(nic.txBuffer(), null);
  // The NIC sends the first two: DD set -> reclaimed.
  dv.setUint8(txDesc(0).o + 12, TXD_STAT_DD);
  dv.setUint8(txDesc(1).o + 12, TXD_STAT_DD);
  t.is(nic.txReclaim(), 2);
  t.true(nic.txFrame(frame(64, 1), 64));
  nic.txFlush();
  t.is(hw.r.get(REG.TDT), 0, 'tail wrapped');
  t.throws(() => nic.txFrame(new Uint8Array(BUF_BYTES + 1), BUF_BYTES + 1), { instanceOf: RangeError });
});

test('statistics accumulate the clear-on-read registers', (t) => {
  const { hw, nic } = setup();
  hw.r.set(REG.GPRC, 5);
  hw.r.set(REG.GPTC, 7);
  hw.r.set(REG.GORCL, 0xffffffff);
  hw.r.set(REG.GORCH, 1);
  hw.r.set(REG.MPC, 2);
  nic.readStats();
  hw.r.set(REG.GPRC, 1);
  const s = nic.readStats();
  t.is(s.rxPackets, 6);
  t.is(s.txPackets, 7);
  t.is(s.rxOctets, 0x1ffffffff);
  t.is(s.missed, 2);
});

test('ring sizes must be multiples of 8 (RDLEN/TDLEN are multiples of 128 bytes)', (t) => {
  t.throws(() => new E1000e(new FakeNic(true), new FakeDma(), { rxRing: 12 }), { instanceOf: RangeError });
  t.throws(() => new E1000e(new FakeNic(true), new FakeDma(), { txRing: 4 }), { instanceOf: RangeError });
});
