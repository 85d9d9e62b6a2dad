// Readiness without blocking: a uv_poll_t on Node's own event loop. The JS callback receives
// (err | null, events) with libuv's UV_READABLE / UV_WRITABLE / UV_DISCONNECT bits.
//
// Rules inherited from libuv (uv_poll_t docs):
//   - one *started* poller per fd per loop: starting a second one fails with EEXIST;
//   - close() the Poller BEFORE closing its fd. Stopping/closing a uv_poll removes the fd *number* from epoll,
//     so closing it after the number was reused would silently unregister someone else's watcher.
// Because of the second rule a Poller is never closed behind the caller's back: it stays strongly referenced
// from construction until close(), so garbage collection cannot close it at an arbitrary later time (a
// forgotten Poller leaks a small object instead of corrupting another watcher). Loop liveness follows libuv:
// a started handle keeps the loop alive, a stopped or closed one does not.
//
// The uv_poll_t lives in a separate heap block that OnClose frees, so it can outlive the C++ object; OnPoll
// checks the owner pointer, so no callback reaches JS after close(). Callbacks go through napi_make_callback
// with an async context, so process.nextTick and promise jobs queued by the callback run right after it (as
// for any Node I/O callback), and a throwing callback becomes an 'uncaughtException' (napi_fatal_exception).
// The fd itself is never closed here.

#include <uv.h>

#include <memory>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

constexpr int kAllEvents = UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED;

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod<&Poller::Start>("start"), InstanceMethod<&Poller::Stop>("stop"),
                        InstanceMethod<&Poller::Close>("close")});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) ThrowArgType(env, "callback");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) ThrowSysError(env, EINVAL, "napi_get_uv_event_loop");
    auto h = std::make_unique<Handle>();
    h->owner = this;
    int r = uv_poll_init(loop, &h->poll, fd);  // on failure the handle was never registered with the loop
    if (r < 0) throw MakeSysError(env, r, "uv_poll_init");
    handle_ = h.release();
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    ctx_ = std::make_unique<Napi::AsyncContext>(env, "VhostPoller");
    Ref();  // released by close(); see the header comment
  }

  ~Poller() override {
    // Normally reached only after close(); at environment teardown the handle may still be open.
    if (handle_ != nullptr) CloseHandle();
  }

 private:
  struct Handle {
    uv_poll_t poll;  // first member: uv_handle_t* <-> Handle* by cast
    Poller* owner;   // nulled on close: late events are dropped
  };

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int events = static_cast<int>(ArgInt(info, 0, "events", 0, kAllEvents));
    if ((events & ~kAllEvents) != 0 || events == 0) ThrowRange(env, "events");
    if (handle_ == nullptr) ThrowSysError(env, EBADF, "uv_poll_start", nullptr, "poller is closed");
    int r = uv_poll_start(&handle_->poll, events, OnPoll);
    if (r < 0) throw MakeSysError(env, r, "uv_poll_start");
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) uv_poll_stop(&handle_->poll);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) {
      CloseHandle();
      Unref();
      // Drop the callback now: it usually closes over this object, and a strong reference would keep both
      // alive forever. The async context is destroyed after a dispatch in progress finishes.
      cb_.Reset();
      if (!dispatching_) ctx_.reset();
    }
    return info.Env().Undefined();
  }

  void CloseHandle() {
    handle_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&handle_->poll), OnClose);
    handle_ = nullptr;
  }

  static void OnClose(uv_handle_t* h) { delete reinterpret_cast<Handle*>(h); }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    Poller* self = reinterpret_cast<Handle*>(h)->owner;
    if (self == nullptr || self->cb_.IsEmpty()) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    Napi::Object obj = self->Value();
    Napi::Value err = status < 0 ? MakeSysError(env, status, "uv_poll").Value() : env.Null();
    self->dispatching_ = true;
    try {
      self->cb_.MakeCallback(obj, {err, Napi::Number::New(env, events)}, *self->ctx_);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
    self->dispatching_ = false;
    if (self->handle_ == nullptr) self->ctx_.reset();  // closed from inside the callback
  }

  Handle* handle_ = nullptr;
  Napi::FunctionReference cb_;
  std::unique_ptr<Napi::AsyncContext> ctx_;
  bool dispatching_ = false;
};

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) { exports.Set("Poller", Poller::Define(env)); }

}  // namespace vhost
