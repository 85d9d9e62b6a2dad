# Build of the thin syscall addon (native/src/*.cc). Run from the repo root with
#   npm run build:native   (= node-gyp rebuild --directory=native --nodedir=/usr)
# Headers come from /usr/include/node (no download). C++ exceptions are ENABLED: every failure is a
# `throw Napi::Error` built by sys_error.h, and node-addon-api turns pending JS exceptions into C++ ones.
{
  "targets": [
    {
      "target_name": "vhost_native",
      "sources": [
        "src/addon.cc",
        "src/unix_socket.cc",
        "src/fdio.cc",
        "src/mmap.cc",
        "src/eventfd.cc",
        "src/tap.cc",
        "src/poller.cc",
        "src/uffd.cc",
        "src/vfio.cc",
        "src/guard.cc",
        "src/prefault.cc"
      ],
      # `node -p` evaluates as CommonJS even though the repo is "type": "module"; include_dir is relative
      # to the cwd, which gyp sets to this directory.
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags": ["-Wall", "-Wextra", "-fstack-protector-strong", "-fvisibility=hidden"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-fstack-protector-strong"]
    }
  ]
}
