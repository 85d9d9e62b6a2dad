// Postcopy without blocking the event loop (vhost-user.rst "Postcopy migration"; issue 15: a frontend that
// never places a missing page must not freeze every session of the process). Two calls:
//
//   - mincore(ab, offset, byteLen): which page of a range of our mapping is not resident (mincore(2)). For a
//     MAP_SHARED mapping of shmem/memfd that is page-cache residency, which is what a page placed by
//     UFFDIO_COPY (into any mapping of the file, ours or the frontend's) creates and what a page the frontend
//     has not placed yet lacks. Never faults, never blocks.
//   - prefault(ab, offset, byteLen, callback): reads one byte of every page of the range on a helper thread of
//     its own, then calls `callback` on the event loop. A page missing under a userfaultfd blocks that thread
//     in the kernel (not the loop) until the frontend places it; the touch is also what raises the fault event
//     the frontend serves.
//
// Threads: one short-lived detached thread per prefault (64 KiB stack, asynchronous signals blocked), not the
// libuv pool: a prefault may block for as long as the frontend likes, and four of them would otherwise hold
// the whole pool (fs, dns, crypto, zlib of every session). Callers bound how many they start.
//
// Memory safety: the thread reads through a pin (mmap.cc PinMapping): the address range stays mapped until the
// completion is handled, whatever munmap() or the GC do meanwhile. munmap() retires a pinned mapping as usual
// (private zero pages over it); a thread blocked on a page of it stays blocked until the userfaultfd range is
// woken (UFFDIO_WAKE) or the userfaultfd is released, then reads the zero page and completes. The SIGBUS guard
// (guard.cc) covers the threads too: it is process wide.
//
// Completion: per environment a Hub (uv_async_t, unref'd: pending prefaults never keep the process alive) that
// threads queue finished jobs on; the loop unpins, then calls the callback (napi_make_callback: an exception
// becomes an 'uncaughtException', as for any I/O callback). When the environment is torn down first, the
// callbacks are dropped and a thread that finishes later unpins on its own.

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

constexpr int64_t kMaxLen = INT64_C(1) << 53;
constexpr size_t kStack = 64 * 1024;
constexpr size_t kVec = 512;  // mincore(2) result bytes per call

struct Job;

struct Hub {
  uv_async_t async;
  napi_env env = nullptr;
  std::mutex mu;
  bool alive = true;        // under mu: false once the environment is torn down
  std::vector<Job*> done;   // under mu
  std::unordered_map<uint64_t, Napi::FunctionReference> callbacks;  // JS thread only
  uint64_t nextId = 1;                                               // JS thread only
  std::unique_ptr<Napi::AsyncContext> ctx;                           // JS thread only
  std::shared_ptr<Hub> self;  // the uv handle's reference: dropped when the handle is closed
};

struct Job {
  std::shared_ptr<Hub> hub;
  uint64_t id;
  void* mapping;  // the pin
  uintptr_t start;
  uintptr_t end;
  uintptr_t page;
};

std::mutex g_hubsMu;
std::unordered_map<napi_env, std::shared_ptr<Hub>> g_hubs;

void OnAsync(uv_async_t* h) {
  Hub* hub = static_cast<Hub*>(h->data);
  std::vector<Job*> jobs;
  {
    std::lock_guard<std::mutex> lock(hub->mu);
    jobs.swap(hub->done);
  }
  Napi::Env env(hub->env);
  for (Job* j : jobs) {
    UnpinMapping(j->mapping);
    Napi::FunctionReference cb;
    auto it = hub->callbacks.find(j->id);
    if (it != hub->callbacks.end()) {
      cb = std::move(it->second);
      hub->callbacks.erase(it);
    }
    delete j;
    if (cb.IsEmpty() || !hub->ctx) continue;
    Napi::HandleScope scope(env);
    try {
      cb.MakeCallback(env.Global(), std::initializer_list<napi_value>{}, *hub->ctx);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
  }
}

void OnHubClosed(uv_handle_t* h) {
  Hub* hub = static_cast<Hub*>(h->data);
  std::shared_ptr<Hub> last = std::move(hub->self);  // may free the hub when this scope ends
}

void CleanupHub(void* arg) {
  Hub* hub = static_cast<Hub*>(arg);
  std::vector<Job*> jobs;
  {
    std::lock_guard<std::mutex> lock(hub->mu);
    hub->alive = false;
    jobs.swap(hub->done);
  }
  for (Job* j : jobs) {
    UnpinMapping(j->mapping);
    delete j;
  }
  {
    std::lock_guard<std::mutex> lock(g_hubsMu);
    g_hubs.erase(hub->env);
  }
  hub->callbacks.clear();
  hub->ctx.reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&hub->async), OnHubClosed);
}

std::shared_ptr<Hub> HubFor(Napi::Env env) {
  std::lock_guard<std::mutex> lock(g_hubsMu);
  auto it = g_hubs.find(env);
  if (it != g_hubs.end()) return it->second;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) ThrowSysError(env, EINVAL, "napi_get_uv_event_loop");
  auto hub = std::make_shared<Hub>();
  hub->env = env;
  int r = uv_async_init(loop, &hub->async, OnAsync);
  if (r < 0) throw MakeSysError(env, r, "uv_async_init");
  hub->async.data = hub.get();
  uv_unref(reinterpret_cast<uv_handle_t*>(&hub->async));
  hub->ctx = std::make_unique<Napi::AsyncContext>(env, "VhostPrefault");
  hub->self = hub;
  napi_add_env_cleanup_hook(env, CleanupHub, hub.get());
  g_hubs[env] = hub;
  return hub;
}

void* RunJob(void* arg) {
  Job* j = static_cast<Job*>(arg);
  for (uintptr_t a = j->start & ~(j->page - 1); a < j->end; a += j->page) {
    const uintptr_t at = a < j->start ? j->start : a;
    (void)*reinterpret_cast<const volatile uint8_t*>(at);  // may block in a userfault until the page is placed
  }
  std::shared_ptr<Hub> hub = j->hub;  // outlives the job, which the loop may free as soon as it is queued
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(hub->mu);
    if (hub->alive) {
      hub->done.push_back(j);
      queued = true;
      uv_async_send(&hub->async);
    }
  }
  if (!queued) {
    UnpinMapping(j->mapping);
    delete j;
  }
  return nullptr;
}

// mincore(ab, offset, byteLen): -1 when every page of [offset, offset + byteLen) is resident, else the offset in
// `ab` of the first byte of the range on a page that is not (`offset` itself when that is the first page).
Napi::Value Mincore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowArgType(env, "ab");
  int64_t offset = ArgInt(info, 1, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 2, "byteLen", 0, kMaxLen);
  MappingRef m = LookupMapping(env, info[0], "ab", "mincore");
  if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > m.byteLen) ThrowRange(env, "offset + byteLen");
  if (byteLen == 0) return Napi::Number::New(env, -1);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t user = reinterpret_cast<uintptr_t>(m.user);
  const uintptr_t start = user + static_cast<uintptr_t>(offset);
  const uintptr_t end = start + static_cast<uintptr_t>(byteLen);
  unsigned char vec[kVec];
  for (uintptr_t at = start & ~(page - 1); at < end;) {
    const size_t n = std::min<size_t>(kVec, (end - at + page - 1) / page);
    // The VMA covers whole pages, so the last (partial) page of the buffer is inside it.
    if (mincore(reinterpret_cast<void*>(at), n * page, vec) < 0) ThrowSysError(env, errno, "mincore");
    for (size_t i = 0; i < n; i++) {
      if ((vec[i] & 1) == 0) {
        const uintptr_t miss = std::max(at + i * page, start);
        return Napi::Number::New(env, static_cast<double>(miss - user));
      }
    }
    at += n * page;
  }
  return Napi::Number::New(env, -1);
}

// prefault(ab, offset, byteLen, callback): see the header comment.
Napi::Value Prefault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowArgType(env, "ab");
  int64_t offset = ArgInt(info, 1, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 2, "byteLen", 1, kMaxLen);
  if (info.Length() < 4 || !info[3].IsFunction()) ThrowArgType(env, "callback");
  std::shared_ptr<Hub> hub = HubFor(env);
  MappingPin pin = PinMapping(env, info[0], "ab", "prefault");
  if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > pin.byteLen) {
    UnpinMapping(pin.mapping);
    ThrowRange(env, "offset + byteLen");
  }
  const uint64_t id = hub->nextId++;
  const uintptr_t start = reinterpret_cast<uintptr_t>(pin.user) + static_cast<uintptr_t>(offset);
  Job* job = new Job{hub, id, pin.mapping, start, start + static_cast<uintptr_t>(byteLen),
                     static_cast<uintptr_t>(sysconf(_SC_PAGESIZE))};
  hub->callbacks.emplace(id, Napi::Persistent(info[3].As<Napi::Function>()));

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, std::max<size_t>(kStack, static_cast<size_t>(PTHREAD_STACK_MIN)));
  // The thread inherits this mask: asynchronous signals stay with the loop's threads; faults (SIGBUS for the
  // guard, SIGSEGV) are synchronous and cannot be blocked usefully anyway.
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  for (int sig : {SIGBUS, SIGSEGV, SIGFPE, SIGILL, SIGTRAP}) sigdelset(&all, sig);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  int r = pthread_create(&thread, &attr, RunJob, job);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    hub->callbacks.erase(id);
    UnpinMapping(job->mapping);
    delete job;
    ThrowSysError(env, r, "pthread_create", nullptr, "prefault thread");
  }
  return env.Undefined();
}

}  // namespace

void InitPrefault(Napi::Env env, Napi::Object exports) {
  exports.Set("mincore", Napi::Function::New(env, Mincore, "mincore"));
  exports.Set("prefault", Napi::Function::New(env, Prefault, "prefault"));
}

}  // namespace vhost
