// VFIO (linux/vfio.h, Documentation/driver-api/vfio.rst): the container/group/device ioctls a user-space
// PCI driver needs, type1 IOMMU DMA mapping of our own mmap()ed memory, interrupts as eventfds, and
// pread/pwrite on the device fd (region accesses such as PCI config space).
//
// Policy stays in TS (backend/net/ports/vfio/): which group, which IOVA, what an errno means to the user
// (not bound / group not viable / no IOMMU). BARs are mapped with mmap() from mmap.cc on the device fd at
// the region's offset, so they get the same ArrayBuffer lifetime rules as guest memory.

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

constexpr int64_t kMaxLen = INT64_C(1) << 53;

int Ioctl(int fd, unsigned long req, void* arg) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  return r;
}

[[noreturn]] void ThrowIoctl(Napi::Env env, int e, const char* what) {
  ThrowSysError(env, e, "ioctl", nullptr, what);
}

int OpenPath(Napi::Env env, const std::string& path) {
  int fd;
  do fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) ThrowSysError(env, errno, "open", &path);
  return fd;
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (i >= info.Length()) ThrowArgType(env, name);
  if (info[i].IsBigInt()) {
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) ThrowRange(env, name);
    return v;
  }
  return static_cast<uint64_t>(ArgInt(info, i, name, 0, kMaxLen));
}

// /dev/vfio/vfio: a new container (an IOMMU context, empty until a group is attached).
Napi::Value OpenContainer(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), OpenPath(info.Env(), "/dev/vfio/vfio"));
}

// /dev/vfio/<group>: ENOENT when no device of the group is bound to a VFIO driver.
Napi::Value OpenGroup(const Napi::CallbackInfo& info) {
  int64_t group = ArgInt(info, 0, "group", 0, INT32_MAX);
  return Napi::Number::New(info.Env(), OpenPath(info.Env(), "/dev/vfio/" + std::to_string(group)));
}

Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int r = Ioctl(fd, VFIO_GET_API_VERSION, nullptr);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_GET_API_VERSION");
  return Napi::Number::New(info.Env(), r);
}

// Returns the ioctl's value: > 0 when the container supports the extension (e.g. VFIO_TYPE1v2_IOMMU = 3).
Napi::Value CheckExtension(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  long ext = static_cast<long>(ArgInt(info, 1, "extension", 0, INT32_MAX));
  int r;
  do r = ioctl(fd, VFIO_CHECK_EXTENSION, ext);
  while (r < 0 && errno == EINTR);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_CHECK_EXTENSION");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value GroupGetStatus(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  vfio_group_status st;
  std::memset(&st, 0, sizeof st);
  st.argsz = sizeof st;
  if (Ioctl(fd, VFIO_GROUP_GET_STATUS, &st) < 0) ThrowIoctl(info.Env(), errno, "VFIO_GROUP_GET_STATUS");
  return Napi::Number::New(info.Env(), st.flags);
}

Napi::Value GroupSetContainer(const Napi::CallbackInfo& info) {
  int group = ArgFd(info, 0, "group");
  int container = ArgFd(info, 1, "container");
  if (Ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) {
    ThrowIoctl(info.Env(), errno, "VFIO_GROUP_SET_CONTAINER");
  }
  return info.Env().Undefined();
}

Napi::Value GroupUnsetContainer(const Napi::CallbackInfo& info) {
  int group = ArgFd(info, 0, "group");
  int r;
  do r = ioctl(group, VFIO_GROUP_UNSET_CONTAINER);
  while (r < 0 && errno == EINTR);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_GROUP_UNSET_CONTAINER");
  return info.Env().Undefined();
}

Napi::Value SetIommu(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  long type = static_cast<long>(ArgInt(info, 1, "type", 0, INT32_MAX));
  int r;
  do r = ioctl(fd, VFIO_SET_IOMMU, type);
  while (r < 0 && errno == EINTR);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_SET_IOMMU");
  return info.Env().Undefined();
}

// The device fd, by the device's name in its bus (a PCI address "0000:00:03.0").
Napi::Value GroupGetDeviceFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int group = ArgFd(info, 0, "group");
  std::string name = ArgString(info, 1, "name");
  int fd;
  do fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  while (fd < 0 && errno == EINTR);
  if (fd < 0) ThrowIoctl(env, errno, ("VFIO_GROUP_GET_DEVICE_FD '" + name + "'").c_str());
  // The kernel sets O_CLOEXEC on VFIO device fds (anon inode, O_CLOEXEC since 3.x); make sure anyway.
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return Napi::Number::New(env, fd);
}

Napi::Value DeviceGetInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  vfio_device_info di;
  std::memset(&di, 0, sizeof di);
  di.argsz = sizeof di;
  if (Ioctl(fd, VFIO_DEVICE_GET_INFO, &di) < 0) ThrowIoctl(env, errno, "VFIO_DEVICE_GET_INFO");
  Napi::Object r = Napi::Object::New(env);
  r.Set("flags", Napi::Number::New(env, di.flags));
  r.Set("numRegions", Napi::Number::New(env, di.num_regions));
  r.Set("numIrqs", Napi::Number::New(env, di.num_irqs));
  return r;
}

// Offsets and sizes fit a double: vfio-pci places region i at i << 40 (VFIO_PCI_OFFSET_SHIFT).
Napi::Value DeviceGetRegionInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint32_t index = static_cast<uint32_t>(ArgInt(info, 1, "index", 0, UINT32_MAX));
  vfio_region_info ri;
  std::memset(&ri, 0, sizeof ri);
  ri.argsz = sizeof ri;  // no room for capability chains: the kernel then only reports their size
  ri.index = index;
  if (Ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) ThrowIoctl(env, errno, "VFIO_DEVICE_GET_REGION_INFO");
  Napi::Object r = Napi::Object::New(env);
  r.Set("index", Napi::Number::New(env, ri.index));
  r.Set("flags", Napi::Number::New(env, ri.flags));
  r.Set("size", Napi::Number::New(env, static_cast<double>(ri.size)));
  r.Set("offset", Napi::Number::New(env, static_cast<double>(ri.offset)));
  return r;
}

Napi::Value DeviceGetIrqInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint32_t index = static_cast<uint32_t>(ArgInt(info, 1, "index", 0, UINT32_MAX));
  vfio_irq_info ii;
  std::memset(&ii, 0, sizeof ii);
  ii.argsz = sizeof ii;
  ii.index = index;
  if (Ioctl(fd, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0) ThrowIoctl(env, errno, "VFIO_DEVICE_GET_IRQ_INFO");
  Napi::Object r = Napi::Object::New(env);
  r.Set("index", Napi::Number::New(env, ii.index));
  r.Set("flags", Napi::Number::New(env, ii.flags));
  r.Set("count", Napi::Number::New(env, ii.count));
  return r;
}

// VFIO_DEVICE_SET_IRQS. `fds` given: DATA_EVENTFD|ACTION_TRIGGER for vectors [start, start+fds.length)
// (-1 de-assigns one vector). `fds` null: DATA_NONE with the named action over [start, start+count):
// 'trigger' with count 0 disables the whole index, 'mask'/'unmask' (INTx is auto-masked on each interrupt
// and must be unmasked after it is handled).
Napi::Value DeviceSetIrqs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint32_t index = static_cast<uint32_t>(ArgInt(info, 1, "index", 0, UINT32_MAX));
  std::string action = ArgString(info, 2, "action");
  uint32_t start = static_cast<uint32_t>(ArgInt(info, 3, "start", 0, UINT32_MAX));
  uint32_t act;
  if (action == "trigger") {
    act = VFIO_IRQ_SET_ACTION_TRIGGER;
  } else if (action == "mask") {
    act = VFIO_IRQ_SET_ACTION_MASK;
  } else if (action == "unmask") {
    act = VFIO_IRQ_SET_ACTION_UNMASK;
  } else {
    Napi::TypeError e = Napi::TypeError::New(env, "The argument 'action' must be 'trigger', 'mask' or 'unmask'");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
    throw e;
  }
  std::vector<int32_t> fds;
  uint32_t count;
  uint32_t dataType;
  if (info.Length() > 4 && info[4].IsArray()) {
    if (act != VFIO_IRQ_SET_ACTION_TRIGGER) ThrowArgType(env, "fds (eventfds only go with 'trigger')");
    Napi::Array a = info[4].As<Napi::Array>();
    if (a.Length() > 2048) ThrowRange(env, "fds length");
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsNumber()) ThrowArgType(env, "fds");
      double d = v.As<Napi::Number>().DoubleValue();
      if (d != static_cast<int32_t>(d) || d < -1) ThrowRange(env, "fds");
      fds.push_back(static_cast<int32_t>(d));
    }
    count = static_cast<uint32_t>(fds.size());
    dataType = VFIO_IRQ_SET_DATA_EVENTFD;
  } else {
    count = static_cast<uint32_t>(ArgInt(info, 5, "count", 0, UINT32_MAX));
    dataType = VFIO_IRQ_SET_DATA_NONE;
  }
  std::vector<uint8_t> buf(sizeof(vfio_irq_set) + fds.size() * sizeof(int32_t));
  vfio_irq_set* s = reinterpret_cast<vfio_irq_set*>(buf.data());
  s->argsz = static_cast<uint32_t>(buf.size());
  s->flags = dataType | act;
  s->index = index;
  s->start = start;
  s->count = count;
  if (!fds.empty()) std::memcpy(s->data, fds.data(), fds.size() * sizeof(int32_t));
  if (Ioctl(fd, VFIO_DEVICE_SET_IRQS, s) < 0) ThrowIoctl(env, errno, "VFIO_DEVICE_SET_IRQS");
  return env.Undefined();
}

// Function-level reset (EINVAL/ENOTTY when the device has no reset method).
Napi::Value DeviceReset(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int r;
  do r = ioctl(fd, VFIO_DEVICE_RESET);
  while (r < 0 && errno == EINTR);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_DEVICE_RESET");
  return info.Env().Undefined();
}

// VFIO_IOMMU_MAP_DMA of [offset, offset+byteLen) of one of our mmap() buffers at `iova`, readable and writable
// by the device. The kernel pins the pages; the caller must unmap (or close the container) before munmap().
// Page alignment of vaddr, iova and size is the kernel's rule (EINVAL otherwise): checked here for a clear error.
Napi::Value MapDma(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "container");
  if (info.Length() < 2) ThrowArgType(env, "ab");
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 1, kMaxLen);
  uint64_t iova = ArgU64(info, 4, "iova");
  MappingRef m = LookupMapping(env, info[1], "ab", "ioctl");
  if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > m.byteLen) ThrowRange(env, "offset + byteLen");
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t vaddr = reinterpret_cast<uint64_t>(m.user) + static_cast<uint64_t>(offset);
  if ((vaddr | iova | static_cast<uint64_t>(byteLen)) & (page - 1)) {
    ThrowSysError(env, EINVAL, "ioctl", nullptr, "VFIO_IOMMU_MAP_DMA: address, iova and length must be page aligned");
  }
  vfio_iommu_type1_dma_map dm;
  std::memset(&dm, 0, sizeof dm);
  dm.argsz = sizeof dm;
  dm.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  dm.vaddr = vaddr;
  dm.iova = iova;
  dm.size = static_cast<uint64_t>(byteLen);
  if (Ioctl(fd, VFIO_IOMMU_MAP_DMA, &dm) < 0) ThrowIoctl(env, errno, "VFIO_IOMMU_MAP_DMA");
  return env.Undefined();
}

// Returns the bytes unmapped (the kernel reports it back in size).
Napi::Value UnmapDma(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "container");
  uint64_t iova = ArgU64(info, 1, "iova");
  uint64_t byteLen = ArgU64(info, 2, "byteLen");
  vfio_iommu_type1_dma_unmap du;
  std::memset(&du, 0, sizeof du);
  du.argsz = sizeof du;
  du.iova = iova;
  du.size = byteLen;
  if (Ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &du) < 0) ThrowIoctl(env, errno, "VFIO_IOMMU_UNMAP_DMA");
  return Napi::Number::New(env, static_cast<double>(du.size));
}

// pread/pwrite of buf[offset, offset+byteLen) at file position `position` (a VFIO region offset + the
// register offset). Short transfers are returned, not retried: config space accesses are 1-4 bytes.
Napi::Value Pread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  int64_t pos = ArgInt(info, 4, "position", 0, kMaxLen);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  ssize_t n;
  do n = pread(fd, p, static_cast<size_t>(byteLen), static_cast<off_t>(pos));
  while (n < 0 && errno == EINTR);
  if (n < 0) ThrowSysError(env, errno, "pread");
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  int64_t pos = ArgInt(info, 4, "position", 0, kMaxLen);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  ssize_t n;
  do n = pwrite(fd, p, static_cast<size_t>(byteLen), static_cast<off_t>(pos));
  while (n < 0 && errno == EINTR);
  if (n < 0) ThrowSysError(env, errno, "pwrite");
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitVfio(Napi::Env env, Napi::Object exports) {
  exports.Set("vfioOpenContainer", Napi::Function::New(env, OpenContainer, "vfioOpenContainer"));
  exports.Set("vfioOpenGroup", Napi::Function::New(env, OpenGroup, "vfioOpenGroup"));
  exports.Set("vfioGetApiVersion", Napi::Function::New(env, GetApiVersion, "vfioGetApiVersion"));
  exports.Set("vfioCheckExtension", Napi::Function::New(env, CheckExtension, "vfioCheckExtension"));
  exports.Set("vfioGroupGetStatus", Napi::Function::New(env, GroupGetStatus, "vfioGroupGetStatus"));
  exports.Set("vfioGroupSetContainer", Napi::Function::New(env, GroupSetContainer, "vfioGroupSetContainer"));
  exports.Set("vfioGroupUnsetContainer", Napi::Function::New(env, GroupUnsetContainer, "vfioGroupUnsetContainer"));
  exports.Set("vfioSetIommu", Napi::Function::New(env, SetIommu, "vfioSetIommu"));
  exports.Set("vfioGroupGetDeviceFd", Napi::Function::New(env, GroupGetDeviceFd, "vfioGroupGetDeviceFd"));
  exports.Set("vfioDeviceGetInfo", Napi::Function::New(env, DeviceGetInfo, "vfioDeviceGetInfo"));
  exports.Set("vfioDeviceGetRegionInfo", Napi::Function::New(env, DeviceGetRegionInfo, "vfioDeviceGetRegionInfo"));
  exports.Set("vfioDeviceGetIrqInfo", Napi::Function::New(env, DeviceGetIrqInfo, "vfioDeviceGetIrqInfo"));
  exports.Set("vfioDeviceSetIrqs", Napi::Function::New(env, DeviceSetIrqs, "vfioDeviceSetIrqs"));
  exports.Set("vfioDeviceReset", Napi::Function::New(env, DeviceReset, "vfioDeviceReset"));
  exports.Set("vfioMapDma", Napi::Function::New(env, MapDma, "vfioMapDma"));
  exports.Set("vfioUnmapDma", Napi::Function::New(env, UnmapDma, "vfioUnmapDma"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
}

}  // namespace vhost
