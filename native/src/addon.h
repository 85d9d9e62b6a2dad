// Shared declarations: per-family registration functions and strict argument readers.
// Argument errors are programming errors in the TS layer: they throw TypeError/RangeError with
// code 'ERR_INVALID_ARG_TYPE' / 'ERR_OUT_OF_RANGE' (Node's codes), not SysErrors.
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace vhost {

void InitUnixSocket(Napi::Env env, Napi::Object exports);
void InitFdio(Napi::Env env, Napi::Object exports);
void InitMmap(Napi::Env env, Napi::Object exports);
void InitEventfd(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitUffd(Napi::Env env, Napi::Object exports);
void InitVfio(Napi::Env env, Napi::Object exports);
void InitGuard(Napi::Env env, Napi::Object exports);
void InitPrefault(Napi::Env env, Napi::Object exports);

// A live mapping made by mmap() (mmap.cc), as seen through the ArrayBuffer that exposes it.
struct MappingRef {
  uint8_t* base;   // page-aligned start of the kernel mapping (the VMA)
  size_t mapLen;   // length given to mmap (the VMA extends to the next page boundary)
  uint8_t* user;   // byte 0 of the ArrayBuffer (base + the sub-page part of the requested file offset)
  size_t byteLen;  // ArrayBuffer length: [user, user + byteLen) is what JS may address
};

// The mapping behind `v`, which must be a non-detached ArrayBuffer returned by mmap(); anything else (a foreign
// or detached buffer, a munmap()ed one) throws an EINVAL SysError naming `syscall`. The result stays valid for
// the current call: only the JS thread holding the (attached) buffer can munmap it, and the GC cannot
// finalize a buffer that is an argument of the running call.
MappingRef LookupMapping(Napi::Env env, Napi::Value v, const char* name, const char* syscall);

// A mapping pinned for a helper thread (prefault.cc): [user, user + byteLen) stays mapped (the file's pages, or
// the zero pages munmap() retires it with) until UnpinMapping(mapping), whatever munmap() or the GC do meanwhile.
struct MappingPin {
  void* mapping;
  uint8_t* user;
  size_t byteLen;
};

// Pins the mapping behind `v` (a live, non-retired ArrayBuffer returned by mmap(), else EINVAL naming `syscall`).
// JS thread.
MappingPin PinMapping(Napi::Env env, Napi::Value v, const char* name, const char* syscall);
// Drops one pin; the last one does what the finalizer or munmap() deferred. Any thread (never a signal handler).
void UnpinMapping(void* mapping);

// The SIGBUS guard registry (guard.cc). GuardAdd registers [start, start+byteLen) rounded out to whole pages,
// mapped with `prot`, for the calling environment (installing the handler on first use) and returns its id
// (never 0, never reused); throws ENOSPC when the registry is full. GuardRemove unregisters an id (false when
// it is not registered). Both lock a mutex: JS threads only, never from a signal handler.
uint64_t GuardAdd(Napi::Env env, uint8_t* start, size_t byteLen, int prot);
bool GuardRemove(uint64_t id);

[[noreturn]] inline void ThrowArgType(Napi::Env env, const std::string& what) {
  Napi::TypeError e = Napi::TypeError::New(env, "The \"" + what + "\" argument has an invalid type");
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  throw e;
}

[[noreturn]] inline void ThrowRange(Napi::Env env, const std::string& what) {
  Napi::RangeError e = Napi::RangeError::New(env, "The value of \"" + what + "\" is out of range");
  e.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  throw e;
}

// An integer Number within [lo, hi] (doubles represent integers exactly up to 2^53).
inline int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsNumber()) ThrowArgType(env, name);
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d) ThrowRange(env, name);
  if (d < static_cast<double>(lo) || d > static_cast<double>(hi)) ThrowRange(env, name);
  return static_cast<int64_t>(d);
}

inline int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name = "fd") {
  return static_cast<int>(ArgInt(info, i, name, 0, INT32_MAX));
}

inline bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) ThrowArgType(info.Env(), name);
  return info[i].As<Napi::Boolean>().Value();
}

inline std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsString()) ThrowArgType(info.Env(), name);
  return info[i].As<Napi::String>().Utf8Value();
}

// A byte window [offset, offset+byteLen) of a Uint8Array (Buffer included). Returns the pointer to its start.
inline uint8_t* ViewWindow(Napi::Env env, Napi::Value v, const char* name, int64_t offset, int64_t byteLen) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) ThrowArgType(env, name);
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  size_t len = a.ByteLength();
  if (offset < 0 || byteLen < 0 || static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > len) {
    ThrowRange(env, std::string(name) + " window");
  }
  // Data() already includes the view's byteOffset. A detached view has length 0, caught above unless byteLen==0.
  uint8_t* p = a.Data();
  return p == nullptr ? nullptr : p + offset;
}

inline uint8_t* ArgView(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t offset, int64_t byteLen) {
  if (i >= info.Length()) ThrowArgType(info.Env(), name);
  return ViewWindow(info.Env(), info[i], name, offset, byteLen);
}

}  // namespace vhost
