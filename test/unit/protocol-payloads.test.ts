/**
 * Syntactic validators, rust-vmm idiom: build a valid value, assert valid, mutate ONE field to the
 * boundary, assert invalid (with the expected code), and check the boundary itself is still valid.
 */
import test from 'ava';
import {
  Payloads,
  U64_MAX,
  FRONTEND_MESSAGES,
  type DeviceConfig,
  type Layout,
  type MemoryTable,
} from '../../protocol/index.ts';

function expectInvalid<T>(t: import('ava').ExecutionContext, layout: Layout<T>, valid: T, mutated: T, code: string): void {
  t.is(layout.validate(valid), null, `${layout.name}: the unmutated value is valid`);
  const e = layout.validate(mutated);
  t.truthy(e, `${layout.name}: mutated value must be invalid`);
  t.is(e?.code, code);
}

const addr = {
  index: 0,
  flags: 0,
  descUserAddr: 0x7f00_0000_0000n,
  usedUserAddr: 0x7f00_0000_2000n,
  availUserAddr: 0x7f00_0000_1000n,
  logGuestAddr: 0n,
};

test('vring addr: only flag bit 0 (VHOST_VRING_F_LOG) is defined', (t) => {
  t.is(Payloads.vringAddr.validate({ ...addr, flags: 1 }), null);
  expectInvalid(t, Payloads.vringAddr, addr, { ...addr, flags: 2 }, 'VRING_ADDR_FLAGS');
  expectInvalid(t, Payloads.vringAddr, addr, { ...addr, flags: 0x8000_0000 }, 'VRING_ADDR_FLAGS');
});

test('vring addr: ring alignment (desc 16, used 4, avail 2)', (t) => {
  expectInvalid(t, Payloads.vringAddr, addr, { ...addr, descUserAddr: addr.descUserAddr + 8n }, 'VRING_ADDR_ALIGN');
  expectInvalid(t, Payloads.vringAddr, addr, { ...addr, usedUserAddr: addr.usedUserAddr + 2n }, 'VRING_ADDR_ALIGN');
  expectInvalid(t, Payloads.vringAddr, addr, { ...addr, availUserAddr: addr.availUserAddr + 1n }, 'VRING_ADDR_ALIGN');
  t.is(Payloads.vringAddr.validate({ ...addr, availUserAddr: addr.availUserAddr + 2n, usedUserAddr: addr.usedUserAddr + 4n }), null);
});

const region = { guestPhysAddr: 0x1000_0000n, memorySize: 0x4000_0000n, userspaceAddr: 0x7f00_0000_0000n, mmapOffset: 0n };

test('memory region: addr + size must not overflow u64 (checked_add)', (t) => {
  // Boundary: ending exactly at 2^64 - 1 is fine.
  t.is(Payloads.singleMemoryRegion.validate({ padding: 0n, region: { ...region, guestPhysAddr: U64_MAX - region.memorySize } }), null);
  const valid = { padding: 0n, region };
  expectInvalid(t, Payloads.singleMemoryRegion, valid, { padding: 0n, region: { ...region, guestPhysAddr: U64_MAX - region.memorySize + 1n } }, 'REGION_OVERFLOW');
  expectInvalid(t, Payloads.singleMemoryRegion, valid, { padding: 0n, region: { ...region, userspaceAddr: U64_MAX } }, 'REGION_OVERFLOW');
  expectInvalid(t, Payloads.singleMemoryRegion, valid, { padding: 0n, region: { ...region, mmapOffset: U64_MAX } }, 'REGION_OVERFLOW');
  expectInvalid(t, Payloads.singleMemoryRegion, valid, { padding: 0n, region: { ...region, memorySize: 0n } }, 'REGION_SIZE_ZERO');
});

test('memory table: at most 8 regions, nregions matches, every region checked', (t) => {
  const eight: MemoryTable = { nregions: 8, padding: 0, regions: Array.from({ length: 8 }, (_, i) => ({ ...region, guestPhysAddr: BigInt(i) << 32n })) };
  const nine: MemoryTable = { nregions: 9, padding: 0, regions: [...eight.regions, region] };
  expectInvalid(t, Payloads.memoryTable, eight, nine, 'MEM_NREGIONS');
  expectInvalid(t, Payloads.memoryTable, eight, { ...eight, nregions: 7 }, 'MEM_NREGIONS');
  const bad = { ...eight, regions: eight.regions.map((r, i) => (i === 5 ? { ...r, memorySize: U64_MAX } : r)) };
  expectInvalid(t, Payloads.memoryTable, eight, bad, 'REGION_OVERFLOW');
  t.regex(Payloads.memoryTable.validate(bad)!.message, /region 5/);
  // Zero regions is syntactically fine (QEMU's postcopy acknowledgement).
  t.is(Payloads.memoryTable.validate({ nregions: 0, padding: 0, regions: [] }), null);
});

test('device config: size <= 256, offset + size <= 256, payload length == size, flags 0/1', (t) => {
  const full: DeviceConfig = { offset: 0, size: 256, flags: 0, payload: new Uint8Array(256) };
  expectInvalid(t, Payloads.deviceConfig, full, { ...full, size: 257, payload: new Uint8Array(257) }, 'CONFIG_SIZE');
  const tail: DeviceConfig = { offset: 250, size: 6, flags: 1, payload: new Uint8Array(6) };
  expectInvalid(t, Payloads.deviceConfig, tail, { ...tail, offset: 251 }, 'CONFIG_RANGE');
  expectInvalid(t, Payloads.deviceConfig, tail, { ...tail, payload: new Uint8Array(5) }, 'CONFIG_PAYLOAD_LEN');
  expectInvalid(t, Payloads.deviceConfig, tail, { ...tail, flags: 2 }, 'CONFIG_FLAGS');
});

test('iotlb: type 1..4, perm 0..3, iova + size no overflow', (t) => {
  const upd = { iova: 0x1000n, size: 0x1000n, userAddr: 0x7f00_0000_0000n, perm: 3, type: 2 };
  expectInvalid(t, Payloads.iotlbMsg, upd, { ...upd, type: 5 }, 'IOTLB_TYPE');
  expectInvalid(t, Payloads.iotlbMsg, upd, { ...upd, type: 0 }, 'IOTLB_TYPE');
  expectInvalid(t, Payloads.iotlbMsg, upd, { ...upd, perm: 4 }, 'IOTLB_PERM');
  expectInvalid(t, Payloads.iotlbMsg, upd, { ...upd, iova: U64_MAX }, 'IOTLB_OVERFLOW');
});

test('log, inflight, area: offset + size no overflow', (t) => {
  expectInvalid(t, Payloads.logDescription, { mmapSize: 0x1000n, mmapOffset: 0n }, { mmapSize: 0x1000n, mmapOffset: U64_MAX }, 'LOG_OVERFLOW');
  const infl = { mmapSize: 0x1000n, mmapOffset: 0n, numQueues: 2, queueSize: 256 };
  expectInvalid(t, Payloads.inflightDescription, infl, { ...infl, mmapOffset: U64_MAX }, 'INFLIGHT_OVERFLOW');
  const area = { indexFlags: 1n, size: 0x1000n, offset: 0n };
  expectInvalid(t, Payloads.vringArea, area, { ...area, offset: U64_MAX }, 'AREA_OVERFLOW');
});

test('device state: direction 0/1, phase 0', (t) => {
  const v = { transferDirection: 0, migrationPhase: 0 };
  expectInvalid(t, Payloads.deviceStateTransfer, v, { ...v, transferDirection: 2 }, 'DEVICE_STATE_DIRECTION');
  expectInvalid(t, Payloads.deviceStateTransfer, v, { ...v, migrationPhase: 1 }, 'DEVICE_STATE_PHASE');
});

test('shmem config and mmap', (t) => {
  const cfg = { nregions: 1, padding: 0, memorySizes: [0x1000n] };
  expectInvalid(t, Payloads.shmemConfig, cfg, { ...cfg, nregions: 2 }, 'SHMEM_NREGIONS');
  expectInvalid(t, Payloads.shmemConfig, cfg, { nregions: 257, padding: 0, memorySizes: Array.from({ length: 257 }, () => 0n) }, 'SHMEM_NREGIONS');
  const m = { shmid: 0, padding: new Uint8Array(7), fdOffset: 0n, shmOffset: 0n, len: 0x1000n, flags: 1n };
  expectInvalid(t, Payloads.shmemMmap, m, { ...m, flags: 2n }, 'MMAP_FLAGS');
  expectInvalid(t, Payloads.shmemMmap, m, { ...m, len: 0n }, 'MMAP_LEN_ZERO');
  expectInvalid(t, Payloads.shmemMmap, m, { ...m, shmOffset: U64_MAX }, 'MMAP_OVERFLOW');
});

test('row checks: SET_VRING_ENABLE and SET_VRING_ENDIAN num is 0 or 1', (t) => {
  for (const def of [FRONTEND_MESSAGES.SET_VRING_ENABLE, FRONTEND_MESSAGES.SET_VRING_ENDIAN]) {
    t.is(def.check!({ index: 0, num: 0 }), null);
    t.is(def.check!({ index: 0, num: 1 }), null);
    t.is(def.check!({ index: 0, num: 2 })?.code, 'VRING_STATE_NUM');
  }
});

test('struct layouts: padded C structs accept both sizes, encode the padded one', (t) => {
  const iotlb = { iova: 1n, size: 2n, userAddr: 3n, perm: 1, type: 2 };
  const out = new Uint8Array(Payloads.iotlbMsg.sizeOf(iotlb));
  t.is(out.length, 32);
  Payloads.iotlbMsg.encode(iotlb, out);
  t.deepEqual(Payloads.iotlbMsg.decode(out), iotlb);
  t.deepEqual(Payloads.iotlbMsg.decode(out.subarray(0, 26)), iotlb);
  t.throws(() => Payloads.iotlbMsg.decode(out.subarray(0, 25)), { name: 'LayoutSizeError' });
  t.throws(() => Payloads.iotlbMsg.decode(new Uint8Array(33)), { name: 'LayoutSizeError' });
  t.is(Payloads.inflightDescription.sizeOf({ mmapSize: 0n, mmapOffset: 0n, numQueues: 1, queueSize: 1 }), 24);
});

test('layout encode refuses out-of-range field values', (t) => {
  const out = new Uint8Array(8);
  t.throws(() => Payloads.vringState.encode({ index: -1, num: 0 }, out), { instanceOf: RangeError });
  t.throws(() => Payloads.vringState.encode({ index: 2 ** 32, num: 0 }, out), { instanceOf: RangeError });
  t.throws(() => Payloads.u64.encode({ value: 1n << 64n }, out), { instanceOf: RangeError });
  t.throws(() => Payloads.u64.encode({ value: -1n }, out), { instanceOf: RangeError });
});
