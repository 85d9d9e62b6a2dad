/**
 * The QEMU rig itself (qemu-scripts/ + test/helpers/qemu.ts): boots the TCG guest and, as the known-good
 * reference backend, DPDK's net_vhost (testpmd 5tswap) on a vhost-user socket. Serial: one QEMU at a time
 * on this 2-core machine.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { GuestError, firstOops, guestAvailable, startGuest } from '../helpers/qemu.ts';
import { startTestpmd } from '../helpers/testpmd.ts';

const haveGuest = guestAvailable();
const haveTestpmd = existsSync('/usr/bin/dpdk-testpmd');
const guestTest = haveGuest ? test.serial : test.serial.skip;
const dpdkTest = haveGuest && haveTestpmd ? test.serial : test.serial.skip;

// No guest needed: what a failed guest test shows when the kernel oopsed long before the console's end.
test('firstOops: the first kernel report of a console, from its first line (the tail alone would cut it)', (t) => {
  const boot = Array.from({ length: 50 }, (_, i) => `[    1.${String(i).padStart(6, '0')}] virtio_net virtio0: boot line ${i}`).join('\n');
  const report = [
    '[    8.081002] BUG: kernel NULL pointer dereference, address: 0000000000000000',
    '[    8.081100] #PF: supervisor instruction fetch in kernel mode',
    '[    8.086377]  napi_complete_done+0x6d/0x1a0',
    '[    8.086573]  virtnet_poll+0x371/0x4e4 [virtio_net]',
    '[    8.094208] Kernel panic - not syncing: Fatal exception in interrupt',
  ].join('\n');
  const console = `${boot}\n${report}\n`;
  const o = firstOops(console);
  t.not(o, null);
  t.is(o!.at, boot.length + 1, 'starts at the BUG line, not at the later panic line');
  t.true(o!.text.startsWith('[    8.081002] BUG: kernel NULL pointer dereference'));
  t.true(o!.text.includes('Kernel panic - not syncing'));
  t.is(firstOops(boot), null, 'a clean console has none');
  t.is(firstOops('[ 3.1] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 x\n')!.at, 0);
  t.is(firstOops(`${boot}\n${report}`, 40)!.text.length, 40, 'bounded');
});

guestTest('guest without NIC runs vut.run and powers off by itself', async (t) => {
  const g = startGuest({ vut: { run: 'echo,rig-says-$((6*7))' }, teardown: t.teardown, maxLifetimeMs: 60_000 });
  const ready = await g.waitFor(/VUT-READY init=([\d.]+) ready=([\d.]+)/, 40_000);
  t.log(`guest uptime at /init ${ready[1]} s, at VUT-READY ${ready[2]} s`);
  // The command runs through `sh -c`, so shell expansion happens in the guest.
  await g.waitFor(/rig-says-42/, 10_000, ready.index);
  await g.waitFor(/VUT-RUN-EXIT 0/, 10_000);
  const exit = await g.waitExit(10_000);
  t.deepEqual(exit, { code: 0, signal: null });
  t.regex(g.output, /VUT-DONE/);
  t.notRegex(g.output, /VUT-ERROR/);
});

guestTest('waitFor times out, kill() ends a holding guest, then waitFor reports the exit', async (t) => {
  const g = startGuest({ vut: { hold: 'inf' }, teardown: t.teardown, maxLifetimeMs: 60_000 });
  await g.waitFor(/VUT-HOLD/, 40_000);
  const timeout = await t.throwsAsync(g.waitFor(/NEVER-PRINTED/, 300), { instanceOf: GuestError });
  t.is(timeout?.code, 'GUEST_TIMEOUT');
  t.is(g.exitInfo, undefined);
  const t0 = Date.now();
  await g.kill();
  t.true(Date.now() - t0 < 3000, 'QEMU exits on SIGTERM without needing SIGKILL');
  t.truthy(g.exitInfo);
  const exited = await t.throwsAsync(g.waitFor(/NEVER-PRINTED/, 5000), { instanceOf: GuestError });
  t.is(exited?.code, 'GUEST_EXITED');
});

for (const variant of [
  { name: 'split', packed: false, mrg: true },
  { name: 'packed, mrg_rxbuf off', packed: true, mrg: false },
]) {
  dpdkTest(`guest pings through DPDK net_vhost 5tswap (${variant.name})`, async (t) => {
    const sock = path.join(tmpdir(), `vut-rig-${process.pid}.sock`);
    // testpmd's forwarding lcore on cpu1, QEMU on cpu0 (test-rig-facts §3.2: never share a core).
    const tp = await startTestpmd({ role: 'vhost', socket: sock, fwdMode: '5tswap', fwdCore: 1 });
    t.teardown(async () => {
      await tp.quit();
    });
    await tp.start();
    const pings = 5;
    const g = startGuest({
      sock,
      cpus: '0',
      packed: variant.packed,
      mrg: variant.mrg,
      vut: { ip: '10.0.2.15/24', peer: '10.0.2.2', peermac: '02:00:00:00:00:02', ping: `10.0.2.2,${pings}` },
      teardown: t.teardown,
      maxLifetimeMs: 90_000,
    });
    await g.waitFor(/VUT-READY/, 60_000);
    const m = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 30_000);
    t.is(m[0], `VUT-PING-OK ${pings}`, g.tail());
    t.deepEqual(await g.waitExit(15_000), { code: 0, signal: null });
    const [stats] = await tp.stop();
    // Each ping = request out + swapped request back, our reply out + swapped reply back; IPv6 is off in
    // the guest (vut.ipv6 default) and ARP is static, so nothing else crosses the link.
    t.is(stats?.rxPackets, 2 * pings);
    t.is(stats?.txPackets, 2 * pings);
  });
}
