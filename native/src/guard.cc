// The SIGBUS guard of guest mappings: a frontend that shrinks (ftruncate) a file we mapped (guest memory of
// SET_MEM_TABLE / ADD_MEM_REG, the dirty log of SET_LOG_BASE, an inflight buffer) makes every later access to
// a page past the new end of the file raise SIGBUS, whose default action kills the whole process with every
// other session in it. Sealing the file (F_SEAL_SHRINK, mmap.cc addSeals) prevents that where the frontend
// allows it; this guard catches what cannot be sealed.
//
// The pattern is libwayland-server's wl_shm SIGBUS guard (src/wayland-shm.c: a SIGBUS inside a client's pool
// is answered by mapping anonymous memory over the pool and posting an error to that client; any other
// SIGBUS is re-raised). Differences: our mappings are accessed from JS at any time (no begin/end access
// bracket), so the handler looks the address up in a process-wide registry of guarded ranges instead of a
// per-thread "current pool", and the owner is told through the event loop (uv_async_send) rather than at
// the end of an access bracket.
//
//   - Registry: a fixed array of slots (start, end, id, prot, notifier, poison), each behind a sequence
//     counter (a seqlock: odd while a writer changes it). Writers (guardMapping, unguardMapping, munmap, the
//     GC finalizer; all on JS threads) serialize on a mutex; the handler only reads, never locks, never
//     allocates. Slots [0, g_high) may be live.
//   - Handler (SA_SIGINFO | SA_ONSTACK, installed once at the first guard): for a kernel-generated SIGBUS
//     (si_code > 0) whose address lies in a live slot, map private anonymous zero pages
//     (MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS) over the faulting page and every page after it up to the end
//     of that mapping (a truncated file faults on every page past its new end: one signal instead of one
//     per page, and one VMA instead of a split per page), mark the slot poisoned and wake the owning
//     environment's uv_async_t (uv_async_send is async-signal-safe). Returning retries the instruction,
//     which now reads zeros; writes land in private memory nobody sees.
//   - Anything else (an address in no slot, a SIGBUS sent with kill(), a repair mmap that failed) goes to the
//     handler that was installed before ours, or, if that was SIG_DFL / SIG_IGN, the default action is
//     restored and the fault happens again (or, for a sent signal, is re-raised): a real bug still crashes.
//   - Notification: the uv_async callback (on the JS thread) collects the ids of the environment's slots
//     poisoned since the last report and calls the function given to onGuestMemoryFault(ids). Without a
//     callback they wait for takeGuestMemoryFaults(). A slot unregistered before its report drops it (its
//     owner released the mapping anyway); ids are never reused, so no report can name a newer mapping.

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

// 509 memory slots per session (VHOST_USER_MAX_RAM_SLOTS) plus log and inflight: room for dozens of sessions
// at the protocol's maximum, hundreds at what QEMU and DPDK send. Untouched slots cost no memory (bss).
constexpr size_t kSlots = 16384;
// Node environments (main thread, workers) that can be notified.
constexpr uint32_t kNotifiers = 64;

enum : uint32_t { kPoisonNone = 0, kPoisonNew = 1, kPoisonReported = 2 };

struct Slot {
  std::atomic<uint32_t> seq{0};     // odd while a writer changes the slot
  std::atomic<uintptr_t> start{0};  // page-aligned; 0 = free
  std::atomic<uintptr_t> end{0};    // page-aligned, exclusive
  std::atomic<uint64_t> id{0};
  std::atomic<int> prot{0};
  std::atomic<uint32_t> notifier{0};
  std::atomic<uint32_t> poison{kPoisonNone};
};
static_assert(std::atomic<uintptr_t>::is_always_lock_free && std::atomic<uint64_t>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

Slot g_slots[kSlots];
std::atomic<size_t> g_high{0};
std::mutex g_regMu;       // writers of g_slots, g_nextId, g_envs
uint64_t g_nextId = 1;    // never reused (2^64 registrations)
uintptr_t g_pageMask = 0; // written once before the handler is installed
struct sigaction g_prev;  // the SIGBUS disposition we replaced
bool g_installed = false; // under g_regMu

// One per Node environment that guards mappings: the uv_async_t that wakes its loop.
struct Notifier {
  uv_async_t async;  // first member: uv_async_t* <-> Notifier*
  napi_env env;
  uint32_t index;
  Napi::FunctionReference cb;
  std::unique_ptr<Napi::AsyncContext> ctx;
};
std::atomic<Notifier*> g_notifiers[kNotifiers];
std::unordered_map<napi_env, Notifier*> g_envs;  // under g_regMu

// ---- the signal handler: async-signal-safe only (atomics, mmap, sigaction, raise, uv_async_send) ----

void ChainToPrevious(int sig, siginfo_t* info, void* uctx) {
  const struct sigaction& p = g_prev;
  if ((p.sa_flags & SA_SIGINFO) != 0) {
    if (p.sa_sigaction != nullptr) return p.sa_sigaction(sig, info, uctx);
  } else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN) {
    return p.sa_handler(sig);
  }
  // Default action (ignoring a synchronous SIGBUS is not possible either: the kernel kills).
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);
  // A fault retries its instruction on return and dies of it (the core shows the real fault); a signal that
  // was sent (kill, tgkill, sigqueue: si_code <= 0) is sent again, delivered once the handler returns.
  if (info == nullptr || info->si_code <= 0 || info->si_code == SI_KERNEL) raise(SIGBUS);
}

void OnSigbus(int sig, siginfo_t* info, void* uctx) {
  const int savedErrno = errno;
  if (info != nullptr && info->si_code > 0 && info->si_code != SI_KERNEL) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    const size_t high = g_high.load(std::memory_order_acquire);
    for (size_t i = 0; i < high; i++) {
      Slot& s = g_slots[i];
      const uint32_t seq = s.seq.load(std::memory_order_acquire);
      if ((seq & 1) != 0) continue;  // being changed: not a mapping anyone is using right now
      const uintptr_t start = s.start.load(std::memory_order_relaxed);
      const uintptr_t end = s.end.load(std::memory_order_relaxed);
      const int prot = s.prot.load(std::memory_order_relaxed);
      const uint32_t n = s.notifier.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.seq.load(std::memory_order_relaxed) != seq) continue;
      if (start == 0 || addr < start || addr >= end) continue;
      const uintptr_t page = addr & g_pageMask;
      void* r = mmap(reinterpret_cast<void*>(page), end - page, prot,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (r == MAP_FAILED) break;  // cannot repair: behave as if unguarded
      uint32_t expected = kPoisonNone;
      s.poison.compare_exchange_strong(expected, kPoisonNew, std::memory_order_acq_rel);
      Notifier* nt = n < kNotifiers ? g_notifiers[n].load(std::memory_order_acquire) : nullptr;
      if (nt != nullptr) uv_async_send(&nt->async);
      errno = savedErrno;
      return;
    }
  }
  ChainToPrevious(sig, info, uctx);
  errno = savedErrno;
}

// ---- writers (JS threads, under g_regMu) ----

void InstallLocked(Napi::Env env) {
  if (g_installed) return;
  g_pageMask = ~static_cast<uintptr_t>(sysconf(_SC_PAGESIZE) - 1);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &g_prev) < 0) ThrowSysError(env, errno, "sigaction");
  g_installed = true;
}

// Ids of this notifier's slots poisoned and not yet reported; marks them reported.
std::vector<uint64_t> TakeNewLocked(uint32_t notifier) {
  std::vector<uint64_t> ids;
  const size_t high = g_high.load(std::memory_order_relaxed);
  for (size_t i = 0; i < high; i++) {
    Slot& s = g_slots[i];
    if (s.start.load(std::memory_order_relaxed) == 0 || s.notifier.load(std::memory_order_relaxed) != notifier) continue;
    uint32_t expected = kPoisonNew;
    if (s.poison.compare_exchange_strong(expected, kPoisonReported, std::memory_order_acq_rel)) {
      ids.push_back(s.id.load(std::memory_order_relaxed));
    }
  }
  return ids;
}

Napi::Array IdArray(Napi::Env env, const std::vector<uint64_t>& ids) {
  Napi::Array a = Napi::Array::New(env, ids.size());
  for (size_t i = 0; i < ids.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(ids[i])));
  return a;
}

void OnAsync(uv_async_t* h) {
  Notifier* n = reinterpret_cast<Notifier*>(h);
  if (n->cb.IsEmpty()) return;  // kept for takeGuestMemoryFaults()
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(g_regMu);
    ids = TakeNewLocked(n->index);
  }
  if (ids.empty()) return;
  Napi::Env env(n->env);
  Napi::HandleScope scope(env);
  try {
    n->cb.MakeCallback(env.Global(), {IdArray(env, ids)}, *n->ctx);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

void OnNotifierClosed(uv_handle_t* h) { delete reinterpret_cast<Notifier*>(h); }

void CleanupNotifier(void* arg) {
  Notifier* n = static_cast<Notifier*>(arg);
  {
    std::lock_guard<std::mutex> lock(g_regMu);
    g_notifiers[n->index].store(nullptr, std::memory_order_release);
    g_envs.erase(n->env);
  }
  n->cb.Reset();
  n->ctx.reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&n->async), OnNotifierClosed);
}

Notifier* NotifierLocked(Napi::Env env) {
  auto it = g_envs.find(env);
  if (it != g_envs.end()) return it->second;
  uint32_t index = kNotifiers;
  for (uint32_t i = 0; i < kNotifiers; i++) {
    if (g_notifiers[i].load(std::memory_order_relaxed) == nullptr) {
      index = i;
      break;
    }
  }
  if (index == kNotifiers) ThrowSysError(env, ENOSPC, "uv_async_init", nullptr, "too many environments");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) ThrowSysError(env, EINVAL, "napi_get_uv_event_loop");
  auto n = std::make_unique<Notifier>();
  n->env = env;
  n->index = index;
  int r = uv_async_init(loop, &n->async, OnAsync);
  if (r < 0) throw MakeSysError(env, r, "uv_async_init");
  uv_unref(reinterpret_cast<uv_handle_t*>(&n->async));  // never keeps the process alive
  n->ctx = std::make_unique<Napi::AsyncContext>(env, "VhostGuestMemoryFault");
  Notifier* raw = n.release();
  napi_add_env_cleanup_hook(env, CleanupNotifier, raw);
  g_envs[env] = raw;
  g_notifiers[index].store(raw, std::memory_order_release);
  return raw;
}

void WriteSlot(Slot& s, uintptr_t start, uintptr_t end, uint64_t id, int prot, uint32_t notifier) {
  const uint32_t seq = s.seq.load(std::memory_order_relaxed);
  s.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.start.store(start, std::memory_order_relaxed);
  s.end.store(end, std::memory_order_relaxed);
  s.id.store(id, std::memory_order_relaxed);
  s.prot.store(prot, std::memory_order_relaxed);
  s.notifier.store(notifier, std::memory_order_relaxed);
  s.poison.store(kPoisonNone, std::memory_order_relaxed);
  s.seq.store(seq + 2, std::memory_order_release);
}

Napi::Value OnGuestMemoryFault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !(info[0].IsFunction() || info[0].IsNull())) ThrowArgType(env, "callback");
  std::lock_guard<std::mutex> lock(g_regMu);
  Notifier* n = NotifierLocked(env);
  if (info[0].IsNull()) {
    n->cb.Reset();
    return env.Undefined();
  }
  n->cb = Napi::Persistent(info[0].As<Napi::Function>());
  // Faults that came while no callback was set are reported now (through the loop, not from this call).
  uv_async_send(&n->async);
  return env.Undefined();
}

Napi::Value TakeGuestMemoryFaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(g_regMu);
    auto it = g_envs.find(env);
    if (it != g_envs.end()) ids = TakeNewLocked(it->second->index);
  }
  return IdArray(env, ids);
}

}  // namespace

uint64_t GuardAdd(Napi::Env env, uint8_t* start, size_t byteLen, int prot) {
  std::lock_guard<std::mutex> lock(g_regMu);
  InstallLocked(env);
  Notifier* n = NotifierLocked(env);
  const uintptr_t s = reinterpret_cast<uintptr_t>(start) & g_pageMask;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(start) + byteLen + ~g_pageMask) & g_pageMask;
  size_t i = 0;
  while (i < kSlots && g_slots[i].start.load(std::memory_order_relaxed) != 0) i++;
  if (i == kSlots) ThrowSysError(env, ENOSPC, "guardMapping", nullptr, "the SIGBUS guard registry is full");
  const uint64_t id = g_nextId++;
  WriteSlot(g_slots[i], s, e, id, prot, n->index);
  if (i >= g_high.load(std::memory_order_relaxed)) g_high.store(i + 1, std::memory_order_release);
  return id;
}

bool GuardRemove(uint64_t id) {
  if (id == 0) return false;
  std::lock_guard<std::mutex> lock(g_regMu);
  const size_t high = g_high.load(std::memory_order_relaxed);
  for (size_t i = 0; i < high; i++) {
    Slot& s = g_slots[i];
    if (s.start.load(std::memory_order_relaxed) != 0 && s.id.load(std::memory_order_relaxed) == id) {
      WriteSlot(s, 0, 0, 0, 0, 0);
      return true;
    }
  }
  return false;
}

void InitGuard(Napi::Env env, Napi::Object exports) {
  exports.Set("onGuestMemoryFault", Napi::Function::New(env, OnGuestMemoryFault, "onGuestMemoryFault"));
  exports.Set("takeGuestMemoryFaults", Napi::Function::New(env, TakeGuestMemoryFaults, "takeGuestMemoryFaults"));
}

}  // namespace vhost
