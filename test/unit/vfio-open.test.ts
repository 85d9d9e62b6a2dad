/**
 * Opening a device through VFIO, without VFIO: a fake /sys tree and a fake VFIO syscall layer check that each
 * way of not being ready gives its own error code and a message that says what to do; plus the PCI config
 * helpers on a byte array and the `--port vfio:` spec.
 */
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { checkVfioReady, normalizePciAddress, VfioDevice, type VfioSys } from '../../backend/net/ports/vfio/vfio.ts';
import { enableBusMaster, listCapabilities, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, type ConfigSpace } from '../../backend/net/ports/vfio/pci.ts';
import { parsePortSpec } from '../../backend/tools/app.ts';

function fakeSysfs(t: { teardown(f: () => void): void }) {
  const root = mkdtempSync(path.join(tmpdir(), 'vut-sysfs-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const dev = (bdf: string, o: { driver?: string; group?: number; vendor?: string; device?: string }) => {
    const d = path.join(root, 'bus/pci/devices', bdf);
    mkdirSync(d, { recursive: true });
    writeFileSync(path.join(d, 'vendor'), `${o.vendor ?? '0x8086'}\n`);
    writeFileSync(path.join(d, 'device'), `${o.device ?? '0x10d3'}\n`);
    if (o.driver) {
      mkdirSync(path.join(root, 'bus/pci/drivers', o.driver), { recursive: true });
      symlinkSync(path.join(root, 'bus/pci/drivers', o.driver), path.join(d, 'driver'));
    }
    if (o.group !== undefined) {
      const g = path.join(root, 'kernel/iommu_groups', String(o.group));
      mkdirSync(path.join(g, 'devices'), { recursive: true });
      symlinkSync(g, path.join(d, 'iommu_group'));
      symlinkSync(d, path.join(g, 'devices', bdf));
    }
  };
  return { root, dev };
}

/** Fake VFIO: records calls and closes; `viable` and `type1v2` steer the answers. */
function fakeSys(o: { viable?: boolean; type1v2?: boolean } = {}) {
  const calls: string[] = [];
  const closed: number[] = [];
  let nextFd = 100;
  const sys = {
    vfioOpenContainer: () => (calls.push('container'), nextFd++),
    vfioOpenGroup: (g: number) => (calls.push(`group ${g}`), nextFd++),
    vfioGetApiVersion: () => 0,
    vfioCheckExtension: (_fd: number, ext: number) => (ext === 3 && o.type1v2 === false ? 0 : 1),
    vfioGroupGetStatus: () => (o.viable === false ? 0 : 1),
    vfioGroupSetContainer: () => void calls.push('set-container'),
    vfioGroupUnsetContainer: () => void calls.push('unset-container'),
    vfioSetIommu: (_fd: number, type: number) => void calls.push(`set-iommu ${type}`),
    vfioGroupGetDeviceFd: (_g: number, name: string) => (calls.push(`device ${name}`), nextFd++),
    vfioDeviceGetInfo: () => ({ flags: 3, numRegions: 9, numIrqs: 5 }),
    vfioDeviceGetRegionInfo: (_fd: number, index: number) => ({ index, flags: 7, size: index === 7 ? 4096 : 0x20000, offset: index * 2 ** 40 }),
    close: (fd: number) => void closed.push(fd),
  } as unknown as VfioSys;
  return { sys, calls, closed };
}

test('PCI addresses: long and short forms, anything else refused', (t) => {
  t.is(normalizePciAddress('0000:00:03.0'), '0000:00:03.0');
  t.is(normalizePciAddress('00:1F.7'), '0000:00:1f.7');
  for (const bad of ['00:03', '0000:00:03.8', 'eth0', '0000:00:20.0', '']) {
    t.throws(() => normalizePciAddress(bad), { message: /bad PCI address/ });
  }
});

test('not ready: no device, no IOMMU group, not bound, bound to another driver', (t) => {
  const fs = fakeSysfs(t);
  fs.dev('0000:00:03.0', { driver: 'e1000e', group: 3 });
  fs.dev('0000:00:04.0', { driver: 'e1000e' });
  fs.dev('0000:00:05.0', { group: 5 });
  t.throws(() => checkVfioReady('0000:00:09.0', fs.root), { code: 'VFIO_NO_DEVICE' } as never);
  const noIommu = t.throws(() => checkVfioReady('00:04.0', fs.root));
  t.is((noIommu as { code?: string }).code, 'VFIO_NO_IOMMU');
  t.regex(noIommu!.message, /intel_iommu=on/);
  const bound = t.throws(() => checkVfioReady('00:03.0', fs.root));
  t.is((bound as { code?: string }).code, 'VFIO_NOT_BOUND');
  t.regex(bound!.message, /bound to e1000e.*vfio-bind\.sh 0000:00:03\.0/);
  const none = t.throws(() => checkVfioReady('00:05.0', fs.root));
  t.regex(none!.message, /not bound to any driver/);
});

test('open: the vfio.rst sequence, then a not-viable group names the device still on a host driver', (t) => {
  const fs = fakeSysfs(t);
  fs.dev('0000:00:03.0', { driver: 'vfio-pci', group: 3 });
  const ok = fakeSys();
  const d = VfioDevice.open(ok.sys, '0000:00:03.0', fs.root);
  t.deepEqual(ok.calls, ['container', 'group 3', 'set-container', 'set-iommu 3', 'device 0000:00:03.0']);
  t.is(d.numRegions, 9);
  d.close();
  t.is(ok.closed.length, 3, 'device, group and container closed');

  fs.dev('0000:00:03.1', { driver: 'e1000e' });
  symlinkSync(path.join(fs.root, 'bus/pci/devices/0000:00:03.1'), path.join(fs.root, 'kernel/iommu_groups/3/devices/0000:00:03.1'));
  const nv = fakeSys({ viable: false });
  const e = t.throws(() => VfioDevice.open(nv.sys, '0000:00:03.0', fs.root));
  t.is((e as { code?: string }).code, 'VFIO_GROUP_NOT_VIABLE');
  t.regex(e!.message, /0000:00:03\.1 \(e1000e\)/);
  t.is(nv.closed.length, 2, 'group and container closed on the error path');
  t.false(nv.calls.includes('set-container'));

  const no1 = fakeSys({ type1v2: false });
  t.throws(() => VfioDevice.open(no1.sys, '0000:00:03.0', fs.root), { code: 'VFIO_NO_IOMMU' } as never);
  t.is(no1.closed.length, 1);
});

test('config space: bus master + memory enable, capability walk (bounded on a loop)', (t) => {
  const space = new Uint8Array(256);
  const dv = new DataView(space.buffer);
  const cfg: ConfigSpace = {
    cfgRead: (o, w) => (w === 1 ? space[o]! : w === 2 ? dv.getUint16(o, true) : dv.getUint32(o, true)),
    cfgWrite: (o, w, v) => (w === 1 ? (space[o] = v) : w === 2 ? dv.setUint16(o, v, true) : dv.setUint32(o, v, true)),
  };
  dv.setUint16(PCI_COMMAND, 0x0001, true);
  t.is(enableBusMaster(cfg), 0x0001 | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
  t.deepEqual(listCapabilities(cfg), [], 'no list without status bit 4');
  dv.setUint16(0x06, 0x10, true);
  space[0x34] = 0x40;
  space.set([0x05, 0x50], 0x40); // MSI -> 0x50
  space.set([0x11, 0x60], 0x50); // MSI-X -> 0x60
  space.set([0x09, 0x40], 0x60); // vendor -> back to 0x40: a loop
  t.deepEqual(listCapabilities(cfg), [
    { id: 0x05, offset: 0x40 },
    { id: 0x11, offset: 0x50 },
    { id: 0x09, offset: 0x60 },
  ]);
});

test('--port vfio: specs', (t) => {
  t.deepEqual(parsePortSpec('vfio:0000:00:03.0'), { kind: 'vfio', address: '0000:00:03.0' });
  t.deepEqual(parsePortSpec('vfio:00:03.0,poll'), { kind: 'vfio', address: '0000:00:03.0', mode: 'poll' });
  t.throws(() => parsePortSpec('vfio:eth0'), { code: 'CLI_USAGE' } as never);
  t.throws(() => parsePortSpec('vfio:0000:00:03.0,fast'), { code: 'CLI_USAGE' } as never);
});
