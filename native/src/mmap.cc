// Memory: fstat, mmap/munmap of shared-memory fds (guest RAM regions from SET_MEM_TABLE / ADD_MEM_REG, log
// and inflight areas), memfd_create and ftruncate (for tests and for frontend emulation), and two calls on
// live mappings: mmapAddress (postcopy: vhost-user.rst SET_MEM_TABLE "the back-end replies with the bases of
// the memory mapped regions") and madvise.
//
// A mapping is exposed as an *external* ArrayBuffer. Two ways to release it:
//   - munmap(ab) retires it: the file's pages are replaced at the same address by private zero pages
//     (mmap MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS), so the guest memory is released at once and a view
//     that outlives its table (vhost-user.rst regions are replaced by SET_MEM_TABLE / REM_MEM_REG) reads
//     zeros and writes into memory nobody else sees, instead of touching freed address space. The buffer
//     is NOT detached: detaching any ArrayBuffer makes V8's optimized code check every typed-array access
//     for detachment for the rest of the process (measured: +20-30 % per switched frame; decisions.md D43).
//     The address range itself is released by the finalizer. If the replacement cannot be made, the old
//     way: detach, then munmap();
//   - otherwise the GC finalizer munmap()s when the buffer is collected.
// A registry keyed by the buffer's data pointer lets munmap() find the page-aligned base and length; both
// paths agree through `Mapping::mapped` / `retired`, so memory is unmapped exactly once.
//
// Pins (postcopy, prefault.cc): a helper thread that reads a mapping outside any JS call pins it first
// (PinMapping). While pinned, the address range stays ours: munmap() still retires it (the zero pages it maps
// are as readable as the file's), but the finalizer and munmap()'s detach-and-unmap fallback leave the range
// mapped and the last UnpinMapping releases it. So the thread never touches an address that was given back.
//
// Aliases (postcopy): mmapAlias(ab) maps the same pages a second time (mremap with old_size 0, which a
// MAP_SHARED mapping allows: "create a new mapping of the same pages"), at another address, as its own
// buffer. Registering only the alias with a userfaultfd keeps the source mapping, which the event loop
// reads, free of userfaults: nothing the loop does can block on a page the frontend never places.
//
// Shrinking files: a frontend that ftruncates a file we mapped makes our next access past its new end SIGBUS.
// addSeals / getSeals (fcntl F_ADD_SEALS / F_GET_SEALS) let the caller seal it against shrinking where the
// file allows; guardMapping registers a mapping with the SIGBUS guard (guard.cc) for what cannot be sealed.
// A guarded mapping is unregistered when it is retired (munmap) or unmapped (finalizer), before its address
// range can be reused by anything else.

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

// Node 20 caps ArrayBuffer/Buffer length at 2^32 bytes on 64-bit (buffer.constants.MAX_LENGTH); larger guest
// regions must be windowed by the caller. Checked up front so creation cannot fail after mmap().
constexpr uint64_t kMaxMapLen = UINT64_C(1) << 32;

struct Mapping {
  uint8_t* base;  // page-aligned address returned by mmap
  size_t mapLen;  // length passed to mmap
  uint8_t* user;  // base + (offset - aligned offset): what the ArrayBuffer starts at
  bool mapped;
  bool creating;  // finalizer must not free the struct while New() is still using it
  int prot;
  bool retired;   // munmap() replaced the file's pages by private zero pages; the range is still ours
  uint64_t guard; // SIGBUS guard id (guard.cc), 0 when not guarded
  int pins = 0;                  // PinMapping count (prefault threads); under g_mu
  bool finalized = false;        // the finalizer ran while pinned: the last unpin releases and frees
  bool releaseDeferred = false;  // munmap()'s fallback ran while pinned: the last unpin releases
};

std::mutex g_mu;
std::unordered_map<void*, Mapping*> g_maps;  // user pointer -> live mapping

void Release(Mapping* m) {  // caller holds g_mu
  if (!m->mapped) return;
  g_maps.erase(m->user);
  GuardRemove(m->guard);  // before the range is released and can be reused
  m->guard = 0;
  munmap(m->base, m->mapLen);
  m->mapped = false;
}

void Finalize(napi_env, void*, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  std::lock_guard<std::mutex> lock(g_mu);
  if (m->pins > 0) {
    m->finalized = true;  // a helper thread still reads it: UnpinMapping releases and frees
    return;
  }
  Release(m);
  if (!m->creating) delete m;
}

// Exposes a fresh mapping (m->creating set) as an external ArrayBuffer of byteLen bytes and registers it; on
// failure the mapping is released and the pending JS exception (or ENOMEM) is thrown, naming `syscall`.
Napi::Value Expose(Napi::Env env, Mapping* m, size_t byteLen, const char* syscall) {
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(env, m->user, byteLen, Finalize, m, &ab);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    m->creating = false;
    if (s != napi_ok) {
      // Node may or may not run (or later schedule) the finalizer for a failed creation; Release() unmaps
      // exactly once either way, and the small struct is deliberately leaked rather than risk a use-after-free.
      Release(m);
    } else if (m->mapped) {
      g_maps[m->user] = m;
    }
  }
  if (s != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) throw Napi::Error::New(env);
    ThrowSysError(env, ENOMEM, syscall, nullptr, "napi_create_external_arraybuffer failed");
  }
  return Napi::Value(env, ab);
}

Napi::Value Fstat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowSysError(env, errno, "fstat");
  Napi::Object r = Napi::Object::New(env);
  r.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  r.Set("mode", Napi::Number::New(env, st.st_mode));
  return r;
}

// What an fd refers to, for the checks of fds a frontend passes (an eventfd where a kick fd belongs, a
// mappable file where guest memory belongs): fstat's file type; an anonymous inode (no type bits) or a
// regular file is named by its /proc/self/fd link: anon_inode:[eventfd], /memfd:NAME.
Napi::Value FdKind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowSysError(env, errno, "fstat");
  const char* kind = "other";
  switch (st.st_mode & S_IFMT) {
    case S_IFSOCK: kind = "socket"; break;
    case S_IFIFO: kind = "pipe"; break;
    case S_IFCHR: kind = "char"; break;
    case S_IFBLK: kind = "block"; break;
    case S_IFDIR: kind = "dir"; break;
    case S_IFREG: kind = "file"; break;
    default: break;
  }
  if ((st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == 0) {
    char path[40];
    char target[128];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n > 0) {
      target[n] = 0;
      if (strncmp(target, "/memfd:", 7) == 0) kind = "memfd";
      else if (strcmp(target, "anon_inode:[eventfd]") == 0) kind = "eventfd";
      else if (strncmp(target, "anon_inode:", 11) == 0) kind = "anon";
    }
  }
  return Napi::String::New(env, kind);
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 1, "offset", 0, INT64_C(1) << 53);
  int64_t byteLen = ArgInt(info, 2, "byteLen", 0, INT64_C(1) << 53);
  bool writable = ArgBool(info, 3, "writable");
  // A zero-length mapping is EINVAL for mmap(2) and useless as a region.
  if (byteLen == 0) ThrowSysError(env, EINVAL, "mmap", nullptr, "byteLen must be > 0");
  if (static_cast<uint64_t>(byteLen) > kMaxMapLen) ThrowSysError(env, EOVERFLOW, "mmap", nullptr, "byteLen exceeds the ArrayBuffer limit");

  // mmap needs a page-aligned file offset: map from the page below and hand out a pointer to the byte asked for.
  const int64_t page = sysconf(_SC_PAGESIZE);
  const int64_t aligned = offset & ~(page - 1);
  const size_t delta = static_cast<size_t>(offset - aligned);
  const size_t mapLen = static_cast<size_t>(byteLen) + delta;
  // Read-only mappings fault on write (SIGSEGV): callers pass writable=false only for memory they never write.
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* base = mmap(nullptr, mapLen, prot, MAP_SHARED, fd, static_cast<off_t>(aligned));
  if (base == MAP_FAILED) ThrowSysError(env, errno, "mmap");

  Mapping* m = new Mapping{static_cast<uint8_t*>(base), mapLen, static_cast<uint8_t*>(base) + delta, true, true, prot, false, 0};
  return Expose(env, m, static_cast<size_t>(byteLen), "mmap");
}

// mmapAlias(ab): the same pages mapped once more (see the header comment). Same length, protection and
// sub-page offset as the source; guarded by the SIGBUS guard when the source is (the file can shrink under
// the alias as well). Throws EINVAL for a buffer that is not a live mapping of ours, and mremap's error
// (EINVAL for a mapping the kernel cannot alias, e.g. hugetlbfs on older kernels) otherwise.
Napi::Value MmapAlias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) ThrowArgType(env, "ab");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  void* data = ab.IsDetached() ? nullptr : ab.Data();
  uint8_t* srcBase;
  size_t mapLen;
  size_t delta;
  int prot;
  bool guarded;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = data == nullptr ? g_maps.end() : g_maps.find(data);
    const Mapping* src = it == g_maps.end() ? nullptr : it->second;
    if (src == nullptr || !src->mapped || src->retired || src->mapLen - static_cast<size_t>(src->user - src->base) != ab.ByteLength()) {
      ThrowSysError(env, EINVAL, "mmapAlias", nullptr, "not a live ArrayBuffer returned by mmap()");
    }
    srcBase = src->base;
    mapLen = src->mapLen;
    delta = static_cast<size_t>(src->user - src->base);
    prot = src->prot;
    guarded = src->guard != 0;
    // Under g_mu: the source cannot be retired or released meanwhile (both take g_mu).
    void* base = mremap(srcBase, 0, mapLen, MREMAP_MAYMOVE);
    if (base == MAP_FAILED) ThrowSysError(env, errno, "mremap", nullptr, "alias of a mapping");
    srcBase = static_cast<uint8_t*>(base);
  }
  Mapping* m = new Mapping{srcBase, mapLen, srcBase + delta, true, true, prot, false, 0};
  if (guarded) {
    try {
      m->guard = GuardAdd(env, m->base, m->mapLen, m->prot);
    } catch (...) {
      munmap(m->base, m->mapLen);
      delete m;
      throw;
    }
  }
  return Expose(env, m, mapLen - delta, "mmapAlias");
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) ThrowArgType(env, "ab");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return env.Undefined();  // already unmapped: idempotent
  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_maps.find(ab.Data());
    m = it == g_maps.end() ? nullptr : it->second;
    if (m != nullptr && m->retired) return env.Undefined();  // already retired: idempotent
  }
  if (m == nullptr || m->mapLen - static_cast<size_t>(m->user - m->base) != ab.ByteLength()) {
    ThrowSysError(env, EINVAL, "munmap", nullptr, "not an ArrayBuffer returned by mmap()");
  }
  {
    std::lock_guard<std::mutex> lock(g_mu);
    void* r = mmap(m->base, m->mapLen, m->prot, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r != MAP_FAILED) {
      m->retired = true;  // the finalizer munmap()s the zero pages
      GuardRemove(m->guard);  // private zero pages cannot SIGBUS
      m->guard = 0;
      return env.Undefined();
    }
  }
  // No replacement (ENOMEM): detach before unmapping, so no live view is left over unmapped memory.
  ab.Detach();
  std::lock_guard<std::mutex> lock(g_mu);
  if (m->pins > 0) m->releaseDeferred = true;  // a helper thread reads it: the last UnpinMapping releases
  else Release(m);  // the finalizer later sees mapped == false and only frees the struct
  return env.Undefined();
}

// The address of byte 0 of the buffer, i.e. of the requested file offset (not of the page-aligned VMA start):
// that is the address the guest region's first byte has in our address space, which is what postcopy needs.
Napi::Value MmapAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowArgType(env, "ab");
  MappingRef m = LookupMapping(env, info[0], "ab", "mmapAddress");
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.user)));
}

// madvise(2) on [offset, offset+byteLen) of a mapping. The kernel wants a page-aligned start, so:
//   - 'dontneed' / 'remove' discard memory, so the range is shrunk INWARD to the whole pages inside it: bytes
//     outside the caller's range (the sub-page head before byte 0 of an unaligned mapping, the file bytes in
//     the last page after its end) are never dropped. MADV_REMOVE punches a hole in the shmem/memfd file;
//     MADV_DONTNEED on a MAP_SHARED mapping only drops our page-table entries (the page cache keeps the data,
//     the next access maps it again; on private anonymous memory it would read back zeros).
//   - 'willneed' is a read-ahead hint, so the range grows OUTWARD to page boundaries (still inside the VMA,
//     which always covers whole pages).
// Returns the number of bytes the kernel was asked to cover (0 when an inward range holds no whole page).
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1) ThrowArgType(env, "ab");
  int64_t offset = ArgInt(info, 1, "offset", 0, INT64_C(1) << 53);
  int64_t byteLen = ArgInt(info, 2, "byteLen", 0, INT64_C(1) << 53);
  std::string adviceName = ArgString(info, 3, "advice");
  int advice;
  if (adviceName == "dontneed") {
    advice = MADV_DONTNEED;
  } else if (adviceName == "remove") {
    advice = MADV_REMOVE;
  } else if (adviceName == "willneed") {
    advice = MADV_WILLNEED;
  } else {
    Napi::TypeError e = Napi::TypeError::New(env, "The argument 'advice' must be 'dontneed', 'remove' or 'willneed'");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
    throw e;
  }
  MappingRef m = LookupMapping(env, info[0], "ab", "madvise");
  if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > m.byteLen) ThrowRange(env, "offset + byteLen");
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t start = reinterpret_cast<uintptr_t>(m.user) + static_cast<uintptr_t>(offset);
  uintptr_t end = start + static_cast<uintptr_t>(byteLen);
  if (advice != MADV_WILLNEED) {
    start = (start + page - 1) & ~(page - 1);
    end &= ~(page - 1);
  } else {
    start &= ~(page - 1);
    end = (end + page - 1) & ~(page - 1);
  }
  if (byteLen == 0 || end <= start) return Napi::Number::New(env, 0);
  if (madvise(reinterpret_cast<void*>(start), end - start, advice) < 0) ThrowSysError(env, errno, "madvise");
  return Napi::Number::New(env, static_cast<double>(end - start));
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  bool sealing = ArgBool(info, 1, "allowSealing");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) ThrowSysError(env, errno, "memfd_create");
  return Napi::Number::New(env, fd);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t len = ArgInt(info, 1, "byteLen", 0, INT64_C(1) << 53);
  int r;
  do r = ftruncate(fd, static_cast<off_t>(len));
  while (r < 0 && errno == EINTR);
  if (r < 0) ThrowSysError(env, errno, "ftruncate");
  return env.Undefined();
}

// Registers the whole mapping behind a buffer returned by mmap() with the SIGBUS guard; idempotent (a guarded
// mapping returns its id again).
Napi::Value GuardMapping(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) ThrowArgType(env, "ab");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  void* data = ab.IsDetached() ? nullptr : ab.Data();
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = data == nullptr ? g_maps.end() : g_maps.find(data);
  Mapping* m = it == g_maps.end() ? nullptr : it->second;
  if (m == nullptr || !m->mapped || m->retired || m->mapLen - static_cast<size_t>(m->user - m->base) != ab.ByteLength()) {
    ThrowSysError(env, EINVAL, "guardMapping", nullptr, "not a live ArrayBuffer returned by mmap()");
  }
  if (m->guard == 0) m->guard = GuardAdd(env, m->base, m->mapLen, m->prot);
  return Napi::Number::New(env, static_cast<double>(m->guard));
}

Napi::Value UnguardMapping(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t id = static_cast<uint64_t>(ArgInt(info, 0, "id", 0, INT64_C(1) << 53));
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto& kv : g_maps) {
    if (kv.second->guard == id) kv.second->guard = 0;
  }
  return Napi::Boolean::New(env, GuardRemove(id));
}

Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int seals = static_cast<int>(ArgInt(info, 1, "seals", 0, INT32_MAX));
  if (fcntl(fd, F_ADD_SEALS, seals) < 0) ThrowSysError(env, errno, "fcntl", nullptr, "F_ADD_SEALS");
  return env.Undefined();
}

Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int r = fcntl(fd, F_GET_SEALS);
  if (r < 0) ThrowSysError(env, errno, "fcntl", nullptr, "F_GET_SEALS");
  return Napi::Number::New(env, r);
}

}  // namespace

MappingRef LookupMapping(Napi::Env env, Napi::Value v, const char* name, const char* syscall) {
  if (!v.IsArrayBuffer()) ThrowArgType(env, name);
  Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
  // A detached buffer has a null data pointer, which is never a key.
  void* data = ab.IsDetached() ? nullptr : ab.Data();
  MappingRef r{nullptr, 0, nullptr, 0};
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = data == nullptr ? g_maps.end() : g_maps.find(data);
    if (it != g_maps.end() && it->second->mapped && !it->second->retired) {
      const Mapping* m = it->second;
      r = MappingRef{m->base, m->mapLen, m->user, m->mapLen - static_cast<size_t>(m->user - m->base)};
    }
  }
  // Same check as munmap(): a buffer of another length at the same address is not ours.
  if (r.user == nullptr || r.byteLen != ab.ByteLength()) {
    ThrowSysError(env, EINVAL, syscall, nullptr, "not a live ArrayBuffer returned by mmap()");
  }
  return r;
}

MappingPin PinMapping(Napi::Env env, Napi::Value v, const char* name, const char* syscall) {
  if (!v.IsArrayBuffer()) ThrowArgType(env, name);
  Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
  void* data = ab.IsDetached() ? nullptr : ab.Data();
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = data == nullptr ? g_maps.end() : g_maps.find(data);
  Mapping* m = it == g_maps.end() ? nullptr : it->second;
  if (m == nullptr || !m->mapped || m->retired || m->mapLen - static_cast<size_t>(m->user - m->base) != ab.ByteLength()) {
    ThrowSysError(env, EINVAL, syscall, nullptr, "not a live ArrayBuffer returned by mmap()");
  }
  m->pins++;
  return MappingPin{m, m->user, m->mapLen - static_cast<size_t>(m->user - m->base)};
}

void UnpinMapping(void* mapping) {
  Mapping* m = static_cast<Mapping*>(mapping);
  std::lock_guard<std::mutex> lock(g_mu);
  if (--m->pins > 0) return;
  if (m->finalized) {
    Release(m);
    delete m;
  } else if (m->releaseDeferred) {
    Release(m);
  }
}

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
  exports.Set("fdKind", Napi::Function::New(env, FdKind, "fdKind"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("mmapAddress", Napi::Function::New(env, MmapAddress, "mmapAddress"));
  exports.Set("mmapAlias", Napi::Function::New(env, MmapAlias, "mmapAlias"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
  exports.Set("guardMapping", Napi::Function::New(env, GuardMapping, "guardMapping"));
  exports.Set("unguardMapping", Napi::Function::New(env, UnguardMapping, "unguardMapping"));
}

}  // namespace vhost
